"""`xdsd serve --workers N`: proxies spread over worker processes on one port, config
parsed once in the supervisor and shipped to every worker, restarts, clean shutdown.

Real processes and real gRPC ADS streams on loopback; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, namespace, node, workload
from tests.meshgen import service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import free_port, poll
from xdsd.model.parse import parse_documents
from xdsd.model.store import ConfigStore
from xdsd.server.grpc_server import GrpcSettings
from xdsd.workers import Supervisor, WorkerOptions, frame, register_pickling

ROOT = Path(__file__).resolve().parents[1]
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
NS = "shop"


def outbound(name: str, port: int = 80, ns: str = NS) -> str:
    return f"outbound|{port}||{name}.{ns}.svc.cluster.local"


class AdsClient:
    """One proxy on its own connection (so the kernel picks a worker for it): SotW
    CDS, every response ACKed, the latest cluster names kept."""

    def __init__(self, address: str, n: int) -> None:
        self.node_id = f"sidecar~10.0.0.{n % 250 + 1}~client-{n}.{NS}~{NS}.svc.cluster.local"
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.clusters: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> AdsClient:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        req = discovery_pb2.DiscoveryRequest(type_url=CDS)
        req.node.id = self.node_id
        req.node.metadata["NAMESPACE"] = NS
        await call.write(req)
        self._task = asyncio.create_task(self._follow(call))
        return self

    async def _follow(self, call: Any) -> None:
        while (resp := await call.read()) is not grpc.aio.EOF:
            self.clusters = frozenset(
                cluster_pb2.Cluster.FromString(r.value).name for r in resp.resources
            )
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce
                )
            )

    @property
    def streaming(self) -> bool:
        """Its stream is still open (it ends when its worker dies)."""
        return self._task is not None and not self._task.done()

    async def has(self, name: str) -> bool:
        return name in self.clusters

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close()


async def get_json(port: int, path: str) -> Any:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return json.loads(await r.text())


async def ready(port: int) -> bool:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{port}/ready") as r:
        return r.status == 200


async def workers(admin_port: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await get_json(admin_port, "/debug/workers")
    return rows


async def spread_clients(address: str, admin_port: int, n_workers: int) -> list[AdsClient]:
    """Open proxies one by one until every worker holds at least one stream."""
    clients: list[AdsClient] = []
    for n in range(48):  # all on one of 2 workers by chance: 2**-47
        clients.append(await AdsClient(address, n).start())

        async def counted() -> bool:
            return sum(w["streams"] for w in await workers(admin_port)) == len(clients)

        await poll(counted, timeout=10, what=f"{len(clients)} streams counted")
        if len(clients) >= n_workers and all(w["streams"] > 0 for w in await workers(admin_port)):
            return clients
    raise AssertionError(f"streams did not spread: {await workers(admin_port)}")


async def all_have(clients: list[AdsClient], name: str) -> bool:
    return all(name in c.clusters for c in clients)


def alive(pid: int) -> bool:
    """A live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Serve:
    """`python -m xdsd serve --workers N ...` as a child process of the test."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Serve:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xdsd", "serve", *self.args, env=env
        )
        return self

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await self.stop()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def folder_serve(tmp_path: Path) -> AsyncIterator[tuple[Serve, int, int, Path]]:
    config = tmp_path / "config"
    config.mkdir()
    write_docs(config / "a.yaml", [service("a", NS, [("http", 80)])])
    xds, admin = free_port(), free_port()
    async with Serve(
        "--workers",
        "2",
        "--config-dir",
        str(config),
        "--xds-port",
        str(xds),
        "--admin-port",
        str(admin),
        "--poll-interval",
        "0.05",
        "--debounce-quiet",
        "0.02",
        "--shutdown-grace",
        "0.5",
    ) as serve:
        await poll(lambda: ready(admin), timeout=30, what="the supervisor's /ready")
        yield serve, xds, admin, config


async def test_folder_mode_streams_spread_over_workers_and_edits_reach_all(
    folder_serve: tuple[Serve, int, int, Path],
) -> None:
    serve, xds, admin, config = folder_serve
    rows = await workers(admin)
    assert len(rows) == 2 and all(w["ready"] for w in rows)
    assert len({w["pid"] for w in rows}) == 2
    clients = await spread_clients(f"127.0.0.1:{xds}", admin, 2)
    try:
        await poll(lambda: all_have(clients, outbound("a")), timeout=10, what="cluster a")
        # One edit, parsed once by the supervisor, reaches proxies on both workers.
        write_docs(config / "b.yaml", [service("b", NS, [("http", 80)])])
        await poll(lambda: all_have(clients, outbound("b")), timeout=10, what="cluster b")
        (config / "a.yaml").unlink()

        async def a_gone() -> bool:
            return not any(outbound("a") in c.clusters for c in clients)

        await poll(a_gone, timeout=10, what="cluster a removed")
        # The supervisor's /debug/adsz gathers every worker's proxies.
        rows = await get_json(admin, "/debug/adsz")
        assert {r["worker"] for r in rows} == {0, 1}
        assert len(rows) == len(clients)
        # Each worker's own admin server has its own debug views.
        for w in await workers(admin):
            status = await get_json(w["admin_port"], "/debug/push_status")
            assert status["ready"] and status["proxies"] == w["streams"]
    finally:
        for c in clients:
            await c.close()
    pids = [w["pid"] for w in await workers(admin)]
    assert await serve.stop() == 0
    assert not any(alive(pid) for pid in pids)


async def test_a_killed_worker_is_restarted_and_serves_again(
    folder_serve: tuple[Serve, int, int, Path],
) -> None:
    serve, xds, admin, config = folder_serve
    old = {w["worker"]: w["pid"] for w in await workers(admin)}
    os.kill(old[0], signal.SIGKILL)

    async def restarted() -> bool:
        w = (await workers(admin))[0]
        return bool(w["pid"] != old[0] and w["ready"] and w["restarts"] == 1)

    await poll(restarted, timeout=20, what="worker 0 restarted")
    assert (await workers(admin))[1]["pid"] == old[1]
    # A change made while it was down and one made after both reach it: the new
    # worker started from the supervisor's state, then follows the stream.
    write_docs(config / "c.yaml", [service("c", NS, [("http", 80)])])
    clients = await spread_clients(f"127.0.0.1:{xds}", admin, 2)
    try:
        await poll(lambda: all_have(clients, outbound("c")), timeout=10, what="cluster c")
        write_docs(config / "d.yaml", [service("d", NS, [("http", 80)])])
        await poll(lambda: all_have(clients, outbound("d")), timeout=10, what="cluster d")
    finally:
        for c in clients:
            await c.close()
    pids = [w["pid"] for w in await workers(admin)]
    assert await serve.stop() == 0
    assert not any(alive(pid) for pid in [*pids, old[0]])


async def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = AppSettings(
            config_dir=tmp_path, xds=GrpcSettings(port=port), admin_port=-1, poll_interval=0.05
        )
        with pytest.raises(OSError, match="address in use"):
            async with Supervisor(settings, WorkerOptions(workers=2)):
                pass


def test_store_replay_rebuilds_an_equal_store() -> None:
    """A worker starts from the supervisor's stores; later changes apply identically."""
    register_pickling()
    store = ConfigStore()
    good = [service("a", NS, [("http", 80)]), service("b", NS, [("http", 80)])]
    store.apply_file("f.yaml", good)
    broken = [service("a", NS, [("http", 80)]), {**good[1], "spec": {"ports": "bad"}}]
    store.apply_file("f.yaml", broken)  # b: last good version kept, error noted
    copy = ConfigStore()
    for content in pickle.loads(frame(store.replay())[4:]):
        copy.apply_file(content.source, content.result)
    assert copy.objects() == store.objects() and copy.errors() == store.errors()
    fixed = parse_documents([good[0]], "f.yaml")
    assert copy.apply_file("f.yaml", fixed) == store.apply_file("f.yaml", fixed)
    assert copy.objects() == store.objects() and copy.errors() == store.errors()


