"""The Kubernetes clusters xdsd reads: the config cluster and the remote clusters.

`Clusters` owns one `ConfigStore` and one `ClusterSource` per cluster. The
config cluster's store holds the Istio config and its own Kubernetes objects;
each remote cluster's store holds its Services, EndpointSlices, Pods and Nodes.
Remote clusters come and go at runtime from `RemoteSecrets` events: a new
secret starts that cluster's source, a rotated one restarts it (its store, and
so its endpoints, stay until the new connection has listed everything), a
deleted one stops it and drops its store. Closing a source cancels its watch
tasks and closes its API client, so nothing leaks.

- `on_change(cluster_id, kinds)` is called when a store's served objects
  changed (kinds: of the objects that changed); `on_errors()` when only the
  reported problems did.
- `initial_sync` is set once the config cluster has synced and every remote
  cluster known by then has synced or has had `remote_sync_timeout` seconds
  to do so (a slow cluster does not hold readiness). While it waits, a
  progress line is logged every `progress_interval` seconds.
- A cluster that has synced but is not connected now (API server unreachable,
  or reconnecting after a kubeconfig rotation) is *stale*: its last known
  objects stay served. `stale()`, `status()` and the `ClusterMetrics`
  collector report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xdsd.model.jwks import is_fetched_source
from xdsd.model.store import ConfigChange, ConfigStore, FileContent

if TYPE_CHECKING:  # kubernetes_asyncio is imported only when clusters are used
    from xdsd.sources.kube.cluster import ClusterSpec, ClusterStatus
    from xdsd.sources.kube.remote import RemoteEvent, RemoteProblem

log = logging.getLogger(__name__)


class Source(Protocol):
    """What `Clusters` needs of a `ClusterSource` (tests pass fakes)."""

    @property
    def synced(self) -> asyncio.Event: ...

    def changes(self) -> AsyncIterator[ConfigChange]: ...

    def status(self) -> ClusterStatus: ...

    async def aclose(self) -> None: ...


SourceFactory = Callable[["ClusterSpec"], Source]


class RemoteSource(Protocol):
    """What `Clusters` needs of `RemoteSecrets`."""

    @property
    def synced(self) -> asyncio.Event: ...

    def changes(self) -> AsyncIterator[RemoteEvent]: ...

    def status(self) -> ClusterStatus: ...

    def problems(self) -> tuple[RemoteProblem, ...]: ...

    async def aclose(self) -> None: ...


@dataclass(eq=False)
class _Member:
    spec: ClusterSpec
    store: ConfigStore
    source: Source
    started: float = 0.0  # loop time the current source was started
    first_sync: asyncio.Event = field(default_factory=asyncio.Event)
    timed_out: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def cluster_id(self) -> str:
        return self.spec.cluster_id


class Clusters:
    def __init__(
        self,
        config: ClusterSpec,
        *,
        source_factory: SourceFactory,
        on_change: Callable[[str, frozenset[str]], None],
        on_errors: Callable[[], None] = lambda: None,
        remotes: RemoteSource | None = None,
        remote_sync_timeout: float = 30.0,
        progress_interval: float = 5.0,
        restart_delay: float = 1.0,
    ) -> None:
        self._factory = source_factory
        self._on_change = on_change
        self._on_errors = on_errors
        self._remotes = remotes
        self._remote_sync_timeout = remote_sync_timeout
        self._progress_interval = progress_interval
        self._restart_delay = restart_delay
        self.config_cluster_id = config.cluster_id
        self.config_store = ConfigStore()
        self._members: dict[str, _Member] = {}
        self._config = self._member(config, self.config_store)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.initial_sync = asyncio.Event()
        # Called after a remote cluster was added, updated or removed (see `specs()`).
        self.members_listeners: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._start(self._config)
        if self._remotes is not None:
            self._tasks.append(asyncio.create_task(self._follow_remotes(), name="remote-secrets"))
            self._tasks.append(
                asyncio.create_task(self._note_remotes_synced(), name="remotes-synced")
            )
        self._tasks.append(asyncio.create_task(self._wait_initial_sync(), name="initial-sync"))

    async def aclose(self) -> None:
        """Stop every cluster's source and task. Idempotent."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in list(self._members.values()):
            await self._stop(member)
        self._members.clear()
        if self._remotes is not None:
            with contextlib.suppress(Exception):
                await self._remotes.aclose()

    # -- queries --------------------------------------------------------------------------

    def remote_stores(self) -> dict[str, ConfigStore]:
        """The stores of the remote clusters, by cluster id."""
        return {cid: m.store for cid, m in sorted(self._members.items()) if m is not self._config}

    def stores(self) -> list[ConfigStore]:
        """Every store: the config cluster's first, then remotes by cluster id."""
        return [self.config_store, *self.remote_stores().values()]

    def config_source(self) -> Source:
        """The config cluster's current source (replaced when it fails)."""
        return self._config.source

    def spec(self, cluster_id: str) -> ClusterSpec | None:
        """The spec (kubeconfig) of a cluster now connected, by id."""
        member = self._members.get(cluster_id)
        return member.spec if member is not None else None

    def specs(self) -> list[ClusterSpec]:
        """The specs of every cluster now followed, config cluster first."""
        return [self._members[cid].spec for cid in self.cluster_ids()]

    def cluster_ids(self) -> list[str]:
        return [self.config_cluster_id, *self.remote_stores()]

    def stale(self) -> frozenset[str]:
        """Clusters whose last known objects are served while they are not connected."""
        return frozenset(cid for cid, m in self._members.items() if self._is_stale(m))

    def status(self) -> list[dict[str, Any]]:
        """One entry per cluster (config cluster first) for /debug/clusterz."""
        out = []
        for cid in self.cluster_ids():
            m = self._members[cid]
            st = m.source.status()
            out.append(
                {
                    "cluster": cid,
                    "role": m.spec.role,
                    "server": st.server,
                    "state": st.state,
                    "synced": m.first_sync.is_set(),
                    "stale": self._is_stale(m),
                    "sync_timed_out": m.timed_out,
                    "objects": len(m.store),
                    "last_sync": st.last_sync,
                    "last_error": st.last_error,
                    "namespaces": None if m.spec.namespaces is None else sorted(m.spec.namespaces),
                    # e.g. Istio kinds the API server does not serve
                    "notes": list(getattr(m.source, "notes", ())),
                }
            )
        return out

    def remotes_status(self) -> dict[str, Any] | None:
        """Where remote clusters come from, its state and problems (None: no remotes)."""
        if self._remotes is None:
            return None
        st = self._remotes.status()
        return {
            "source": st.server,
            "state": st.state,
            "synced": self._remotes.synced.is_set(),
            "last_error": st.last_error,
            "problems": [
                {"cluster": p.cluster_id, "source": p.source, "reason": p.reason}
                for p in self._remotes.problems()
            ],
        }

    def _is_stale(self, m: _Member) -> bool:
        return m.first_sync.is_set() and m.source.status().state != "synced"

    # -- members --------------------------------------------------------------------------

    def _member(self, spec: ClusterSpec, store: ConfigStore) -> _Member:
        member = _Member(spec, store, self._factory(spec))
        self._members[spec.cluster_id] = member
        return member

    def _start(self, m: _Member) -> None:
        m.started = _now()
        m.task = asyncio.create_task(self._consume(m), name=f"cluster[{m.cluster_id}]")

    async def _stop(self, m: _Member) -> None:
        task, m.task = m.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await m.source.aclose()

    async def _consume(self, m: _Member) -> None:
        """Feed one cluster's changes into its store; a failing source is replaced."""
        while True:
            try:
                async for change in m.source.changes():
                    self._apply(m, change)
                raise RuntimeError("the cluster source ended")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "cluster %s: source failed; serving its last state, restarting", m.cluster_id
                )
                with contextlib.suppress(Exception):
                    await m.source.aclose()
                await asyncio.sleep(self._restart_delay)
                m.source = self._factory(m.spec)

    def _apply(self, m: _Member, change: ConfigChange) -> None:
        if change.synced:
            # A full state (first sync, or a new connection after a restart or a
            # rotation): whatever the store has that the full state lacks is gone.
            change = _as_resync(m.store, change)
            if not m.first_sync.is_set():
                m.first_sync.set()
                if m.timed_out:
                    log.info("cluster %s synced after its sync timeout", m.cluster_id)
        changed = m.store.apply(change)
        if changed:
            self._on_change(m.cluster_id, frozenset(k[0] for k in changed))
        elif change.files:
            self._on_errors()
        self._wake.set()

    async def _note_remotes_synced(self) -> None:
        assert self._remotes is not None
        await self._remotes.synced.wait()
        self._wake.set()

    async def _follow_remotes(self) -> None:
        from xdsd.sources.kube.remote import ClusterRemoved

        assert self._remotes is not None
        try:
            async for event in self._remotes.changes():
                if isinstance(event, ClusterRemoved):
                    await self._remove(event.cluster_id)
                else:
                    await self._add_or_update(event.spec)
                self._wake.set()
                for listener in self.members_listeners:
                    listener()
        except asyncio.CancelledError:
            raise
        except Exception:
            # RemoteSecrets retries by itself; this is a bug. The clusters running
            # now keep running, but no further remote secret change is followed.
            log.exception("remote secrets failed: remote clusters are no longer followed")

    async def _add_or_update(self, spec: ClusterSpec) -> None:
        cid = spec.cluster_id
        if cid == self.config_cluster_id:
            log.warning("remote secret for cluster %s: that is the config cluster; ignored", cid)
            return
        old = self._members.get(cid)
        if old is None:
            log.info("cluster %s added (%s)", cid, spec.server)
            self._start(self._member(spec, ConfigStore()))
            return
        if old.spec == spec and old.spec.kubeconfig == spec.kubeconfig:
            return
        # Rotated credentials: reconnect; the store (its endpoints) stays until the
        # new connection's full state replaces it.
        log.info("cluster %s updated (%s): reconnecting", cid, spec.server)
        await self._stop(old)
        member = _Member(spec, old.store, self._factory(spec), first_sync=old.first_sync)
        self._members[cid] = member
        self._start(member)

    async def _remove(self, cluster_id: str) -> None:
        m = self._members.get(cluster_id)
        if m is None or m is self._config:
            return
        log.info("cluster %s removed", cluster_id)
        del self._members[cluster_id]
        await self._stop(m)
        kinds = frozenset(o.ref.kind for o in m.store.objects())
        if kinds:
            self._on_change(cluster_id, kinds)

    # -- initial sync ---------------------------------------------------------------------

    async def _wait_initial_sync(self) -> None:
        began = _now()
        next_log = began + self._progress_interval
        while not self._closed:
            waiting = self._waiting_for()
            if waiting is None:
                break
            now = _now()
            if now >= next_log:
                self._log_progress(waiting, now - began)
                next_log = now + self._progress_interval
            deadlines = [next_log, *(m.started + self._remote_sync_timeout for m in waiting)]
            if self._remotes is not None and not self._remotes.synced.is_set():
                deadlines.append(self._config.started + self._remote_sync_timeout)
            deadline = min(deadlines)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - _now()))
        total = len(self._members)
        synced = sum(1 for m in self._members.values() if m.first_sync.is_set())
        log.info("initial sync done: %d/%d clusters synced", synced, total)
        self.initial_sync.set()

    def _waiting_for(self) -> list[_Member] | None:
        """The clusters the initial sync still waits for (None: done)."""
        now = _now()
        pending = []
        for m in self._members.values():
            if m.first_sync.is_set() or m.timed_out:
                continue
            if m is not self._config and now >= m.started + self._remote_sync_timeout:
                m.timed_out = True
                log.warning(
                    "cluster %s has not synced within %.0fs (%s); serving without it for now",
                    m.cluster_id,
                    self._remote_sync_timeout,
                    m.source.status().last_error or m.source.status().state,
                )
                continue
            pending.append(m)
        if (
            self._remotes is not None
            and not self._remotes.synced.is_set()
            and now < self._config.started + self._remote_sync_timeout
        ):
            return pending  # the remote secrets are not all read yet
        return pending or None

    def _log_progress(self, waiting: Iterable[_Member], elapsed: float) -> None:
        total = len(self._members)
        synced = sum(1 for m in self._members.values() if m.first_sync.is_set())
        names = ", ".join(
            f"{m.cluster_id} ({m.source.status().last_error or m.source.status().state})"
            for m in waiting
        )
        log.info(
            "initial sync: synced %d/%d clusters after %.0fs; waiting for %s",
            synced,
            total,
            elapsed,
            names or "the remote secrets",
        )


