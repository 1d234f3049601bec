"""Sidecar scoping in the translate stage: which Sidecar applies, egress imports,
egress port listeners, outboundTrafficPolicy, ingress listeners (proto level), plus
`envoy --mode validate` on the results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.envoy_static import (
    envoy_binary,
    envoy_validate,
    sample_mesh,
    sidecar,
    snapshot,
    static_bootstrap,
    svc,
)
from xdsd.model.parse import parse_document
from xdsd.model.proxy import InterceptionMode, Proxy, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject, Protocol, Resolution
from xdsd.translate.context import OutboundPolicy, ProxyContext
from xdsd.translate.generate import (
    CLUSTER_TYPE,
    GENERATORS,
    LISTENER_TYPE,
    ROUTE_TYPE,
    generate_all,
    group_key,
    proxy_context,
)
from xdsd.translate.sidecar_scope import (
    host_matches,
    subset_of,
    visible_in_scope,
)

H = Protocol.HTTP
NONE = InterceptionMode.NONE


def cfg(kind: str, ns: str, name: str, spec: dict[str, Any]) -> ConfigObject:
    result = parse_document(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        },
        f"{name}.yaml#0",
    )
    assert [e for e in result.errors if e.severity == "error"] == []
    (obj,) = result.objects
    assert isinstance(obj, ConfigObject)
    return obj


def with_configs(snap: MeshSnapshot, *configs: ConfigObject) -> MeshSnapshot:
    by_kind: dict[str, list[ConfigObject]] = {}
    for c in configs:
        by_kind.setdefault(c.kind, []).append(c)
    return dataclasses.replace(
        snap,
        configs=MappingProxyType(
            {k: tuple(sorted(v, key=lambda c: (c.namespace, c.name))) for k, v in by_kind.items()}
        ),
    )


def proxy(
    ns: str = "shop",
    labels: dict[str, str] | None = None,
    mode: InterceptionMode = InterceptionMode.REDIRECT,
    ip: str = "10.1.0.5",
) -> Proxy:
    return dataclasses.replace(
        sidecar(ip=ip, ns=ns, mode=mode), labels=MappingProxyType(dict(labels or {}))
    )


def mesh() -> MeshSnapshot:
    return snapshot(
        [
            svc(
                "web.shop.svc.cluster.local", "shop", [("http", 8080, H)], addresses=("10.96.1.1",)
            ),
            svc(
                "cart.shop.svc.cluster.local", "shop", [("http", 9080, H)], addresses=("10.96.1.2",)
            ),
            svc(
                "pay.billing.svc.cluster.local",
                "billing",
                [("http", 8080, H), ("grpc", 9090, Protocol.GRPC)],
                addresses=("10.96.2.1",),
            ),
            svc(
                "db.billing.svc.cluster.local",
                "billing",
                [("tcp", 5432, Protocol.TCP)],
                addresses=("10.96.2.2",),
            ),
            svc(
                "api.example.com",
                "istio-system",
                [("http", 80, H)],
                kind="ServiceEntry",
                resolution=Resolution.DNS,
            ),
        ]
    )


def ctx_of(snap: MeshSnapshot, p: Proxy) -> ProxyContext:
    return proxy_context(snap, p)


def out(ctx: ProxyContext, type_url: str) -> dict[str, Any]:
    return dict(GENERATORS[type_url](ctx))


def cluster_names(ctx: ProxyContext) -> set[str]:
    return {n for n in out(ctx, CLUSTER_TYPE) if n.startswith("outbound|")}


def vhost_domains(ctx: ProxyContext) -> set[str]:
    found: set[str] = set()
    for rc in out(ctx, ROUTE_TYPE).values():
        assert isinstance(rc, route_pb2.RouteConfiguration)
        for vh in rc.virtual_hosts:
            found.update(vh.domains)
    return found


# ------------------------------------------------------------------ host matching


def test_istio_host_matching() -> None:
    assert subset_of("a.example.com", "*.example.com")
    assert subset_of("a.example.com", "*")
    assert not subset_of("*.example.com", "a.example.com")
    assert subset_of("*.a.example.com", "*.example.com")
    assert not subset_of("*.example.com", "*.a.example.com")
    assert host_matches("*.example.com", "a.example.com")  # bidirectional
    assert host_matches("*.a.example.com", "*.example.com")
    assert not host_matches("a.example.com", "b.example.com")


# ------------------------------------------------------------------ selection


def test_default_scope_imports_everything_visible() -> None:
    ctx = ctx_of(mesh(), proxy())
    assert ctx.sidecar is not None and ctx.sidecar.config is None
    assert "outbound|8080||pay.billing.svc.cluster.local" in cluster_names(ctx)
    assert ctx.outbound_policy is OutboundPolicy.ALLOW_ANY  # mesh default


def test_namespace_sidecar_restricts_clusters_listeners_and_routes() -> None:
    snap = with_configs(mesh(), cfg("Sidecar", "shop", "default", {"egress": [{"hosts": ["./*"]}]}))
    ctx = ctx_of(snap, proxy())
    assert cluster_names(ctx) == {
        "outbound|8080||web.shop.svc.cluster.local",
        "outbound|9080||cart.shop.svc.cluster.local",
    }
    assert "pay.billing.svc.cluster.local" not in vhost_domains(ctx)
    assert "10.96.2.2_5432" not in out(ctx, LISTENER_TYPE)  # db's TCP listener is gone
    assert "web.shop.svc.cluster.local" in vhost_domains(ctx)
    # Another namespace without a Sidecar still sees everything.
    other = ctx_of(snap, proxy(ns="billing"))
    assert "outbound|8080||web.shop.svc.cluster.local" in cluster_names(other)


def test_selector_sidecar_wins_over_namespace_and_root_ones() -> None:
    snap = with_configs(
        mesh(),
        cfg("Sidecar", "istio-system", "default", {"egress": [{"hosts": ["istio-system/*"]}]}),
        cfg("Sidecar", "shop", "ns-wide", {"egress": [{"hosts": ["./*"]}]}),
        cfg(
            "Sidecar",
            "shop",
            "for-web",
            {
                "workloadSelector": {"labels": {"app": "web"}},
                "egress": [{"hosts": ["billing/*"]}],
            },
        ),
    )
    web = ctx_of(snap, proxy(labels={"app": "web", "version": "v1"}))
    assert web.sidecar is not None and web.sidecar.name == "for-web"
    assert cluster_names(web) == {
        "outbound|8080||pay.billing.svc.cluster.local",
        "outbound|9090||pay.billing.svc.cluster.local",
        "outbound|5432||db.billing.svc.cluster.local",
    }
    cart = ctx_of(snap, proxy(labels={"app": "cart"}))
    assert cart.sidecar is not None and cart.sidecar.name == "ns-wide"
    # Elsewhere the root namespace's Sidecar is the mesh-wide default.
    billing = ctx_of(snap, proxy(ns="billing"))
    assert billing.sidecar is not None and billing.sidecar.key == ("istio-system", "default", 0)
    assert cluster_names(billing) == {"outbound|80||api.example.com"}
    # Proxies under different Sidecars never share a group key; the same Sidecar does.
    assert len({group_key(web), group_key(cart)}) == 2
    assert group_key(cart) == group_key(ctx_of(snap, proxy(labels={"app": "cart", "v": "2"})))


def test_two_matching_selector_sidecars_are_a_reported_conflict() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "a",
            {"workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["./*"]}]},
        ),
        cfg(
            "Sidecar",
            "shop",
            "b",
            {"workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["*/*"]}]},
        ),
    )
    ctx = ctx_of(snap, proxy(labels={"app": "web"}))
    assert ctx.sidecar is not None and ctx.sidecar.name == "a"
    assert any("Sidecar shop/b" in m and "ignored" in m for m in ctx.conflicts)


def test_exclusion_and_specific_hosts() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {"egress": [{"hosts": ["*/*", "~billing/db.billing.svc.cluster.local"]}]},
        ),
    )
    names = cluster_names(ctx_of(snap, proxy()))
    assert "outbound|5432||db.billing.svc.cluster.local" not in names
    assert "outbound|8080||pay.billing.svc.cluster.local" in names
    snap = with_configs(
        mesh(),
        cfg("Sidecar", "shop", "default", {"egress": [{"hosts": ["*/api.example.com"]}]}),
    )
    assert cluster_names(ctx_of(snap, proxy())) == {"outbound|80||api.example.com"}


def test_virtual_service_destinations_are_imported() -> None:
    snap = with_configs(
        mesh(),
        cfg("Sidecar", "shop", "default", {"egress": [{"hosts": ["./*"]}]}),
        cfg(
            "VirtualService",
            "shop",
            "web",
            {
                "hosts": ["web"],
                "http": [
                    {
                        "route": [
                            {
                                "destination": {
                                    "host": "pay.billing.svc.cluster.local",
                                    "port": {"number": 8080},
                                }
                            }
                        ]
                    }
                ],
            },
        ),
    )
    names = cluster_names(ctx_of(snap, proxy()))
    assert "outbound|8080||pay.billing.svc.cluster.local" in names
    assert "outbound|9090||pay.billing.svc.cluster.local" not in names  # only the VS's port


def test_visible_in_scope_for_config_authors() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {"egress": [{"hosts": ["./*", "istio-system/*.example.com"]}]},
        ),
    )
    ctx = ctx_of(snap, proxy())
    assert visible_in_scope(ctx, "web.shop.svc.cluster.local", "shop")
    assert not visible_in_scope(ctx, "pay.billing.svc.cluster.local", "billing")
    assert visible_in_scope(ctx, "api.example.com", "istio-system")
    assert visible_in_scope(ctx, "*.example.com", "istio-system")
    assert not visible_in_scope(ctx, "api.example.com", "billing")  # hosts are per namespace
    assert visible_in_scope(ctx_of(mesh(), proxy()), "anything.example.org", "x")


# ------------------------------------------------------------------ outbound policy


def test_outbound_traffic_policy_per_applied_sidecar() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "istio-system",
            "default",
            {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}},
        ),
        cfg(
            "Sidecar",
            "shop",
            "for-web",
            {"workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["*/*"]}]},
        ),
    )
    other = ctx_of(snap, proxy(ns="billing"))
    assert other.outbound_policy is OutboundPolicy.REGISTRY_ONLY
    routes = out(other, ROUTE_TYPE)
    assert routes["8080"].virtual_hosts[-1].name == "block_all"
    vo = out(other, LISTENER_TYPE)["virtualOutbound"]
    assert "BlackHoleCluster" in str(vo.filter_chains[-1])
    # The workload Sidecar sets no policy: the mesh default ALLOW_ANY, not the root one.
    web = ctx_of(snap, proxy(labels={"app": "web"}))
    assert web.outbound_policy is OutboundPolicy.ALLOW_ANY
    assert out(web, ROUTE_TYPE)["8080"].virtual_hosts[-1].name == "allow_any"


# ------------------------------------------------------------------ egress port listeners


def _hcm_route(ls: listener_pb2.Listener) -> str:
    for chain in [*ls.filter_chains, ls.default_filter_chain]:
        for f in chain.filters:
            if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                return str(h.rds.route_config_name)
    return ""


def test_egress_port_listener_with_bind_and_capture_none() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {
                "egress": [
                    {
                        "port": {"number": 8080, "protocol": "HTTP", "name": "web"},
                        "bind": "127.0.0.1",
                        "captureMode": "NONE",
                        "hosts": ["billing/*"],
                    },
                    {"hosts": ["./*"]},
                ]
            },
        ),
    )
    ctx = ctx_of(snap, proxy())
    listeners = out(ctx, LISTENER_TYPE)
    bound = listeners["127.0.0.1_8080"]
    assert bound.address.socket_address.address == "127.0.0.1"
    assert not bound.HasField("bind_to_port")  # bound for real
    assert _hcm_route(bound) == "8080"
    # Route 8080 comes from the port listener: billing's pay only, not shop's web.
    domains = {d for vh in out(ctx, ROUTE_TYPE)["8080"].virtual_hosts for d in vh.domains}
    assert "pay.billing.svc.cluster.local" in domains
    assert "web.shop.svc.cluster.local" not in domains
    # Port trimming: pay's 9090 is not imported (the listener is for 8080 only).
    assert "outbound|9090||pay.billing.svc.cluster.local" not in cluster_names(ctx)
    assert "outbound|9080||cart.shop.svc.cluster.local" in cluster_names(ctx)
    assert "0.0.0.0_9080" in listeners  # the catch-all still builds the other ports


def test_egress_port_listener_protocol_overrides_service_port() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {"egress": [{"port": {"number": 8080, "protocol": "TCP"}, "hosts": ["billing/*"]}]},
        ),
    )
    ctx = ctx_of(snap, proxy())
    listeners = out(ctx, LISTENER_TYPE)
    ls = listeners["10.96.2.1_8080"]  # TCP: bound to the service VIP
    assert _hcm_route(ls) == ""
    assert "outbound|8080||pay.billing.svc.cluster.local" in str(ls)
    assert not any(n.startswith("0.0.0.0_") for n in listeners)  # no catch-all listener


def test_none_mode_egress_bind_override() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {"egress": [{"port": {"number": 9080}, "bind": "127.0.0.9", "hosts": ["./*"]}]},
        ),
    )
    ctx = ctx_of(snap, proxy(mode=NONE, ip="127.0.0.1"))
    assert sorted(out(ctx, LISTENER_TYPE)) == ["127.0.0.9_9080"]


# ------------------------------------------------------------------ ingress listeners


def test_ingress_none_mode_binds_and_forwards_to_default_endpoint() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {
                "ingress": [
                    {
                        "port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                        "bind": "127.0.0.7",
                        "defaultEndpoint": "127.0.0.1:8080",
                    },
                    {
                        "port": {"number": 9443, "protocol": "TCP"},
                        "defaultEndpoint": "0.0.0.0:8443",
                    },
                ],
                "egress": [{"hosts": ["./*"]}],
            },
        ),
    )
    ctx = ctx_of(snap, proxy(mode=NONE, ip="10.1.0.5"))
    listeners = out(ctx, LISTENER_TYPE)
    ls = listeners["127.0.0.7_9080"]
    assert ls.traffic_direction == 1  # INBOUND
    assert ls.address.socket_address.port_value == 9080
    assert "inbound|9080||" in str(ls)
    assert "10.1.0.5_9443" in listeners  # no bind: the instance's global unicast IP
    clusters = out(ctx, CLUSTER_TYPE)
    c9080 = clusters["inbound|9080||"]
    assert c9080.type == cluster_pb2.Cluster.STATIC
    (lb,) = c9080.load_assignment.endpoints[0].lb_endpoints
    assert (
        lb.endpoint.address.socket_address.address,
        lb.endpoint.address.socket_address.port_value,
    ) == (
        "127.0.0.1",
        8080,
    )
    assert not c9080.HasField("upstream_bind_config")  # loopback: no 127.0.0.6 bind
    c9443 = clusters["inbound|9443||"]
    assert (
        c9443.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
        == "10.1.0.5"
    )
    assert c9443.upstream_bind_config.source_address.address == "127.0.0.6"


def test_ingress_redirect_mode_becomes_virtual_inbound_chains() -> None:
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {
                "ingress": [
                    {
                        "port": {"number": 9080, "protocol": "HTTP"},
                        "defaultEndpoint": "127.0.0.1:8080",
                    }
                ]
            },
        ),
    )
    ctx = ctx_of(snap, proxy())
    listeners = out(ctx, LISTENER_TYPE)
    vi = listeners["virtualInbound"]
    assert any(ch.filter_chain_match.destination_port.value == 9080 for ch in vi.filter_chains)
    assert "10.1.0.5_9080" not in listeners
    assert out(ctx, CLUSTER_TYPE)["inbound|9080||"].type == cluster_pb2.Cluster.STATIC
    # captureMode NONE on a REDIRECT proxy: a listener of its own instead.
    snap = with_configs(
        mesh(),
        cfg(
            "Sidecar",
            "shop",
            "default",
            {"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "captureMode": "NONE"}]},
        ),
    )
    ctx = ctx_of(snap, proxy())
    assert "10.1.0.5_9080" in out(ctx, LISTENER_TYPE)
    assert out(ctx, CLUSTER_TYPE)["inbound|9080||"].type == cluster_pb2.Cluster.ORIGINAL_DST


# ------------------------------------------------------------------ Envoy accepts it


def _full_sidecar(ns: str) -> ConfigObject:
    return cfg(
        "Sidecar",
        ns,
        "default",
        {
            "ingress": [
                {
                    "port": {"number": 9080, "protocol": "HTTP"},
                    "bind": "127.0.0.7",
                    "defaultEndpoint": "127.0.0.1:8080",
                },
                {
                    "port": {"number": 9081},
                    "defaultEndpoint": "0.0.0.0:8081",
                    "captureMode": "NONE",
                },
                {"port": {"number": 9443, "protocol": "TCP"}},
            ],
            "egress": [
                {
                    "port": {"number": 9080, "protocol": "HTTP"},
                    "bind": "127.0.0.1",
                    "captureMode": "NONE",
                    "hosts": ["*/*"],
                },
                {"port": {"number": 5000, "protocol": "TCP"}, "hosts": ["./*"]},
                {"hosts": ["./*", "istio-system/*", "~*/legacy.default.svc.cluster.local"]},
            ],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        },
    )


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary")
@pytest.mark.parametrize(
    ("mode", "ip"),
    [
        (InterceptionMode.REDIRECT, "10.1.0.5"),
        (InterceptionMode.NONE, "10.1.0.5"),
        (InterceptionMode.REDIRECT, "fd00::5"),
    ],
)
def test_envoy_accepts_sidecar_scoped_config(
    mode: InterceptionMode, ip: str, tmp_path: Path
) -> None:
    snap = with_configs(sample_mesh(), _full_sidecar("default"))
    p = sidecar(ip=ip, mode=mode)
    ctx = proxy_context(snap, p)
    assert ctx.sidecar is not None and ctx.sidecar.name == "default"
    assert ctx.outbound_policy is OutboundPolicy.REGISTRY_ONLY
    resources = generate_all(snap, p)
    result = envoy_validate(static_bootstrap(resources, p.node_id), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateways_ignore_sidecars() -> None:
    snap = with_configs(mesh(), cfg("Sidecar", "shop", "default", {"egress": [{"hosts": ["./*"]}]}))
    gw = dataclasses.replace(proxy(), type=ProxyType.ROUTER)
    ctx = ctx_of(snap, gw)
    assert ctx.sidecar is None
    assert any(s.hostname == "pay.billing.svc.cluster.local" for s in ctx.services)