# -- the Kubernetes mode -----------------------------------------------------------------------


async def test_kube_mode_one_set_of_watches_and_changes_reach_every_worker(
    tmp_path: Path,
) -> None:
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        populate(api)
        settings = kube_settings(tmp_path, api, xds_port=0, admin_port=0)
        async with Supervisor(settings, WorkerOptions(workers=2)) as sup:
            await poll(lambda: ready(sup.admin_port), timeout=30, what="ready")
            await poll(lambda: all_watching(api), timeout=10, what="every list watched")
            # The single process's set of watches, not one per worker: compare with it.
            watches = sorted(map(repr, api.watches()))
            lists = api.count("list")
            assert watches == await _single_process_watches(tmp_path)
            assert lists == len(watches) > 10
            clients = await spread_clients(f"127.0.0.1:{sup.xds_port}", sup.admin_port, 2)
            try:
                await poll(lambda: all_have(clients, outbound("a")), timeout=10, what="a")
                api.apply(service("b", NS, [("http", 80)]))
                await poll(lambda: all_have(clients, outbound("b")), timeout=10, what="b")
                # Still one set of watches and lists (no worker listed anything).
                assert sorted(map(repr, api.watches())) == watches
                assert api.count("list") == lists
                clusterz = await get_json(sup.admin_port, "/debug/clusterz")
                assert [c["cluster"] for c in clusterz["clusters"]] == ["main"]
                for w in await workers(sup.admin_port):
                    z = await get_json(w["admin_port"], "/debug/clusterz")
                    assert z["clusters"][0]["state"] == "synced"
            finally:
                for c in clients:
                    await c.close()
            pids = [w["pid"] for w in await workers(sup.admin_port)]
        assert not any(alive(pid) for pid in pids)
        assert api.watches() == []


def populate(api: KubeApiServer) -> None:
    api.apply(namespace(NS))
    api.apply(namespace("istio-system"))
    api.apply(node("m1", "eu", "eu-1"))
    workload(api, svc="a", ns=NS, port_name="http", port=80, pods=[("a-1", "127.0.0.11", "m1")])


async def all_watching(api: KubeApiServer) -> bool:
    """Each collection listed has its watch open (a list comes first, then its watch)."""
    return len(api.watches()) == api.count("list") > 0


async def _single_process_watches(tmp_path: Path) -> list[str]:
    """The watches one xdsd process opens (measured on a second, temporary server)."""
    async with KubeApiServer(token="main-token") as other:
        populate(other)
        (tmp_path / "single").mkdir()
        settings = kube_settings(tmp_path / "single", other, xds_port=0, admin_port=-1)
        async with XdsdApp(settings) as app:
            await asyncio.wait_for(app.ready.wait(), 30)
            await poll(lambda: all_watching(other), timeout=10, what="every list watched")
            return sorted(map(repr, other.watches()))
