"""`istioctl proxy-status` against any one replica lists the proxies of all of them
(istiod cannot: istio/istio#37217). Two xdsd processes' worth of servers (XdsdApp in
process, each with its own xDS and admin port), a proxy stream on each; replica A is
told B's admin address (--peer-admin) and answers istio.io/debug/syncz with both."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2

from tests import istio_bin
from tests.kube.apiserver import KubeApiServer
from tests.meshgen import service, write_docs
from tests.test_workers import Serve, ready, spread_clients, workers
from xdsd.app import AppSettings, XdsdApp
from xdsd.client import fetch_status
from xdsd.demo import free_port, poll
from xdsd.peers import PeerSyncz
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SYNCZ = "istio.io/debug/syncz"


def settings(config: Path, **kw: object) -> AppSettings:
    return AppSettings(
        config_dir=config,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def proxy_stream(port: int, pod: str) -> AsyncIterator[None]:
    """A sidecar's ADS stream, open until the block ends (one CDS response read)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        req = discovery_pb2.DiscoveryRequest(type_url=CDS)
        req.node.id = f"sidecar~10.1.0.5~{pod}.shop~shop.svc.cluster.local"
        req.node.metadata["NAMESPACE"] = "shop"
        await call.write(req)
        resp = await asyncio.wait_for(call.read(), 10)
        ack = discovery_pb2.DiscoveryRequest(
            type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce
        )
        await call.write(ack)
        try:
            yield
        finally:
            call.cancel()


async def test_one_replica_answers_proxy_status_for_all(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    write_docs(config / "mesh.yaml", [service("reviews", "shop", [("http", 9080)])])
    async with XdsdApp(settings(config)) as b:
        peer = f"127.0.0.1:{b.admin_port}"
        async with (
            XdsdApp(settings(config, peer_admins=(peer,), peer_poll_interval=0.05)) as a,
            AsyncExitStack() as stack,
        ):
            await stack.enter_async_context(proxy_stream(a.xds_port, "on-a"))
            await stack.enter_async_context(proxy_stream(b.xds_port, "on-b"))

            async def both() -> bool:
                rows = await fetch_status(f"127.0.0.1:{a.xds_port}", 5)
                return {r.proxy for r in rows} == {"on-a.shop", "on-b.shop"}

            await poll(both, timeout=10, what="replica A listing B's proxy too")
            # B was told of no peer: its own proxy only, as istiod.
            only = await fetch_status(f"127.0.0.1:{b.xds_port}", 5)
            assert {r.proxy for r in only} == {"on-b.shop"}

            async def acked() -> bool:
                rows = {r.proxy: r for r in await fetch_status(f"127.0.0.1:{a.xds_port}", 5)}
                return rows["on-b.shop"].types == {CDS: "SYNCED"}

            # What A says of B's proxy is what B says (once the ACK reached both).
            await poll(acked, timeout=10, what="B's proxy SYNCED as A reports it")

            if istio_bin.binary("istioctl") is not None:  # the real client, where built
                api = await stack.enter_async_context(KubeApiServer(token=None))
                _, text = await istioctl_proxy_status(tmp_path, api, f"127.0.0.1:{a.xds_port}")
                assert "on-a.shop" in text and "on-b.shop" in text, text


async def istioctl_proxy_status(tmp_path: Path, api: KubeApiServer, xds: str) -> tuple[str, str]:
    """`istioctl proxy-status --xds-address XDS --plaintext`: (the ISTIOD column's
    instance, the output). istioctl wants a kubeconfig even with --xds-address: the
    Kubernetes API test server's, which must serve its revision tags' informer."""
    binary = istio_bin.binary("istioctl")
    assert binary is not None
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    api.register(istio_bin.webhook_configs_type())
    (home / "kubeconfig").write_text(api.kubeconfig_yaml())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(home / "kubeconfig")}
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        "proxy-status",
        "--xds-address",
        xds,
        "--plaintext",
        env=env,
        cwd=home,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(out.decode(errors="replace")) from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    lines = text.strip().splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    instances = {
        dict(zip(header, re.split(r"\s{2,}", ln.strip()), strict=False))["ISTIOD"]
        for ln in lines[1:]
    }
    assert len(instances) == 1, text
    return instances.pop(), text


