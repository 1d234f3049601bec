"""CDS: names, discovery types, defaults, inbound clusters, HTTP/2 options."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tests.envoy_static import dns_cluster, sample_mesh, sidecar, snapshot, svc, workload
from xdsd.model.proxy import InterceptionMode, ProxyType
from xdsd.model.types import Protocol, Resolution
from xdsd.translate.generate import CLUSTER_TYPE, GENERATORS, eds_cluster_names, proxy_context

Cluster = cluster_pb2.Cluster
HTTP_OPTS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def clusters(snap, proxy=None) -> dict[str, Cluster]:  # type: ignore[no-untyped-def]
    ctx = proxy_context(snap, proxy or sidecar())
    out = dict(GENERATORS[CLUSTER_TYPE](ctx))
    return out  # type: ignore[return-value]


def http_options(cl: Cluster) -> http_protocol_options_pb2.HttpProtocolOptions | None:
    if HTTP_OPTS not in cl.typed_extension_protocol_options:
        return None
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    cl.typed_extension_protocol_options[HTTP_OPTS].Unpack(opts)
    return opts


def test_outbound_eds_cluster_as_istiod() -> None:
    cl = clusters(sample_mesh())["outbound|9080||reviews.default.svc.cluster.local"]
    assert cl.type == Cluster.EDS
    assert cl.eds_cluster_config.service_name == cl.name
    src = cl.eds_cluster_config.eds_config
    assert src.HasField("ads")
    assert src.resource_api_version == config_source_pb2.V3
    assert src.initial_fetch_timeout.ToSeconds() == 0 and src.HasField("initial_fetch_timeout")
    assert cl.connect_timeout.ToSeconds() == 10
    (th,) = cl.circuit_breakers.thresholds
    assert th.max_connections.value == th.max_requests.value == 2**32 - 1
    assert th.max_pending_requests.value == th.max_retries.value == 2**32 - 1
    assert cl.lb_policy == Cluster.LEAST_REQUEST
    assert cl.HasField("common_lb_config")
    assert http_options(cl) is None  # plain HTTP/1.1 port
    assert cl.metadata.filter_metadata["istio"]["default_original_port"] == 9080


def test_http2_and_grpc_ports_get_http2_upstream() -> None:
    got = clusters(sample_mesh())
    for name in (
        "outbound|9090||reviews.default.svc.cluster.local",
        "outbound|8081||ratings.other.svc.cluster.local",
        "inbound|9090||",
    ):
        opts = http_options(got[name])
        assert opts is not None, name
        assert opts.explicit_http_config.HasField("http2_protocol_options"), name


def test_sniffed_port_uses_downstream_protocol() -> None:
    opts = http_options(clusters(sample_mesh())["outbound|7000||legacy.default.svc.cluster.local"])
    assert opts is not None and opts.HasField("use_downstream_protocol_config")


def test_service_entry_resolutions() -> None:
    got = clusters(sample_mesh())
    dns = got["outbound|443||api.example.com"]
    cfg = dns_cluster(dns)  # STRICT_DNS, as Envoy's DnsCluster (no deprecated Cluster fields)
    assert cfg is not None and not cfg.all_addresses_in_single_endpoint
    assert (cfg.dns_refresh_rate.seconds, cfg.respect_dns_ttl) == (60, True)
    assert not dns.HasField("dns_refresh_rate") and not dns.respect_dns_ttl
    hosts = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for e in dns.load_assignment.endpoints[0].lb_endpoints
    ]
    assert hosts == [("api-1.example.com", 443), ("api-2.example.com", 443)]
    assert cfg.dns_lookup_family == dns_pb2.V4_ONLY
    # No endpoints: the SE host itself is resolved.
    no_eps = got["outbound|80||api.example.com"]
    assert [
        e.endpoint.address.socket_address.address
        for e in no_eps.load_assignment.endpoints[0].lb_endpoints
    ] == ["api.example.com"]
    rr = got["outbound|8443||rr.example.com"]
    rr_cfg = dns_cluster(rr)  # LOGICAL_DNS: all addresses in one endpoint
    assert rr_cfg is not None and rr_cfg.all_addresses_in_single_endpoint
    assert len(rr.load_assignment.endpoints[0].lb_endpoints) == 1
    none = got["outbound|9000||*.wild.example.com"]
    assert none.type == Cluster.ORIGINAL_DST and none.lb_policy == Cluster.CLUSTER_PROVIDED
    assert not none.HasField("load_assignment")
    ext = got["outbound|80||extname.default.svc.cluster.local"]
    ext_cfg = dns_cluster(ext)
    assert ext_cfg is not None and not ext_cfg.all_addresses_in_single_endpoint
    (lb,) = ext.load_assignment.endpoints[0].lb_endpoints
    assert lb.endpoint.address.socket_address.address == "www.example.org"
    assert got["outbound|6379||db-0.default.svc.cluster.local"].type == Cluster.ORIGINAL_DST


def test_wildcard_dns_service_entry_without_endpoints_is_left_out_and_reported() -> None:
    wild = svc(
        "*.dns.example.com",
        "default",
        [("http", 80, Protocol.HTTP)],
        kind="ServiceEntry",
        resolution=Resolution.DNS,
    )
    snap = snapshot([wild])
    ctx = proxy_context(snap, sidecar())
    assert "outbound|80||*.dns.example.com" not in dict(GENERATORS[CLUSTER_TYPE](ctx))
    assert any("*.dns.example.com" in m for m in ctx.conflicts)


def test_udp_ports_get_no_cluster() -> None:
    assert not any("dns.default" in n for n in clusters(sample_mesh()))


def test_special_clusters() -> None:
    got = clusters(sample_mesh())
    bh = got["BlackHoleCluster"]
    assert bh.type == Cluster.STATIC and not bh.HasField("load_assignment")
    pt = got["PassthroughCluster"]
    assert pt.type == Cluster.ORIGINAL_DST and pt.lb_policy == Cluster.CLUSTER_PROVIDED
    opts = http_options(pt)
    assert opts is not None and opts.common_http_protocol_options.idle_timeout.ToSeconds() == 300
    assert opts.HasField("use_downstream_protocol_config")
    ipt = got["InboundPassthroughCluster"]
    assert ipt.type == Cluster.ORIGINAL_DST
    assert ipt.upstream_bind_config.source_address.address == "127.0.0.6"


def test_inbound_clusters_for_own_workload_by_target_port() -> None:
    got = clusters(sample_mesh())
    # reviews: http 9080 -> named targetPort "http-app" = 9081, grpc 9090, tcp 5000 -> 5001
    assert sorted(n for n in got if n.startswith("inbound|")) == [
        "inbound|5001||",
        "inbound|9081||",
        "inbound|9090||",
    ]
    cl = got["inbound|9081||"]
    assert cl.type == Cluster.ORIGINAL_DST and cl.lb_policy == Cluster.CLUSTER_PROVIDED
    assert cl.upstream_bind_config.source_address.address == "127.0.0.6"


def test_no_inbound_clusters_for_other_namespace_or_unselected_pod() -> None:
    snap = sample_mesh()
    # A proxy with the IP of ratings' pod but claiming another namespace: no workload match.
    assert not any(n.startswith("inbound|") for n in clusters(snap, sidecar("10.2.0.7", "default")))
    got = clusters(snap, sidecar("10.2.0.7", "other"))
    # ratings has no selector in the sample: nothing selects the pod.
    assert not any(n.startswith("inbound|9080") for n in got)
    selected = svc(
        "ratings.other.svc.cluster.local",
        "other",
        [("http", 9080, Protocol.HTTP)],
        selector={"app": "ratings"},
    )
    snap2 = snapshot(
        [selected], workloads=[workload("ratings-v1", "other", "10.2.0.7", {"app": "ratings"})]
    )
    assert "inbound|9080||" in clusters(snap2, sidecar("10.2.0.7", "other"))


def test_none_mode_has_no_inbound_clusters() -> None:
    got = clusters(sample_mesh(), sidecar(mode=InterceptionMode.NONE))
    assert not any(n.startswith("inbound|") for n in got)
    assert "outbound|9080||reviews.default.svc.cluster.local" in got


def test_export_to_visibility() -> None:
    snap = sample_mesh()
    # secret.other is exportTo "." : invisible from "default", visible from "other".
    assert "outbound|9080||secret.other.svc.cluster.local" not in clusters(snap)
    assert "outbound|9080||secret.other.svc.cluster.local" in clusters(
        snap, sidecar("10.2.0.9", "other")
    )
    for export, ns, visible in [
        ({"~"}, "default", False),
        ({"~"}, "other", False),
        ({"default"}, "default", True),
        ({"default"}, "third", False),
        ({"*"}, "third", True),
    ]:
        s = svc(
            "x.other.svc.cluster.local",
            "other",
            [("http", 80, Protocol.HTTP)],
            export_to=frozenset(export),
        )
        got = clusters(snapshot([s]), sidecar("10.9.0.1", ns))
        assert ("outbound|80||x.other.svc.cluster.local" in got) is visible, (export, ns)


def test_same_host_in_two_namespaces_first_wins() -> None:
    a = svc("api.example.com", "a", [("http", 80, Protocol.HTTP)], kind="ServiceEntry")
    b = svc("api.example.com", "b", [("http", 80, Protocol.HTTP)], kind="ServiceEntry")
    ctx = proxy_context(snapshot([b, a]), sidecar())
    names = [n for n, _ in GENERATORS[CLUSTER_TYPE](ctx)]
    assert names.count("outbound|80||api.example.com") == 1
    assert any("hidden by" in m for m in ctx.conflicts)


def test_eds_cluster_names_match_eds_clusters() -> None:
    ctx = proxy_context(sample_mesh(), sidecar())
    eds = [n for n, c in GENERATORS[CLUSTER_TYPE](ctx) if c.type == Cluster.EDS]  # type: ignore[attr-defined]
    assert eds_cluster_names(ctx) == sorted(eds)


def test_router_proxies_get_outbound_clusters_and_blackhole_only() -> None:
    # istiod buildClusters (gateways): no PassthroughCluster, no inbound clusters.
    ctx = proxy_context(sample_mesh(), sidecar(ptype=ProxyType.ROUTER))
    names = [n for n, _ in GENERATORS[CLUSTER_TYPE](ctx)]
    assert names == sorted([oc.name for oc in ctx.clusters] + ["BlackHoleCluster"])
    assert "PassthroughCluster" not in names and "InboundPassthroughCluster" not in names
    assert eds_cluster_names(ctx) == sorted(
        oc.name for oc in ctx.clusters if oc.name in set(names) and oc.kind.value == "EDS"
    )


def test_grpc_web_counts_as_http2_as_in_istio() -> None:
    s = svc("w.default.svc.cluster.local", "default", [("grpc-web", 8080, Protocol.GRPC_WEB)])
    opts = http_options(clusters(snapshot([s]))["outbound|8080||w.default.svc.cluster.local"])
    assert opts is not None and opts.explicit_http_config.HasField("http2_protocol_options")
