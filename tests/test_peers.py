"""`istioctl proxy-status` against any one replica lists the proxies of all of them
(istiod cannot: istio/istio#37217). Two xdsd processes' worth of servers (XdsdApp in
process, each with its own xDS and admin port), a proxy stream on each; replica A is
told B's admin address (--peer-admin) and answers istio.io/debug/syncz with both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests import istio_bin
from tests.kube.apiserver import KubeApiServer
from tests.meshgen import service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.client import fetch_status
from xdsd.demo import poll
from xdsd.peers import PeerSyncz
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


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

            binary = istio_bin.binary("istioctl")
            if binary is not None:  # the real client, where Istio's binaries are built
                home = tmp_path / "home"
                home.mkdir()
                # istioctl wants a kubeconfig even with --xds-address: a loopback one.
                api = await stack.enter_async_context(KubeApiServer(token=None))
                api.register(
                    istio_bin.webhook_configs_type()
                )  # istioctl waits for its revision tags' informer
                (home / "kubeconfig").write_text(api.kubeconfig_yaml())
                env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
                env["KUBECONFIG"] = str(home / "kubeconfig")
                proc = await asyncio.create_subprocess_exec(
                    str(binary),
                    "proxy-status",
                    "--xds-address",
                    f"127.0.0.1:{a.xds_port}",
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
                assert "on-a.shop" in text and "on-b.shop" in text, text


async def test_an_unreachable_peer_is_reported_and_forgotten() -> None:
    clock = [0.0]
    peers = PeerSyncz(["127.0.0.1:1"], interval=1.0, clock=lambda: clock[0])
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        await peers.poll_once(s)
    assert peers.entries() == []
    assert "http://127.0.0.1:1" in peers.errors