async def syncz_once(address: str) -> tuple[str, set[str]]:
    """One istio.io/debug/syncz query on a connection of its own (so the kernel picks
    the worker): (the answering instance's ID, the proxies it lists)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        req = discovery_pb2.DiscoveryRequest(type_url=SYNCZ)
        req.node.id = "sidecar~127.0.0.1~istioctl.istio-system~istio-system.svc.cluster.local"
        req.node.metadata["NAMESPACE"] = "istio-system"
        await call.write(req)
        resp = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    instance = str(json.loads(resp.control_plane.identifier)["ID"])
    proxies = set()
    for any_msg in resp.resources:
        cc = csds_pb2.ClientConfig()
        any_msg.Unpack(cc)
        proxies.add(cc.node.id)
    return instance, proxies


async def test_proxy_status_through_any_worker_lists_every_workers_proxies(
    tmp_path: Path,
) -> None:
    """`serve --workers 2`: each worker reads its siblings' /debug/syncz (their admin
    ports come from the supervisor), so istio.io/debug/syncz on whichever worker a
    connection lands on lists the proxies of both."""
    config = tmp_path / "config"
    config.mkdir()
    write_docs(config / "a.yaml", [service("a", "shop", [("http", 80)])])
    xds, admin = free_port(), free_port()
    args = ("--xds-port", str(xds), "--admin-port", str(admin), "--poll-interval", "0.05")
    async with Serve("--workers", "2", "--config-dir", str(config), *args) as serve:
        await poll(lambda: ready(admin), timeout=30, what="the supervisor's /ready")
        clients = await spread_clients(f"127.0.0.1:{xds}", admin, 2)
        try:
            everyone = {c.node_id.split("~")[2] for c in clients}
            pids = {w["pid"] for w in await workers(admin)}
            answered: dict[str, set[str]] = {}

            async def both_answer_for_all() -> bool:
                instance, proxies = await syncz_once(f"127.0.0.1:{xds}")
                answered[instance] = proxies
                full = {i for i, p in answered.items() if p == everyone}
                return {int(i.rsplit(".", 1)[1]) for i in full} == pids

            await poll(both_answer_for_all, timeout=20, what="both workers listing every proxy")

            if istio_bin.binary("istioctl") is not None:  # the real client, where built
                async with KubeApiServer(token=None) as api:
                    seen: set[str] = set()

                    async def istioctl_on_both() -> bool:
                        instance, text = await istioctl_proxy_status(
                            tmp_path, api, f"127.0.0.1:{xds}"
                        )
                        assert all(p in text for p in everyone), text
                        seen.add(instance)
                        return len(seen) == 2

                    await poll(
                        istioctl_on_both, timeout=40, what="istioctl answered by both workers"
                    )

            # A worker killed: its streams end, it is restarted, and both workers (the
            # new one told of its sibling, the old one of the new port) list exactly
            # the proxies left.
            os.kill(min(pids), signal.SIGKILL)

            async def restarted() -> bool:
                rows = await workers(admin)
                return all(w["ready"] for w in rows) and min(pids) not in {w["pid"] for w in rows}

            await poll(restarted, timeout=30, what="the killed worker restarted")

            async def cut() -> bool:
                return sum(w["streams"] for w in await workers(admin)) == sum(
                    c.streaming for c in clients
                )

            await poll(cut, timeout=10, what="the dead worker's streams ended")
            left = {c.node_id.split("~")[2] for c in clients if c.streaming}
            pids = {w["pid"] for w in await workers(admin)}
            answered.clear()

            async def both_answer_for_the_rest() -> bool:
                instance, proxies = await syncz_once(f"127.0.0.1:{xds}")
                answered[instance] = proxies
                full = {i for i, p in answered.items() if p == left}
                return {int(i.rsplit(".", 1)[1]) for i in full} == pids

            assert left and left != everyone
            await poll(both_answer_for_the_rest, timeout=20, what="both listing what is left")
        finally:
            for c in clients:
                await c.close()
        assert await serve.stop() == 0


async def test_a_gone_sibling_is_forgotten_at_once(tmp_path: Path) -> None:
    """A worker's sibling that went away (its port no longer in `set_siblings`) stops
    counting at once, not only once its entries age out."""
    from aiohttp import web

    async def syncz(_: web.Request) -> web.Response:
        return web.json_response([{"proxy": "p-0.shop", "namespace": "shop", "types": {}}])

    app = web.Application()
    app.router.add_get("/debug/syncz", syncz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        peers = PeerSyncz([], interval=60.0)
        peers.set_siblings([("127.0.0.1", port)])
        import aiohttp

        async with aiohttp.ClientSession() as s:
            await peers.poll_once(s)
        assert [e["proxy"] for e in peers.entries()] == ["p-0.shop"]
        peers.set_siblings([])
        assert peers.entries() == []
    finally:
        await runner.cleanup()


async def test_an_unreachable_peer_is_reported_and_forgotten() -> None:
    clock = [0.0]
    peers = PeerSyncz(["127.0.0.1:1"], interval=1.0, clock=lambda: clock[0])
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        await peers.poll_once(s)
    assert peers.entries() == []
    assert "http://127.0.0.1:1" in peers.errors
