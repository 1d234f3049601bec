"""xdsd.multicluster.Clusters with fake sources: full states as diffs, a failing
source replaced, rotations keeping the store, removals, the initial sync gate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from tests.meshgen import service
from xdsd.demo import poll
from xdsd.model.parse import parse_documents
from xdsd.model.store import ConfigChange, FileContent
from xdsd.multicluster import Clusters
from xdsd.sources.kube import ClusterAdded, ClusterRemoved, ClusterSpec, ClusterStatus
from xdsd.sources.kube.cluster import ClusterState
from xdsd.sources.kube.remote import RemoteEvent, RemoteProblem

NS = "shop"


def svc_file(cluster_id: str, name: str, port: int = 80) -> FileContent:
    src = f"{cluster_id}:Service/{NS}/{name}"
    doc = service(name, NS, [("http", port)])
    return FileContent(src, parse_documents([doc], src, cluster_id=cluster_id))


class FakeSource:
    """Yields the changes put into its queue; an Exception put there is raised."""

    instances: list[FakeSource] = []

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.synced = asyncio.Event()
        self.queue: asyncio.Queue[ConfigChange | Exception] = asyncio.Queue()
        self.state: ClusterState = "connecting"
        self.closed = False
        FakeSource.instances.append(self)

    async def changes(self) -> AsyncIterator[ConfigChange]:
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            if item.synced:
                self.synced.set()
                self.state = "synced"
            yield item

    def status(self) -> ClusterStatus:
        return ClusterStatus(self.spec.cluster_id, self.state, role=self.spec.role)

    async def aclose(self) -> None:
        self.closed = True


class FakeRemotes:
    def __init__(self) -> None:
        self.synced = asyncio.Event()
        self.queue: asyncio.Queue[RemoteEvent | None] = asyncio.Queue()

    async def changes(self) -> AsyncIterator[RemoteEvent]:
        while True:
            item = await self.queue.get()
            if item is None:
                self.synced.set()
                continue
            yield item

    def status(self) -> ClusterStatus:
        return ClusterStatus("main", "synced")

    def problems(self) -> tuple[RemoteProblem, ...]:
        return ()

    async def aclose(self) -> None:
        pass


def source_of(cluster_id: str) -> FakeSource:
    return [s for s in FakeSource.instances if s.spec.cluster_id == cluster_id][-1]


async def make(
    remotes: FakeRemotes | None = None, **kw: Any
) -> tuple[Clusters, list[tuple[str, frozenset[str]]]]:
    FakeSource.instances = []
    changes: list[tuple[str, frozenset[str]]] = []
    clusters = Clusters(
        ClusterSpec("main", {"k": "v"}, "config"),
        source_factory=FakeSource,
        on_change=lambda cid, kinds: changes.append((cid, kinds)),
        remotes=remotes,
        restart_delay=0.0,
        **kw,
    )
    await clusters.start()
    return clusters, changes


async def test_a_full_state_after_a_restart_is_a_diff() -> None:
    clusters, changes = await make()
    try:
        src = source_of("main")
        src.queue.put_nowait(
            ConfigChange((svc_file("main", "a"), svc_file("main", "b")), synced=True)
        )
        await asyncio.wait_for(clusters.initial_sync.wait(), 5)
        assert [o.ref.name for o in clusters.config_store.objects()] == ["a", "b"]

        # The source fails; a new one starts and sends its full state: "b" is gone,
        # "a" is unchanged (no change reported for it).
        changes.clear()
        src.queue.put_nowait(RuntimeError("boom"))

        async def replaced() -> bool:
            return source_of("main") is not src

        await poll(replaced, timeout=5, what="a new source")
        assert src.closed
        source_of("main").queue.put_nowait(
            ConfigChange((svc_file("main", "a"),), frozenset({"Service"}), synced=True)
        )

        async def applied() -> bool:
            return [o.ref.name for o in clusters.config_store.objects()] == ["a"]

        await poll(applied, timeout=5, what="b removed by the resync")
        assert changes == [("main", frozenset({"Service"}))]
    finally:
        await clusters.aclose()


async def test_rotation_keeps_the_store_until_the_new_full_state() -> None:
    remotes = FakeRemotes()
    clusters, changes = await make(remotes)
    try:
        source_of("main").queue.put_nowait(ConfigChange((), synced=True))
        remotes.queue.put_nowait(ClusterAdded(ClusterSpec("west", {"token": "1"}, "remote")))
        remotes.queue.put_nowait(None)

        async def west_started() -> bool:
            return any(s.spec.cluster_id == "west" for s in FakeSource.instances)

        await poll(west_started, timeout=5, what="west source")
        first = source_of("west")
        first.queue.put_nowait(ConfigChange((svc_file("west", "w"),), synced=True))
        await asyncio.wait_for(clusters.initial_sync.wait(), 5)
        assert [o.ref.name for o in clusters.remote_stores()["west"].objects()] == ["w"]

        # Rotated credentials: a new source; meanwhile the store stays, and is stale.
        remotes.queue.put_nowait(ClusterAdded(ClusterSpec("west", {"token": "2"}, "remote")))

        async def restarted() -> bool:
            return source_of("west") is not first

        await poll(restarted, timeout=5, what="west restarted")
        assert first.closed
        assert [o.ref.name for o in clusters.remote_stores()["west"].objects()] == ["w"]
        assert clusters.stale() == {"west"}
        changes.clear()
        source_of("west").queue.put_nowait(ConfigChange((svc_file("west", "w"),), synced=True))

        async def fresh() -> bool:
            return clusters.stale() == frozenset()

        await poll(fresh, timeout=5, what="west synced again")
        assert changes == []  # the same objects: no change

        remotes.queue.put_nowait(ClusterRemoved("west"))

        async def removed() -> bool:
            return "west" not in clusters.remote_stores()

        await poll(removed, timeout=5, what="west removed")
        assert source_of("west").closed
        assert changes == [("west", frozenset({"Service"}))]
    finally:
        await clusters.aclose()


async def test_initial_sync_waits_for_the_remote_secrets_and_times_out_slow_remotes() -> None:
    remotes = FakeRemotes()
    clusters, _ = await make(remotes, remote_sync_timeout=0.3, progress_interval=0.05)
    try:
        source_of("main").queue.put_nowait(ConfigChange((), synced=True))
        await asyncio.sleep(0)
        # The remote secrets have not been read: not synced yet.
        assert not clusters.initial_sync.is_set()
        remotes.queue.put_nowait(ClusterAdded(ClusterSpec("slow", {"token": "1"}, "remote")))
        remotes.queue.put_nowait(None)
        await asyncio.wait_for(clusters.initial_sync.wait(), 5)
        (slow,) = [s for s in clusters.status() if s["cluster"] == "slow"]
        assert slow["sync_timed_out"] and not slow["synced"] and not slow["stale"]
    finally:
        await clusters.aclose()


async def test_remote_secrets_that_never_load_do_not_hold_readiness() -> None:
    remotes = FakeRemotes()
    clusters, _ = await make(remotes, remote_sync_timeout=0.2, progress_interval=60)
    try:
        source_of("main").queue.put_nowait(ConfigChange((), synced=True))
        # Well before the next progress line: the secrets' own timeout ends the wait.
        await asyncio.wait_for(clusters.initial_sync.wait(), 5)
        assert not remotes.synced.is_set()
    finally:
        await clusters.aclose()
