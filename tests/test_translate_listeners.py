"""LDS: virtual listeners, per-port outbound listeners, NONE vs REDIRECT, conflicts."""

from __future__ import annotations

import dataclasses

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.envoy_static import sample_mesh, sidecar, snapshot, svc
from xdsd.model.proxy import InterceptionMode
from xdsd.model.types import Protocol
from xdsd.translate.context import OutboundPolicy
from xdsd.translate.generate import GENERATORS, LISTENER_TYPE, proxy_context

Listener = listener_pb2.Listener
NONE = InterceptionMode.NONE


def listeners(snap, proxy=None, policy=None) -> dict[str, Listener]:  # type: ignore[no-untyped-def]
    ctx = proxy_context(snap, proxy or sidecar())
    if policy is not None:
        ctx = dataclasses.replace(ctx, outbound_policy=policy)
    return dict(GENERATORS[LISTENER_TYPE](ctx))  # type: ignore[arg-type]


def hcm(chain: listener_components_pb2.FilterChain) -> hcm_pb2.HttpConnectionManager:
    out = hcm_pb2.HttpConnectionManager()
    (f,) = [f for f in chain.filters if f.name == "envoy.filters.network.http_connection_manager"]
    f.typed_config.Unpack(out)
    return out


def tcp(chain: listener_components_pb2.FilterChain) -> tcp_proxy_pb2.TcpProxy:
    out = tcp_proxy_pb2.TcpProxy()
    (f,) = [f for f in chain.filters if f.name == "envoy.filters.network.tcp_proxy"]
    f.typed_config.Unpack(out)
    return out


def test_redirect_listener_names() -> None:
    assert sorted(listeners(sample_mesh())) == [
        "0.0.0.0_443",  # api.example.com HTTPS (no VIP): SNI chain
        "0.0.0.0_80",
        "0.0.0.0_8080",
        "0.0.0.0_8081",
        "0.0.0.0_8443",
        "0.0.0.0_9000",  # *.wild.example.com TCP, resolution NONE, no VIP
        "0.0.0.0_9080",
        "0.0.0.0_9090",
        "10.96.0.10_5000",  # reviews tcp-db: CLUSTERIP_PORT
        "10.96.0.13_3306",
        "10.96.0.14_7000",  # legacy: sniffed (AUTO) port with a VIP
        "virtualInbound",
        "virtualOutbound",
    ]


def test_virtual_outbound() -> None:
    vo = listeners(sample_mesh())["virtualOutbound"]
    assert vo.address.socket_address.address == "0.0.0.0"
    assert vo.address.socket_address.port_value == 15001
    assert vo.use_original_dst.value
    blackhole, catchall = vo.filter_chains
    assert blackhole.filter_chain_match.destination_port.value == 15001
    assert tcp(blackhole).cluster == "BlackHoleCluster"
    assert catchall.name == "virtualOutbound-catchall-tcp"
    assert tcp(catchall).cluster == "PassthroughCluster"
    blocked = listeners(sample_mesh(), policy=OutboundPolicy.REGISTRY_ONLY)["virtualOutbound"]
    assert tcp(blocked.filter_chains[1]).cluster == "BlackHoleCluster"


def test_virtual_inbound() -> None:
    vi = listeners(sample_mesh())["virtualInbound"]
    assert vi.address.socket_address.port_value == 15006
    # Not a mesh workload (no tlsMode label): PERMISSIVE means plaintext chains only, so
    # no chain needs the TLS inspector (istiod derives inspectors from the chains).
    assert [f.name for f in vi.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.http_inspector",
    ]
    # The inspector is off on declared ports (no sniffing there).
    for lf in vi.listener_filters[1:]:
        rules = lf.filter_disabled.or_match.rules
        assert sorted(r.destination_port_range.start for r in rules) == [5001, 9081, 9090, 15006]
    by_name: dict[str, list[listener_components_pb2.FilterChain]] = {}
    for ch in vi.filter_chains:
        by_name.setdefault(ch.name, []).append(ch)
    assert tcp(by_name["virtualInbound-blackhole"][0]).cluster == "BlackHoleCluster"
    assert tcp(by_name["virtualInbound"][0]).cluster == "InboundPassthroughCluster"
    http = by_name["0.0.0.0_9081"][0]
    assert http.filter_chain_match.destination_port.value == 9081
    m = hcm(http)
    assert m.stat_prefix == "inbound_0.0.0.0_9081"
    assert m.route_config.name == "inbound|9081||"
    assert m.route_config.virtual_hosts[0].name == "inbound|http|9081"
    assert m.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|9081||"
    assert hcm(by_name["0.0.0.0_9090"][0]).HasField("http2_protocol_options")  # gRPC
    assert tcp(by_name["0.0.0.0_5001"][0]).cluster == "inbound|5001||"


