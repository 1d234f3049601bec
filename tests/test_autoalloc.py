"""IP auto-allocation for ServiceEntry hosts without addresses (istiod's ipallocate).

Two TCP ServiceEntries on one port without addresses: without allocation both
fall into the one `0.0.0.0_PORT` listener and only the first is reachable. With
it, a proxy that captures DNS gets one listener per host on its allocated
address (240.240.0.0/16), and its agent resolves each host to that address.
"""

from __future__ import annotations

import ipaddress
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap
from tests.meshgen import istio_config
from xdsd.model.autoalloc import SLOTS, allocate, slot_addresses
from xdsd.model.build import build_snapshot
from xdsd.model.objects import ServiceEntryConfig
from xdsd.model.parse import parse_documents
from xdsd.model.proxy import parse_proxy
from xdsd.model.store import ConfigStore
from xdsd.model.types import AddressView
from xdsd.translate._common import LISTENER_TYPE
from xdsd.translate.generate import generate_all

NODE = "sidecar~10.1.0.5~client-0.shop~shop.svc.cluster.local"
CAPTURE = {"NAMESPACE": "shop", "DNS_CAPTURE": "true"}
PLAIN = {"NAMESPACE": "shop"}


def entry(name: str, host: str, **spec: Any) -> dict[str, Any]:
    doc = istio_config(
        "ServiceEntry",
        name,
        "shop",
        {
            "hosts": [host],
            "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "endpoints": [{"address": "10.2.0.7"}],
            **spec,
        },
    )
    return doc


def entries(*docs: dict[str, Any]) -> list[ServiceEntryConfig]:
    parsed = parse_documents(list(docs), "se.yaml")
    assert not parsed.errors, parsed.errors
    return [o for o in parsed.objects if isinstance(o, ServiceEntryConfig)]


def slot(namespace: str, host: str) -> int:
    return zlib.crc32(f"{namespace}/{host}".encode()) % SLOTS


def test_slot_addresses_stay_in_the_reserved_ranges() -> None:
    for n in (0, 1, 253, 254, SLOTS - 1):
        v4, v6 = slot_addresses(n)
        assert ipaddress.ip_address(v4) in ipaddress.ip_network("240.240.0.0/16")
        assert ipaddress.ip_address(v6) in ipaddress.ip_network("2001:2::/48")
        assert not v4.endswith((".0", ".255"))
    assert slot_addresses(0) == ("240.240.0.1", "2001:2::f0f0:0:1")
    assert slot_addresses(254) == ("240.240.1.1", "2001:2::f0f0:1:1")
    assert len({slot_addresses(n)[0] for n in range(SLOTS)}) == SLOTS


def colliding_host(host: str) -> str:
    """Another host of namespace shop whose hash picks the same slot as `host`."""
    want = slot("shop", host)
    for i in range(20 * SLOTS):  # bounded: ~SLOTS tries are expected
        other = f"h{i}.example.com"
        if slot("shop", other) == want and other != host:
            return other
    raise AssertionError("no colliding host found")


def stamped(name: str, host: str, created: str) -> dict[str, Any]:
    doc = entry(name, host)
    doc["metadata"]["creationTimestamp"] = created
    return doc


def test_allocation_is_deterministic_and_keeps_older_entries() -> None:
    a_slot = slot("shop", "a.example.com")
    old = stamped("a", "a.example.com", "2026-01-01T00:00:00Z")
    assert allocate(entries(old)) == {("shop", "a.example.com"): slot_addresses(a_slot)}
    # A younger entry whose slot is taken probes forward; the older keeps its address,
    # whichever order the entries arrive in.
    other = colliding_host("a.example.com")
    young = stamped("b", other, "2026-02-01T00:00:00Z")
    for order in ((old, young), (young, old)):
        got = allocate(entries(*order))
        assert got[("shop", "a.example.com")] == slot_addresses(a_slot)
        assert got[("shop", other)] == slot_addresses((a_slot + 1) % SLOTS)
    # Had the other been there first, it would have the slot.
    first = stamped("b", other, "2025-12-01T00:00:00Z")
    assert allocate(entries(old, first))[("shop", other)] == slot_addresses(a_slot)
    # Addresses in use elsewhere (a ClusterIP in the range) are never handed out.
    again = allocate(entries(old), taken=(slot_addresses(a_slot)[0],))
    assert again[("shop", "a.example.com")] == slot_addresses((a_slot + 1) % SLOTS)


def test_status_addresses_written_by_istiod_are_kept() -> None:
    doc = entry("a", "a.example.com")
    doc["status"] = {
        "addresses": [
            {"host": "a.example.com", "value": "240.240.7.7"},
            {"host": "a.example.com", "value": "2001:2::7"},
        ]
    }
    assert allocate(entries(doc)) == {("shop", "a.example.com"): ("240.240.7.7", "2001:2::7")}


@pytest.mark.parametrize(
    "spec, labels",
    [
        ({"addresses": ["192.0.2.1"]}, {}),  # the user gave one
        ({"resolution": "NONE", "endpoints": []}, {}),  # the original destination is needed
        ({}, {"networking.istio.io/enable-autoallocate-ip": "false"}),  # opted out
        ({"hosts": ["*.example.com"]}, {}),  # no name to answer with it
    ],
    ids=["addresses", "resolution-none", "opt-out", "wildcard"],
)
def test_hosts_that_get_no_address(spec: dict[str, Any], labels: dict[str, str]) -> None:
    doc = entry("a", "a.example.com", **spec)
    doc["metadata"]["labels"] = labels
    assert allocate(entries(doc)) == {}


def listeners(docs: list[dict[str, Any]], meta: dict[str, str]) -> dict[str, Any]:
    store = ConfigStore()
    store.apply_file("se.yaml", parse_documents(docs, "se.yaml"))
    snap = build_snapshot(store, generation=1)
    return dict(generate_all(snap, parse_proxy(NODE, meta))[LISTENER_TYPE])


def tcp_cluster(listener: Any) -> str:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    (chain,) = listener.filter_chains
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(proxy)
    return str(proxy.cluster)


def test_a_dns_capturing_proxy_gets_a_listener_per_host(tmp_path: Path) -> None:
    docs = [entry("a", "a.example.com"), entry("b", "b.example.com")]
    store = ConfigStore()
    store.apply_file("se.yaml", parse_documents(docs, "se.yaml"))
    snap = build_snapshot(store, generation=1)
    by_host = {s.hostname: s for s in snap.services}
    a4 = by_host["a.example.com"].addresses_for(AddressView(auto_allocated=True, ip_family="v4"))
    b4 = by_host["b.example.com"].addresses_for(AddressView(auto_allocated=True, ip_family="v4"))
    assert a4 and b4 and a4 != b4

    got = listeners(docs, CAPTURE)
    assert tcp_cluster(got[f"{a4[0]}_9000"]) == "outbound|9000||a.example.com"
    assert tcp_cluster(got[f"{b4[0]}_9000"]) == "outbound|9000||b.example.com"
    assert "0.0.0.0_9000" not in got

    # A proxy without DNS capture cannot resolve to those addresses: the one shared
    # wildcard listener, as before (the second entry is reported as left out).
    plain = listeners(docs, PLAIN)
    assert [n for n in plain if n.endswith("_9000")] == ["0.0.0.0_9000"]

    if envoy_binary() is not None:
        store = ConfigStore()
        store.apply_file("se.yaml", parse_documents(docs, "se.yaml"))
        resources = generate_all(build_snapshot(store, generation=1), parse_proxy(NODE, CAPTURE))
        result = envoy_validate(static_bootstrap(resources, NODE), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
