"""Serialized resources, versioned by a hash of their bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from xdsd.cache import wire

_TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# The order a push sends types in on one stream (Envoy's make-before-break:
# clusters and their endpoints before the listeners and routes that use them).
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# Types whose SotW responses must carry every resource (the others are sent by name).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds"}


def short_type(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource, serialized once, with the wire fragments both protocols need."""

    name: str
    type_url: str
    payload: bytes  # the serialized resource message
    version: str  # hash of payload
    sotw_field: bytes  # DiscoveryResponse.resources entry (an Any), tag included
    delta_field: bytes  # DeltaDiscoveryResponse.resources entry (a Resource), tag included

    @classmethod
    def from_bytes(cls, name: str, type_url: str, payload: bytes) -> Resource:
        version = content_hash(payload)
        any_bytes = wire.any_message(type_url, payload)
        delta_body = (
            wire.field_str(wire.RESOURCE_VERSION, version)
            + wire.field_bytes(wire.RESOURCE_BODY, any_bytes)
            + wire.field_str(wire.RESOURCE_NAME, name)
        )
        return cls(
            name=name,
            type_url=type_url,
            payload=payload,
            version=version,
            sotw_field=wire.field_bytes(wire.SOTW_RESOURCES, any_bytes),
            delta_field=wire.field_bytes(wire.DELTA_RESOURCES, delta_body),
        )

    @classmethod
    def from_message(cls, name: str, type_url: str, message: Message) -> Resource:
        # Deterministic so equal content always hashes to the same version.
        return cls.from_bytes(name, type_url, message.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class ResourceSet:
    """All resources of one type for one proxy group, by name."""

    type_url: str
    items: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))
    version: str = ""  # hash over (name, version) pairs; "" for the empty set

    @classmethod
    def of(cls, type_url: str, resources: Iterable[Resource]) -> ResourceSet:
        items = {r.name: r for r in resources}
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(items):
            h.update(name.encode())
            h.update(b"\0")
            h.update(items[name].version.encode())
            h.update(b"\n")
        return cls(type_url, MappingProxyType(items), h.hexdigest() if items else "empty")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.items.values())

    def get(self, name: str) -> Resource | None:
        return self.items.get(name)

    @property
    def size_bytes(self) -> int:
        return sum(len(r.payload) for r in self.items.values())
