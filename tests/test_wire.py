"""The hand-assembled wire encoding parses back into the generated Envoy messages."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import duration_pb2
from google.protobuf.internal import decoder, encoder

from xdsd.cache import wire
from xdsd.cache.resources import CLUSTER, ENDPOINT, Resource, ResourceSet


def cluster(name: str, timeout_s: int = 1) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=timeout_s),
    )


def cla(name: str, *ips: str) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=ip, port_value=8080)
                )
            )
        )
        for ip in ips
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
    )


CLUSTERS = [cluster("outbound|80||a.default.svc.cluster.local"), cluster("ü-ñ", 7), cluster("c")]
CLAS = [cla("a", "10.0.0.1", "10.0.0.2"), cla("b"), cla("c", "10.0.0.3")]


@pytest.mark.parametrize(
    ("version", "nonce", "control_plane", "count"),
    [
        ("v1", "n1", "xdsd", 3),
        ("", "", "", 0),  # every scalar field empty: all omitted
        ("abc", "conn-7-12", "istiod-ü", 1),
    ],
    ids=["full", "empty", "unicode-cp"],
)
def test_sotw_response_parses(version: str, nonce: str, control_plane: str, count: int) -> None:
    resources = [Resource.from_message(c.name, CLUSTER, c) for c in CLUSTERS[:count]]
    data = wire.sotw_response(
        version=version,
        type_url=CLUSTER,
        nonce=nonce,
        resource_fields=[r.sotw_field for r in resources],
        control_plane=wire.control_plane(control_plane) if control_plane else b"",
    )
    msg = discovery_pb2.DiscoveryResponse.FromString(data)
    assert msg.version_info == version
    assert msg.type_url == CLUSTER
    assert msg.nonce == nonce
    assert msg.HasField("control_plane") == bool(control_plane)
    assert msg.control_plane.identifier == control_plane
    assert len(msg.resources) == count
    for any_msg, original in zip(msg.resources, CLUSTERS, strict=False):
        assert any_msg.type_url == CLUSTER
        unpacked = cluster_pb2.Cluster()
        assert any_msg.Unpack(unpacked)
        assert unpacked == original
    # Nothing else is set: re-serializing the parsed message gives the same fields.
    assert discovery_pb2.DiscoveryResponse.FromString(msg.SerializeToString()) == msg


@pytest.mark.parametrize(
    ("count", "removed"),
    [(3, []), (0, ["gone", "ü/ñ", ""]), (1, ["x"]), (0, [])],
    ids=["resources", "removed-only", "both", "empty"],
)
def test_delta_response_parses(count: int, removed: list[str]) -> None:
    resources = [Resource.from_message(c.cluster_name, ENDPOINT, c) for c in CLAS[:count]]
    data = wire.delta_response(
        system_version="sys-1",
        type_url=ENDPOINT,
        nonce="n9",
        resource_fields=[r.delta_field for r in resources],
        removed=removed,
        control_plane=wire.control_plane("xdsd"),
    )
    msg = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
    assert msg.system_version_info == "sys-1"
    assert msg.type_url == ENDPOINT
    assert msg.nonce == "n9"
    assert msg.control_plane.identifier == "xdsd"
    assert list(msg.removed_resources) == removed
    assert len(msg.resources) == count
    for got, res, original in zip(msg.resources, resources, CLAS, strict=False):
        assert got.name == original.cluster_name == res.name
        assert got.version == res.version
        unpacked = endpoint_pb2.ClusterLoadAssignment()
        assert got.resource.Unpack(unpacked)
        assert unpacked == original
        assert not got.aliases and not got.HasField("ttl")


def test_resource_fragments_match_protobuf_encoding() -> None:
    c = CLUSTERS[1]
    res = Resource.from_message(c.name, CLUSTER, c)
    # The SotW fragment is exactly what protobuf emits for one resources entry.
    expected = discovery_pb2.DiscoveryResponse()
    expected.resources.add().Pack(c)
    assert res.sotw_field == expected.SerializeToString(deterministic=True)
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(res.delta_field)
    assert delta.resources[0].name == c.name and delta.resources[0].version == res.version
    assert res.payload == c.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 255, 300, 16383, 16384, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1]
)
def test_varint_matches_protobuf(value: int) -> None:
    got = wire.varint(value)
    expected = bytearray()
    encoder._EncodeVarint(expected.extend, value)  # type: ignore[attr-defined]
    assert got == bytes(expected)
    decoded, pos = decoder._DecodeVarint(got, 0)  # type: ignore[attr-defined]
    assert (decoded, pos) == (value, len(got))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**32, b"\x80\x80\x80\x80\x10"),
    ],
)
def test_varint_known_bytes(value: int, encoded: bytes) -> None:
    assert wire.varint(value) == encoded


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 70000], ids=lambda n: f"len{n}")
def test_length_prefix_at_varint_boundaries(size: int) -> None:
    # A cluster name of `size` bytes makes the Any/entry lengths cross 1-, 2- and 3-byte varints.
    c = cluster("x" * size)
    res = Resource.from_message(c.name, CLUSTER, c)
    data = wire.sotw_response(
        version="v",
        type_url=CLUSTER,
        nonce="n",
        resource_fields=[res.sotw_field],
        control_plane=b"",
    )
    msg = discovery_pb2.DiscoveryResponse.FromString(data)
    out = cluster_pb2.Cluster()
    assert msg.resources[0].Unpack(out) and out == c


def test_field_str_omits_empty_and_encodes_utf8() -> None:
    assert wire.field_str(5, "") == b""
    assert wire.field_str(5, "é") == b"\x2a\x02\xc3\xa9"
    assert wire.field_bytes(2, b"") == b"\x12\x00"
    assert wire.control_plane("") == b""


def test_resource_version_depends_only_on_content() -> None:
    a1 = Resource.from_message("a", CLUSTER, cluster("a", 1))
    a1_again = Resource.from_message("a", CLUSTER, cluster("a", 1))
    a2 = Resource.from_message("a", CLUSTER, cluster("a", 2))
    assert a1.version == a1_again.version and a1 == a1_again
    assert a1.version != a2.version
    # Same bytes under another name: same content version, different delta fragment.
    renamed = Resource.from_bytes("other", CLUSTER, a1.payload)
    assert renamed.version == a1.version and renamed.delta_field != a1.delta_field


def test_resource_version_stable_for_maps_in_any_insertion_order() -> None:
    one = cluster_pb2.Cluster(name="m")
    one.metadata.filter_metadata["x"].fields["k1"].string_value = "1"
    one.metadata.filter_metadata["y"].fields["k2"].string_value = "2"
    two = cluster_pb2.Cluster(name="m")
    two.metadata.filter_metadata["y"].fields["k2"].string_value = "2"
    two.metadata.filter_metadata["x"].fields["k1"].string_value = "1"
    assert (
        Resource.from_message("m", CLUSTER, one).version
        == Resource.from_message("m", CLUSTER, two).version
    )


def test_resource_set_version_independent_of_order() -> None:
    resources = [Resource.from_message(c.name, CLUSTER, c) for c in CLUSTERS]
    forward = ResourceSet.of(CLUSTER, resources)
    backward = ResourceSet.of(CLUSTER, reversed(resources))
    assert forward.version == backward.version and len(forward) == 3
    changed = ResourceSet.of(
        CLUSTER, [*resources[:2], Resource.from_message("c", CLUSTER, cluster("c", 9))]
    )
    assert changed.version != forward.version
    fewer = ResourceSet.of(CLUSTER, resources[:2])
    assert fewer.version != forward.version
    assert ResourceSet.of(CLUSTER, []).version == "empty"
    assert ResourceSet(CLUSTER).version == "" and len(ResourceSet(CLUSTER)) == 0
    assert forward.size_bytes == sum(len(r.payload) for r in resources)
    assert forward.get("c") is resources[2] and forward.get("zz") is None
