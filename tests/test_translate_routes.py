"""RDS: route names, virtual hosts, domains, default route, catch-all host."""

from __future__ import annotations

import dataclasses

from envoy.config.route.v3 import route_pb2

from tests.envoy_static import sample_mesh, sidecar, snapshot, svc
from xdsd.model.proxy import InterceptionMode
from xdsd.model.types import Protocol
from xdsd.translate.context import OutboundPolicy
from xdsd.translate.generate import GENERATORS, ROUTE_TYPE, proxy_context


def routes(snap, proxy=None, policy=None) -> dict[str, route_pb2.RouteConfiguration]:  # type: ignore[no-untyped-def]
    ctx = proxy_context(snap, proxy or sidecar())
    if policy is not None:
        ctx = dataclasses.replace(ctx, outbound_policy=policy)
    return dict(GENERATORS[ROUTE_TYPE](ctx))  # type: ignore[arg-type]


def vhosts(rc: route_pb2.RouteConfiguration) -> dict[str, list[str]]:
    return {v.name: list(v.domains) for v in rc.virtual_hosts}


def test_route_per_http_port_named_by_port() -> None:
    got = routes(sample_mesh())
    assert sorted(got) == [
        "80",
        "8080",
        "8081",
        "9080",
        "9090",
        "legacy.default.svc.cluster.local:7000",
    ]
    rc = got["9080"]
    assert not rc.validate_clusters.value and rc.HasField("validate_clusters")
    assert rc.max_direct_response_body_size_bytes.value == 1048576
    assert rc.ignore_port_in_host_matching
    assert list(vhosts(rc)) == [
        "ratings.other.svc.cluster.local:9080",
        "reviews.default.svc.cluster.local:9080",
        "allow_any",
    ]


def test_domains_as_istiod() -> None:
    vh = vhosts(routes(sample_mesh())["9080"])
    # Same namespace: FQDN, absolute FQDN, short name, NAME.NS.svc, NAME.NS, cluster IP.
    assert vh["reviews.default.svc.cluster.local:9080"] == [
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local.",
        "reviews",
        "reviews.default.svc",
        "reviews.default",
        "10.96.0.10",
    ]
    # Other namespace: no bare short name.
    assert vh["ratings.other.svc.cluster.local:9080"] == [
        "ratings.other.svc.cluster.local",
        "ratings.other.svc.cluster.local.",
        "ratings.other",
        "ratings.other.svc",
        "10.96.0.11",
    ]
    assert vh["allow_any"] == ["*"]
    # No HOST:PORT domains for sidecars: the port is ignored when matching.
    assert not any(":" in d for ds in vh.values() for d in ds)
    # Non-Kubernetes hosts only their own name; wildcard hosts stay wildcards.
    vh80 = vhosts(routes(sample_mesh())["80"])
    assert vh80["api.example.com:80"] == ["api.example.com", "api.example.com."]
    assert vh80["*.wild.example.com:80"] == ["*.wild.example.com"]


def test_default_route_as_istiod() -> None:
    rc = routes(sample_mesh())["9080"]
    (route,) = next(v for v in rc.virtual_hosts if v.name.startswith("reviews")).routes
    assert route.name == "default"
    assert route.match.prefix == "/"
    assert route.route.cluster == "outbound|9080||reviews.default.svc.cluster.local"
    assert route.decorator.operation == "reviews.default.svc.cluster.local:9080/*"
    assert route.route.HasField("timeout") and route.route.timeout.ToSeconds() == 0
    rp = route.route.retry_policy
    assert rp.num_retries.value == 2
    assert (
        rp.retry_on == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert rp.host_selection_retry_max_attempts == 5
    assert [p.name for p in rp.retry_host_predicate] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]


def test_catch_all_follows_outbound_policy() -> None:
    allow = routes(sample_mesh())["9080"].virtual_hosts[-1]
    assert allow.name == "allow_any" and allow.routes[0].route.cluster == "PassthroughCluster"
    block = routes(sample_mesh(), policy=OutboundPolicy.REGISTRY_ONLY)["9080"].virtual_hosts[-1]
    assert block.name == "block_all" and block.routes[0].direct_response.status == 502


def test_registry_only_from_sidecar_resource() -> None:
    from types import MappingProxyType

    from xdsd.model.fields import Issues
    from xdsd.model.istio import sidecar as sidecar_kind
    from xdsd.model.types import ConfigObject, ObjectRef

    snap = sample_mesh()
    ref = ObjectRef("Sidecar", "istio-system", "default")
    spec = MappingProxyType({"outboundTrafficPolicy": MappingProxyType({"mode": "REGISTRY_ONLY"})})
    sc = ConfigObject(
        ref=ref,
        group="networking.istio.io",
        version="v1",
        spec=spec,
        typed=sidecar_kind.parse(Issues("x"), spec, "spec", ref),
    )
    snap = dataclasses.replace(snap, configs=MappingProxyType({"Sidecar": (sc,)}))
    assert proxy_context(snap, sidecar()).outbound_policy is OutboundPolicy.REGISTRY_ONLY
    assert routes(snap)["9080"].virtual_hosts[-1].name == "block_all"


def test_sniffed_vip_gets_its_own_route() -> None:
    rc = routes(sample_mesh())["legacy.default.svc.cluster.local:7000"]
    assert vhosts(rc) == {"legacy.default.svc.cluster.local:7000": ["*"]}


def test_duplicate_domains_are_dropped_not_rejected() -> None:
    a = svc(
        "api.example.com",
        "a",
        [("http", 80, Protocol.HTTP)],
        kind="ServiceEntry",
        addresses=("240.0.0.1",),
    )
    b = svc(
        "other.example.com",
        "b",
        [("http", 80, Protocol.HTTP)],
        kind="ServiceEntry",
        addresses=("240.0.0.1",),
    )
    vh = vhosts(routes(snapshot([a, b]))["80"])
    assert vh["api.example.com:80"] == ["api.example.com", "api.example.com.", "240.0.0.1"]
    assert vh["other.example.com:80"] == ["other.example.com", "other.example.com."]


def test_none_mode_routes_include_sniffed_services_in_port_route() -> None:
    got = routes(sample_mesh(), sidecar(mode=InterceptionMode.NONE))
    assert "legacy.default.svc.cluster.local:7000" in vhosts(got["7000"])
    assert "legacy.default.svc.cluster.local:7000" not in got
