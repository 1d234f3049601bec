"""SotW ACKs naming the same resources are recognised from their bytes (no 1,000 strings
per ACK); anything the shortcut cannot vouch for falls back to reading the names."""

from __future__ import annotations

import gc
import weakref

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from xdsd.cache.resources import ENDPOINT
from xdsd.server.ads import (
    Connection,
    RequestedNames,
    XdsServices,
    _names_key,
    _sotw_request,
)
from xdsd.server.protocol import SotwRequest

NAMES = [f"outbound|8080||svc-{i}.ns.svc.cluster.local" for i in range(300)]


def request(names: list[str], nonce: str, version: str = "v1", **kw: object) -> bytes:
    msg = discovery_pb2.DiscoveryRequest(
        version_info=version,
        resource_names=names,
        type_url=ENDPOINT,
        response_nonce=nonce,
        **kw,  # type: ignore[arg-type]
    )
    return msg.SerializeToString()


def key(data: bytes) -> bytes | None:
    return _names_key(data, discovery_pb2.DiscoveryRequest.FromString(data))


def test_same_names_same_key_whatever_the_nonce_version_node_or_error() -> None:
    k = key(request(NAMES, "n1"))
    assert k is not None and NAMES[0].encode() in k and NAMES[-1].encode() in k
    assert key(request(NAMES, "n2", version="v9")) == k
    assert key(request(NAMES, "n3", node=base_pb2.Node(id="sidecar~1.2.3.4~a.b~b.svc"))) == k
    nack = status_pb2.Status(code=3, message="bad")
    assert key(request(NAMES, "n4", error_detail=nack)) == k
    assert key(request(NAMES[:-1], "n1")) != k
    assert key(request([*NAMES[:-1], NAMES[-1] + "x"], "n1")) != k


def test_unusual_encodings_are_not_trusted() -> None:
    data = request(NAMES, "n1")
    msg = discovery_pb2.DiscoveryRequest.FromString(data)
    # Fields out of number order (type and nonce before the names): no key.
    head = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, response_nonce="n1")
    names = discovery_pb2.DiscoveryRequest(resource_names=NAMES).SerializeToString()
    assert key(head.SerializeToString() + names) is None
    # resource_locators (field 7) after the tail.
    msg.resource_locators.add(name="x")
    assert key(msg.SerializeToString()) is None


def parsed(conn: Connection, data: bytes, shared: dict[bytes, RequestedNames]) -> SotwRequest:
    msg = discovery_pb2.DiscoveryRequest.FromString(data)
    return _sotw_request(ENDPOINT, msg, data, conn, shared)


def test_acks_with_the_same_names_share_one_name_set_across_streams() -> None:
    shared: dict[bytes, RequestedNames] = {}
    conn = Connection("c1", "peer", delta=False)
    first = parsed(conn, request(NAMES, "n1"), shared)
    again = parsed(conn, request(NAMES, "n2", version="v2"), shared)
    assert again.name_set is first.name_set and again.names is first.names
    assert again.nonce == "n2" and again.version_info == "v2"
    other = parsed(conn, request(NAMES[:5], "n3"), shared)
    assert other.name_set == frozenset(NAMES[:5]) and other.names == tuple(NAMES[:5])
    # Another stream requesting the same names gets the same objects.
    peer = parsed(Connection("c2", "peer", delta=False), request(NAMES, "x7"), shared)
    assert peer.names is first.names and peer.name_set is first.name_set


def test_requested_names_are_released_with_their_streams() -> None:
    services = XdsServices.__new__(XdsServices)
    services.requested_names = weakref.WeakValueDictionary()
    conn = Connection("c1", "peer", delta=False)
    parsed(conn, request(NAMES, "n1"), services.requested_names)  # type: ignore[arg-type]
    assert len(services.requested_names) == 1
    del conn
    gc.collect()
    assert len(services.requested_names) == 0