def _now() -> float:
    return asyncio.get_running_loop().time()


def _as_resync(store: ConfigStore, change: ConfigChange) -> ConfigChange:
    present = {c.source for c in change.files}
    # Fetched key sets (`jwks:` sources) are the app's, not the cluster's.
    gone = tuple(
        FileContent(s, None)
        for s in store.sources()
        if s not in present and not is_fetched_source(s)
    )
    if not gone:
        return change
    return ConfigChange(change.files + gone, change.kinds, synced=True)


class ClusterMetrics(Collector):
    """xdsd_cluster_synced / xdsd_cluster_stale / xdsd_cluster_objects{cluster}, read live."""

    def __init__(self, clusters: Clusters) -> None:
        self._clusters = clusters

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        synced = GaugeMetricFamily(
            "xdsd_cluster_synced",
            "1 when the cluster's watches are connected and have listed everything.",
            labels=["cluster"],
        )
        stale = GaugeMetricFamily(
            "xdsd_cluster_stale",
            "1 when the cluster's last known objects are served while it is not connected.",
            labels=["cluster"],
        )
        objects = GaugeMetricFamily(
            "xdsd_cluster_objects", "Objects held for the cluster.", labels=["cluster"]
        )
        for st in self._clusters.status():
            cid = st["cluster"]
            synced.add_metric([cid], 1.0 if st["state"] == "synced" else 0.0)
            stale.add_metric([cid], 1.0 if st["stale"] else 0.0)
            objects.add_metric([cid], float(st["objects"]))
        return [synced, stale, objects]