def test_outbound_http_listener_redirect() -> None:
    ls = listeners(sample_mesh())["0.0.0.0_9080"]
    assert ls.bind_to_port.value is False and ls.HasField("bind_to_port")
    assert [f.name for f in ls.listener_filters] == ["envoy.filters.listener.http_inspector"]
    (chain,) = ls.filter_chains
    assert list(chain.filter_chain_match.application_protocols) == ["http/1.1", "h2c"]
    m = hcm(chain)
    assert m.stat_prefix == "outbound_0.0.0.0_9080"
    assert m.rds.route_config_name == "9080"
    assert m.rds.config_source.HasField("ads")
    assert m.use_remote_address.value is False and m.HasField("use_remote_address")
    assert m.normalize_path.value
    assert [f.name for f in m.http_filters] == [
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    # Non-HTTP traffic to the port passes through.
    assert ls.default_filter_chain.name == "PassthroughFilterChain"
    assert tcp(ls.default_filter_chain).cluster == "PassthroughCluster"


def test_clusterip_tcp_listener() -> None:
    ls = listeners(sample_mesh())["10.96.0.10_5000"]
    assert ls.address.socket_address.address == "10.96.0.10"
    assert ls.bind_to_port.value is False
    (chain,) = ls.filter_chains
    assert tcp(chain).cluster == "outbound|5000||reviews.default.svc.cluster.local"


def test_sniffed_vip_listener_has_http_and_tcp_chains() -> None:
    ls = listeners(sample_mesh())["10.96.0.14_7000"]
    (http,) = ls.filter_chains
    assert hcm(http).rds.route_config_name == "legacy.default.svc.cluster.local:7000"
    assert tcp(ls.default_filter_chain).cluster == "outbound|7000||legacy.default.svc.cluster.local"


def test_sni_listener_for_tls_service_entries() -> None:
    ls = listeners(sample_mesh())["0.0.0.0_443"]
    assert [f.name for f in ls.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    (chain,) = ls.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["api.example.com"]
    assert tcp(chain).cluster == "outbound|443||api.example.com"
    assert tcp(ls.default_filter_chain).cluster == "PassthroughCluster"


def test_none_mode_binds_localhost_and_has_no_virtual_listeners() -> None:
    got = listeners(sample_mesh(), sidecar(mode=NONE))
    assert "virtualOutbound" not in got and "virtualInbound" not in got
    assert all(n.startswith("127.0.0.1_") for n in got)
    http = got["127.0.0.1_9080"]
    assert http.address.socket_address.address == "127.0.0.1"
    assert http.address.socket_address.port_value == 9080
    assert not http.HasField("bind_to_port")  # binds for real
    assert not http.listener_filters
    (chain,) = http.filter_chains
    assert not chain.HasField("filter_chain_match")
    assert hcm(chain).rds.route_config_name == "9080"
    assert tcp(got["127.0.0.1_5000"].filter_chains[0]).cluster == (
        "outbound|5000||reviews.default.svc.cluster.local"
    )
    # Headless TCP too (there is no original destination to pass through to).
    assert "127.0.0.1_6379" in got


def test_none_mode_tcp_conflicts_first_wins_and_http_wins() -> None:
    a = svc(
        "a.default.svc.cluster.local",
        "default",
        [("tcp", 5432, Protocol.TCP)],
        addresses=("10.0.0.1",),
    )
    b = svc(
        "b.default.svc.cluster.local",
        "default",
        [("tcp", 5432, Protocol.TCP)],
        addresses=("10.0.0.2",),
    )
    h = svc(
        "h.default.svc.cluster.local",
        "default",
        [("http", 8000, Protocol.HTTP)],
        addresses=("10.0.0.3",),
    )
    t = svc(
        "t.default.svc.cluster.local",
        "default",
        [("tcp", 8000, Protocol.TCP)],
        addresses=("10.0.0.4",),
    )
    snap = snapshot([b, a, h, t])
    ctx = proxy_context(snap, sidecar(mode=NONE))
    got = dict(GENERATORS[LISTENER_TYPE](ctx))
    assert (
        tcp(got["127.0.0.1_5432"].filter_chains[0]).cluster
        == "outbound|5432||a.default.svc.cluster.local"
    )  # type: ignore[attr-defined]
    assert hcm(got["127.0.0.1_8000"].filter_chains[0]).rds.route_config_name == "8000"  # type: ignore[attr-defined]
    assert any("b.default" in m for m in ctx.conflicts)
    assert any("t.default" in m and "HTTP" in m for m in ctx.conflicts)
    # In REDIRECT mode the VIPs keep them apart: no conflict.
    assert proxy_context(snap, sidecar()).conflicts == ()


def test_none_mode_skips_proxy_ports() -> None:
    s = svc("x.default.svc.cluster.local", "default", [("http", 15001, Protocol.HTTP)])
    ctx = proxy_context(snapshot([s]), sidecar(mode=NONE))
    assert GENERATORS[LISTENER_TYPE](ctx) == []
    assert ctx.conflicts


def test_http_port_beats_tcp_without_vip_in_redirect() -> None:
    h = svc("h.example.com", "default", [("http", 8000, Protocol.HTTP)], kind="ServiceEntry")
    t = svc("t.example.com", "default", [("tcp", 8000, Protocol.TCP)], kind="ServiceEntry")
    ctx = proxy_context(snapshot([h, t]), sidecar())
    got = dict(GENERATORS[LISTENER_TYPE](ctx))
    assert hcm(got["0.0.0.0_8000"].filter_chains[0]).rds.route_config_name == "8000"  # type: ignore[attr-defined]
    assert any("t.example.com" in m for m in ctx.conflicts)
