"""Hand-assembled protobuf wire encoding for xDS responses.

Each resource is serialized once when it is generated; responses are then
built by concatenating those bytes with a few small fields, so a push to many
proxies never re-serializes a resource (go-control-plane's "serialize once").
Field numbers are those of envoy.service.discovery.v3; a test checks the
output parses back into the generated message classes.
"""

from __future__ import annotations

_LEN = 2  # wire type: length-delimited


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def field_head(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field whose body is `length` bytes."""
    return varint(number << 3 | _LEN) + varint(length)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or embedded message)."""
    return varint(number << 3 | _LEN) + varint(len(payload)) + payload


def field_str(number: int, text: str) -> bytes:
    return field_bytes(number, text.encode()) if text else b""


# google.protobuf.Any
ANY_TYPE_URL = 1
ANY_VALUE = 2

# DiscoveryResponse (state of the world)
SOTW_VERSION = 1
SOTW_RESOURCES = 2
SOTW_TYPE_URL = 4
SOTW_NONCE = 5
SOTW_CONTROL_PLANE = 6

# DeltaDiscoveryResponse
DELTA_SYSTEM_VERSION = 1
DELTA_RESOURCES = 2
DELTA_TYPE_URL = 4
DELTA_NONCE = 5
DELTA_REMOVED = 6
DELTA_CONTROL_PLANE = 7

# envoy.service.discovery.v3.Resource
RESOURCE_VERSION = 1
RESOURCE_BODY = 2
RESOURCE_NAME = 3

# envoy.config.core.v3.ControlPlane
CONTROL_PLANE_IDENTIFIER = 1


def any_message(type_url: str, value: bytes) -> bytes:
    return field_str(ANY_TYPE_URL, type_url) + field_bytes(ANY_VALUE, value)


def sotw_response(
    *, version: str, type_url: str, nonce: str, resource_fields: list[bytes], control_plane: bytes
) -> bytes:
    """A DiscoveryResponse; `resource_fields` are byte chunks of the field-2 entries."""
    return b"".join(
        (
            field_str(SOTW_VERSION, version),
            *resource_fields,
            field_str(SOTW_TYPE_URL, type_url),
            field_str(SOTW_NONCE, nonce),
            control_plane and field_bytes(SOTW_CONTROL_PLANE, control_plane),
        )
    )


def delta_response(
    *,
    system_version: str,
    type_url: str,
    nonce: str,
    resource_fields: list[bytes],
    removed: list[str],
    control_plane: bytes,
) -> bytes:
    """A DeltaDiscoveryResponse; `resource_fields` are byte chunks of the field-2 entries."""
    return b"".join(
        (
            field_str(DELTA_SYSTEM_VERSION, system_version),
            *resource_fields,
            field_str(DELTA_TYPE_URL, type_url),
            field_str(DELTA_NONCE, nonce),
            *(field_bytes(DELTA_REMOVED, name.encode()) for name in removed),
            control_plane and field_bytes(DELTA_CONTROL_PLANE, control_plane),
        )
    )


def control_plane(identifier: str) -> bytes:
    """An encoded envoy.config.core.v3.ControlPlane (without the outer tag)."""
    return field_str(CONTROL_PLANE_IDENTIFIER, identifier)
