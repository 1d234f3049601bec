"""End to end with real iptables capture: sidecars exactly as in an Istio pod.

Two pod network namespaces sit behind a node namespace (see tests/netns.py):
a client pod and a server pod `web-0`, each with istio-init's nat rules
(REDIRECT mode) and an Envoy running as uid 1337 that gets its config from
xdsd, which runs in the test's own namespace. A plain client in the client pod
asks for the service ClusterIP; nothing in the request names a proxy:

  client app -> iptables OUTPUT -> client Envoy 15001 (virtualOutbound, original dst)
  -> 0.0.0.0_9080 -> outbound|9080||web.shop.svc.cluster.local -> server pod IP
  -> iptables PREROUTING -> server Envoy 15006 (virtualInbound) -> inbound|9080||
  -> the app on the pod IP, from 127.0.0.6 (the bind istiod sets on inbound clusters,
  which istio-init's `-o lo -s 127.0.0.6 -j RETURN` lets through uncaptured).

Skips unless run as root on Linux with `ip`, `setpriv`, a working `ip netns add`,
an iptables that loads the rules (nft or legacy) and an Envoy binary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent_sds import AgentSds
from tests.certs import TestCA
from tests.meshgen import istio_config, pod, service, write_docs
from tests.netns import HttpApp, Pod, PodEnvoy, Topology, http_get, unavailable_reason
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import free_port, poll
from xdsd.model.types import AddressView
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [pytest.mark.envoy, pytest.mark.netns, pytest.mark.timeout(60)]

NS = "shop"
CLUSTER_IP = "10.96.0.10"
PORT = 9080
WEB = f"web.{NS}.svc.cluster.local"
OUTBOUND = f"outbound|{PORT}||{WEB}"
INBOUND = f"inbound|{PORT}||"
PASSTHROUGH_BIND = "127.0.0.6"


@dataclass
class Pods:
    topo: Topology
    client: Pod
    server: Pod


@pytest.fixture
def pods() -> Iterator[Pods]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Topology() as topo:
        client = topo.add_pod("sleep", "10.244.1.0/24")
        server = topo.add_pod("web", "10.244.2.0/24")
        yield Pods(topo, client, server)


@pytest.fixture
def config_dir(tmp_path: Path, pods: Pods) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    write_docs(
        d / "mesh.yaml",
        [
            service("web", NS, [("http", PORT)], selector={"app": "web"}, cluster_ip=CLUSTER_IP),
            pod("web-0", NS, pods.server.ip, {"app": "web"}, ports={"http": PORT}),
            pod("sleep-0", NS, pods.client.ip, {"app": "sleep"}),
        ],
    )
    return d


@pytest.fixture
async def app(pods: Pods) -> AsyncIterator[HttpApp]:
    async with HttpApp(pods.server, "web-0", PORT) as a:
        await poll(a.serving, timeout=10, what="the web-0 app serving in its pod")
        yield a


def settings(config_dir: Path, host: str) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        # On the host end of the host-node link only: the pods reach it there.
        xds=GrpcSettings(host=host, port=free_port(host), shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


def logs(*envoys: PodEnvoy) -> str:
    return "\n".join(f"--- {e.pod.name} envoy log:\n{e.log()[-4000:]}" for e in envoys)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_captured_request_crosses_both_sidecars(
    pods: Pods, config_dir: Path, app: HttpApp, delta: bool
) -> None:
    async with XdsdApp(settings(config_dir, pods.topo.host_ip)) as xdsd:
        client = PodEnvoy(
            pods.client,
            NS,
            {"app": "sleep"},
            xds_host=pods.topo.host_ip,
            xds_port=xdsd.xds_port,
            delta=delta,
        )
        server = PodEnvoy(
            pods.server,
            NS,
            {"app": "web"},
            xds_host=pods.topo.host_ip,
            xds_port=xdsd.xds_port,
            delta=delta,
        )
        async with client, server:
            try:
                await client.wait_ready(timeout=20)
                await server.wait_ready(timeout=20)

                async def web(host: str = "", ip: str = CLUSTER_IP) -> dict[str, str]:
                    status, body = await http_get(pods.client.ns, ip, PORT, host=host)
                    assert status == 200, body
                    answer: dict[str, str] = json.loads(body)
                    return answer

                async def routed() -> bool:
                    return (await web())["name"] == "web-0"

                # Until EDS lands the route answers 503; then it reaches the app.
                await poll(routed, timeout=20, what="ClusterIP request reaching web-0")

                # By ClusterIP, by FQDN and by short name, as a client resolving DNS would.
                for host in ("", WEB, f"{WEB}:{PORT}", "web", f"web.{NS}"):
                    answer = await web(host)
                    assert answer["name"] == "web-0", (host, answer)
                    # The app saw the server sidecar's inbound cluster bind address:
                    # proof the request came in through 15006 and inbound|9080||.
                    assert answer["source"] == PASSTHROUGH_BIND, (host, answer)

                # The client sidecar routed it by the service's cluster, and the
                # server sidecar by its inbound cluster.
                out = await client.stats("upstream_rq_total")
                assert out.get(f"cluster.{OUTBOUND}.upstream_rq_total", 0) >= 5, out
                inbound = await server.stats("upstream_rq_total")
                assert inbound.get(f"cluster.{INBOUND}.upstream_rq_total", 0) >= 5, inbound
                cx = await server.stats("downstream_cx_total")
                assert cx.get("listener.0.0.0.0_15006.downstream_cx_total", 0) >= 1, cx

                # Straight to the pod IP (no service VIP): the client passes it through
                # to the original destination and the server still captures it inbound.
                direct = await web(ip=pods.server.ip)
                assert direct == {
                    "name": "web-0",
                    "source": PASSTHROUGH_BIND,
                    "host": f"{pods.server.ip}:{PORT}",
                }

                assert await client.rejected_updates() == 0, logs(client)
                assert await server.rejected_updates() == 0, logs(server)
                sync = xdsd.syncz()
                assert len(sync) == 2, sync
                for proxy in sync:
                    assert {t["status"] for t in proxy["types"].values()} == {"SYNCED"}, proxy
            except BaseException:
                print(logs(client, server))
                raise


@pytest.fixture
def sds_dir() -> Iterator[Path]:
    """A folder for the agents' sockets that uid 1337 can reach (pytest's are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="xdsd-sds-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_strict_mtls_between_captured_sidecars(
    pods: Pods, tmp_path: Path, app: HttpApp, sds_dir: Path
) -> None:
    """PeerAuthentication STRICT with real capture: virtualInbound (15006) takes only
    mTLS. The client sidecar speaks it without any DestinationRule (auto mTLS, both pods
    have Istio's tlsMode label); a client without a sidecar (the node) is refused."""
    mesh_labels = {"security.istio.io/tlsMode": "istio"}
    d = tmp_path / "config"
    d.mkdir()
    write_docs(
        d / "mesh.yaml",
        [
            service("web", NS, [("http", PORT)], selector={"app": "web"}, cluster_ip=CLUSTER_IP),
            pod(
                "web-0",
                NS,
                pods.server.ip,
                {"app": "web", **mesh_labels},
                ports={"http": PORT},
                service_account="web",
            ),
            pod(
                "sleep-0",
                NS,
                pods.client.ip,
                {"app": "sleep", **mesh_labels},
                service_account="sleep",
            ),
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            },
        ],
    )
    ca = TestCA("netns mesh CA")
    async with (
        XdsdApp(settings(d, pods.topo.host_ip)) as xdsd,
        AgentSds(sds_dir / "sleep.sock", ca=ca, identity=spiffe("sleep")) as a1,
        AgentSds(sds_dir / "web.sock", ca=ca, identity=spiffe("web")) as a2,
    ):
        for agent in (a1, a2):
            os.chmod(agent.socket, 0o777)  # Envoy runs as uid 1337
        common: dict[str, Any] = {"xds_host": pods.topo.host_ip, "xds_port": xdsd.xds_port}
        client = PodEnvoy(
            pods.client, NS, {"app": "sleep", **mesh_labels}, sds_socket=a1.socket, **common
        )
        server = PodEnvoy(
            pods.server, NS, {"app": "web", **mesh_labels}, sds_socket=a2.socket, **common
        )
        async with client, server:
            try:
                await client.wait_ready(timeout=20)
                await server.wait_ready(timeout=20)

                async def routed() -> bool:
                    status, body = await http_get(pods.client.ns, CLUSTER_IP, PORT)
                    return status == 200 and json.loads(body)["name"] == "web-0"

                await poll(routed, timeout=20, what="mTLS request reaching web-0")
                stats = await server.stats("ssl.handshake")
                assert stats.get("listener.0.0.0.0_15006.ssl.handshake", 0) >= 1, stats

                # No sidecar (the node namespace): plaintext to the pod IP is refused.
                try:
                    status, _ = await http_get(pods.topo.node, pods.server.ip, PORT)
                except ConnectionError:
                    status = 0
                assert status != 200
                assert await client.rejected_updates() == 0, logs(client)
                assert await server.rejected_updates() == 0, logs(server)
            except BaseException:
                print(logs(client, server))
                raise


def spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/{NS}/sa/{sa}"


def tcp_entry(name: str, host: str, ip: str, target: int) -> dict[str, Any]:
    return istio_config(
        "ServiceEntry",
        name,
        NS,
        {
            "hosts": [host],
            "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "endpoints": [{"address": ip, "ports": {"tcp": target}}],
        },
    )


async def test_auto_allocated_addresses_reach_each_tcp_service_entry(tmp_path: Path) -> None:
    """Two TCP ServiceEntries on port 9000 without addresses (istiod's IP auto-allocation).
    The sidecar captures DNS, so xdsd gives each host an address of 240.240.0.0/16 and
    the sidecar a listener on each; a plain client connecting to either address is
    captured and reaches that entry's backend. (Without allocation both would share
    0.0.0.0_9000, and only one entry would be reachable.)"""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Topology() as topo:
        client = topo.add_pod("sleep", "10.244.1.0/24")
        backends = topo.add_pod("ext", "10.244.3.0/24", capture=False)  # no sidecar
        d = tmp_path / "config"
        d.mkdir()
        write_docs(
            d / "mesh.yaml",
            [
                pod("sleep-0", NS, client.ip, {"app": "sleep"}),
                tcp_entry("alpha", "alpha.tcp.example", backends.ip, 7001),
                tcp_entry("beta", "beta.tcp.example", backends.ip, 7002),
            ],
        )
        async with (
            HttpApp(backends, "alpha", 7001) as alpha,
            HttpApp(backends, "beta", 7002) as beta,
            XdsdApp(settings(d, topo.host_ip)) as xdsd,
        ):
            await poll(alpha.serving, timeout=10, what="alpha serving")
            await poll(beta.serving, timeout=10, what="beta serving")
            view = AddressView(auto_allocated=True, ip_family="v4")
            address = {
                s.hostname: s.addresses_for(view)[0]
                for s in xdsd.snapshot.services
                if s.hostname.endswith(".tcp.example")
            }
            assert address["alpha.tcp.example"] != address["beta.tcp.example"], address
            registry = {s["hostname"]: s for s in xdsd.registryz()}
            assert (
                registry["alpha.tcp.example"]["autoAllocatedIPv4Address"]
                == (address["alpha.tcp.example"])
            )
            envoy = PodEnvoy(
                client,
                NS,
                {"app": "sleep"},
                xds_host=topo.host_ip,
                xds_port=xdsd.xds_port,
                metadata={"DNS_CAPTURE": "true"},
            )
            async with envoy:
                try:
                    await envoy.wait_ready(timeout=20)

                    async def reaches(host: str, name: str) -> bool:
                        try:
                            status, body = await http_get(client.ns, address[host], 9000)
                        except ConnectionError:
                            return False
                        return status == 200 and json.loads(body)["name"] == name

                    await poll(
                        lambda: reaches("alpha.tcp.example", "alpha"),
                        timeout=20,
                        what="alpha through its allocated address",
                    )
                    assert await reaches("beta.tcp.example", "beta")
                    stats = await envoy.stats("downstream_cx_total")
                    for host in ("alpha.tcp.example", "beta.tcp.example"):
                        key = f"listener.{address[host]}_9000.downstream_cx_total"
                        assert stats.get(key, 0) >= 1, (key, stats)
                    assert await envoy.rejected_updates() == 0, logs(envoy)
                except BaseException:
                    print(logs(envoy))
                    raise
