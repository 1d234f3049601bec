"""Remote clusters from `istio/multiCluster=true` Secrets, or from a folder of kubeconfigs.

Usage::

    remotes = RemoteSecrets(ClusterSpec("Kubernetes", kubeconfig), namespace="istio-system")
    # or RemoteSecrets(folder="remotes/")
    async for event in remotes.changes():
        match event:
            case ClusterAdded(spec) | ClusterUpdated(spec): ...   # (re)start its ClusterSource
            case ClusterRemoved(cluster_id): ...                  # stop it
    await remotes.aclose()

Secrets (as istiod's `istio-remote-secret-<name>`): every Secret labelled
`istio/multiCluster=true` in `namespace` of `cluster` (list+watch with a label
selector, so reconnects, 410s and relists behave as in `ClusterSource`). Each
data key is a cluster id and its (base64) value a kubeconfig, which becomes
`ClusterSpec(cluster_id, kubeconfig, "remote", namespaces)`.

Folder (runs outside Kubernetes, or a mounted Secret): every regular file in
`folder` whose name does not start with "." is a kubeconfig; the file name
without its last suffix is the cluster id (`east.yaml` -> `east`, `west` ->
`west`). The folder is polled every `poll_interval` seconds (stat, then read
only files whose stat changed; in a worker thread).

Events: `ClusterAdded(spec)` for a new cluster id, `ClusterUpdated(spec)` when
its kubeconfig content changed (a rotated token), `ClusterRemoved(cluster_id)`
when its key, Secret or file is gone. In one batch removals come first, then
additions and updates, each sorted by cluster id. `synced` is set once the
initial clusters have all been yielded.

Problems are reported (logged as warnings and kept in `problems()`): a value that
is not base64, not YAML or not a usable kubeconfig; a cluster id defined twice
(the first Secret by name, or file by name, wins); the local cluster's own id.
Such an entry is skipped: a new cluster is not added and a running cluster keeps
its last good kubeconfig; the other clusters are unaffected. Messages name the
cluster id, the Secret or file and the reason, never the content.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient

from xdsd.model.parse import in_revision
from xdsd.sources.kube.client import CORE_TYPES, KubeResourceApi, kubeconfig_problem, new_api_client
from xdsd.sources.kube.cluster import (
    MULTICLUSTER_LABEL,
    ClusterSpec,
    ClusterState,
    ClusterStatus,
    SyncedEvent,
)
from xdsd.sources.kube.watch import DEFAULT_BACKOFF, Backoff, Sleep, describe_error, list_watch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterAdded:
    spec: ClusterSpec


@dataclass(frozen=True)
class ClusterUpdated:
    spec: ClusterSpec


@dataclass(frozen=True)
class ClusterRemoved:
    cluster_id: str


RemoteEvent = ClusterAdded | ClusterUpdated | ClusterRemoved


@dataclass(frozen=True)
class RemoteProblem:
    cluster_id: str
    source: str  # "secret NS/NAME" or the file path
    reason: str  # never the kubeconfig content


def parse_kubeconfig(data: bytes | str) -> tuple[Mapping[str, Any] | None, str | None]:
    """(kubeconfig, None) or (None, why it is unusable); the reason never quotes content."""
    try:
        doc = yaml.safe_load(data)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, f"not valid YAML{where}: {e.problem or e.context or 'syntax error'}"
    except (yaml.YAMLError, ValueError, TypeError, RecursionError, OverflowError):
        return None, "not valid YAML"
    problem = kubeconfig_problem(doc)
    if problem is not None:
        return None, f"not a usable kubeconfig: {problem}"
    assert isinstance(doc, Mapping)
    return doc, None


def _decode_secret_value(value: object) -> tuple[Mapping[str, Any] | None, str | None]:
    if not isinstance(value, str):
        return None, "the value is not a string"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, "the value is not valid base64"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the value is not UTF-8 text"
    return parse_kubeconfig(text)


@dataclass(frozen=True)
class _FileSig:
    signature: tuple[int, int, int, int]
    entries: Mapping[str, bytes]


def _scan_folder(root: Path, previous: Mapping[str, _FileSig]) -> tuple[dict[str, _FileSig], bool]:
    """Stat (and read when changed) every kubeconfig file; blocking (worker thread)."""
    states: dict[str, _FileSig] = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return states, False
    for name in names:
        if name.startswith("."):
            continue
        path = root / name
        try:
            st = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        source = path.as_posix()
        signature = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        old = previous.get(source)
        if old is not None and old.signature == signature:
            states[source] = old
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # gone since listing, or unreadable: treat as absent
        cluster_id = name.rsplit(".", 1)[0] if "." in name else name
        states[source] = _FileSig(signature, {cluster_id: data})
    return states, True


class RemoteSecrets:
    def __init__(
        self,
        cluster: ClusterSpec | None = None,
        *,
        namespace: str = "istio-system",
        folder: str | os.PathLike[str] | None = None,
        local_cluster_id: str | None = None,
        namespaces: frozenset[str] | None = None,
        poll_interval: float = 1.0,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        api_client_factory: Callable[[ClusterSpec], Any] | None = None,
        revision: str | None = None,
    ) -> None:
        """Watch Secrets in `namespace` of `cluster`, or poll `folder` (exactly one).

        `revision`: Secrets labelled `istio.io/rev` for another revision are another
        control plane's remote clusters, not ours.
        `local_cluster_id`: the config cluster's id, refused as a remote.
        `namespaces`: the namespace filter given to every remote ClusterSpec.
        """
        if (cluster is None) == (folder is None):
            raise ValueError("give either a cluster to read Secrets from or a folder")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.cluster = cluster
        self.namespace = namespace
        self.folder = Path(folder) if folder is not None else None
        self.local_cluster_id = local_cluster_id
        self.namespaces = namespaces
        self.poll_interval = poll_interval
        self.synced = SyncedEvent()
        self._sleep = sleep
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._clock = clock
        self._factory = api_client_factory
        self._revision = revision
        self._api: ApiClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._wake = asyncio.Event()
        self._loaded = False  # the first list / scan is in
        self._failing = False
        self._last_error: str | None = None
        self._last_sync: float | None = None
        # source ("secret NS/NAME" or file path) -> {cluster id: raw value}
        self._entries: dict[str, Mapping[str, object]] = {}
        self._current: dict[str, ClusterSpec] = {}
        self._problems: tuple[RemoteProblem, ...] = ()
        self._folder_states: dict[str, _FileSig] = {}
        self._folder_missing_logged = False

    # -- public ---------------------------------------------------------------------------

    def clusters(self) -> Mapping[str, ClusterSpec]:
        """The remote clusters delivered so far, by id."""
        return dict(self._current)

    def problems(self) -> tuple[RemoteProblem, ...]:
        return self._problems

    def status(self) -> ClusterStatus:
        """The state of the Secret watch (folder mode: of the folder)."""
        state: ClusterState
        if self._failing:
            state = "unreachable"
        elif not self._loaded:
            state = "connecting"
        else:
            state = "synced"
        if self.cluster is not None:
            cluster_id, server = self.cluster.cluster_id, self.cluster.server
        else:
            cluster_id, server = "", str(self.folder)
        return ClusterStatus(
            cluster_id=cluster_id,
            state=state,
            last_error=self._last_error,
            last_sync=self._last_sync,
            objects=len(self._entries),
            role=self.cluster.role if self.cluster is not None else "config",
            server=server,
        )

    async def changes(self) -> AsyncGenerator[RemoteEvent, None]:
        """The initial clusters, then every change (until `aclose()`)."""
        if self._started:
            raise RuntimeError("changes() can be iterated once")
        self._started = True
        if self._closed:
            return
        if self.folder is not None:
            self._spawn(self._poll_folder(), "folder")
        else:
            self._spawn(self._watch_secrets(), "secrets")
        try:
            while not self._loaded:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake.clear()
            if self._closed:
                return
            for event in self._diff():
                yield event
            self.synced.set()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._closed:
                    return
                for event in self._diff():
                    yield event
        finally:
            await self._cancel_tasks()

    async def aclose(self) -> None:
        """Stop watching and close the API client; `changes()` ends. Idempotent."""
        self._closed = True
        self._wake.set()
        await self._cancel_tasks()
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    # -- desired state --------------------------------------------------------------------

    def _diff(self) -> list[RemoteEvent]:
        desired: dict[str, ClusterSpec] = {}
        owner: dict[str, str] = {}
        problems: list[RemoteProblem] = []
        for source in sorted(self._entries):
            for cluster_id, value in sorted(self._entries[source].items()):
                if cluster_id == self.local_cluster_id:
                    problems.append(
                        RemoteProblem(cluster_id, source, "the local cluster's own id; ignored")
                    )
                    continue
                if cluster_id in owner:
                    problems.append(
                        RemoteProblem(
                            cluster_id, source, f"also defined by {owner[cluster_id]}; ignored"
                        )
                    )
                    continue
                if isinstance(value, bytes):
                    kubeconfig, reason = parse_kubeconfig(value)
                else:
                    kubeconfig, reason = _decode_secret_value(value)
                owner[cluster_id] = source
                if kubeconfig is None:
                    kept = self._current.get(cluster_id)
                    note = "; still using the last good kubeconfig" if kept else "; skipped"
                    problems.append(RemoteProblem(cluster_id, source, f"{reason}{note}"))
                    if kept is not None:
                        desired[cluster_id] = kept
                    continue
                desired[cluster_id] = ClusterSpec(
                    cluster_id, kubeconfig, "remote", self.namespaces, self._revision
                )
        self._report(problems)
        events: list[RemoteEvent] = []
        for cluster_id in sorted(self._current.keys() - desired.keys()):
            events.append(ClusterRemoved(cluster_id))
        for cluster_id in sorted(desired):
            old = self._current.get(cluster_id)
            if old is None:
                events.append(ClusterAdded(desired[cluster_id]))
            elif old != desired[cluster_id]:
                events.append(ClusterUpdated(desired[cluster_id]))
        self._current = desired
        for event in events:
            if isinstance(event, ClusterRemoved):
                log.info("remote cluster %s removed", event.cluster_id)
            else:
                verb = "added" if isinstance(event, ClusterAdded) else "updated"
                log.info(
                    "remote cluster %s %s (%s)", event.spec.cluster_id, verb, event.spec.server
                )
        return events

    def _report(self, problems: list[RemoteProblem]) -> None:
        new = tuple(problems)
        for p in new:
            if p not in self._problems:
                log.warning("remote cluster %s (%s): %s", p.cluster_id, p.source, p.reason)
        self._problems = new

    # -- tasks ----------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"xdsd-remotes {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                self._tasks.discard(task)

    def _error(self, message: str) -> None:
        if not self._failing:
            log.warning("remote secrets: %s", message)
        self._failing = True
        self._last_error = message
        self._wake.set()

    async def _poll_folder(self) -> None:
        assert self.folder is not None
        while True:
            states, exists = await asyncio.to_thread(
                _scan_folder, self.folder, dict(self._folder_states)
            )
            if not exists and not self._folder_missing_logged:
                log.warning("remote kubeconfig folder %s does not exist (yet)", self.folder)
                self._folder_missing_logged = True
            changed = states != self._folder_states or not self._loaded
            self._folder_states = states
            self._entries = {source: st.entries for source, st in states.items()}
            self._loaded = True
            self._last_sync = self._clock()
            if changed:
                self._wake.set()
            await self._sleep(self.poll_interval)

    async def _watch_secrets(self) -> None:
        assert self.cluster is not None
        attempt = 0
        while self._api is None:
            try:
                if self._factory is not None:
                    api = await self._factory(self.cluster)
                else:
                    api = await new_api_client(self.cluster.kubeconfig)
            except Exception as e:
                attempt += 1
                self._error(f"client: {describe_error(e)}")
                await self._sleep(self._backoff.delay(attempt))
                continue
            if self._closed:
                await api.close()
                return
            self._api = api
        resource = KubeResourceApi(
            self._api,
            CORE_TYPES["Secret"],
            namespace=self.namespace,
            label_selector=f"{MULTICLUSTER_LABEL}=true",
            watch_timeout=self._watch_timeout,
            request_timeout=self._request_timeout,
        )
        async for ev in list_watch(
            resource, kind="Secret", sleep=self._sleep, backoff=self._backoff
        ):
            if ev.type in ("ADDED", "MODIFIED", "DELETED"):
                source = f"secret {ev.namespace}/{ev.name}"
                data = ev.object.get("data") if ev.object is not None else None
                meta = ev.object.get("metadata") if ev.object is not None else None
                labels = meta.get("labels") if isinstance(meta, Mapping) else None
                if not in_revision(labels if isinstance(labels, Mapping) else {}, self._revision):
                    data = None  # another revision's cluster: as if deleted for us
                if ev.type == "DELETED" or (data is None and ev.object is not None):
                    self._entries.pop(source, None)
                else:
                    self._entries[source] = dict(data) if isinstance(data, Mapping) else {}
                self._last_sync = self._clock()
            elif ev.type == "ERROR":
                self._error(ev.error)
                continue
            elif ev.type in ("SYNCED", "RESUMED"):
                if self._failing:
                    log.info("remote secrets: watching again")
                self._failing = False
                self._loaded = True
                self._last_sync = self._clock()
            self._wake.set()
