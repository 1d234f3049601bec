"""One Kubernetes cluster as a config source: list+watch of every kind xdsd reads.

Usage::

    source = ClusterSource(ClusterSpec("Kubernetes", kubeconfig, "config"))
    async for change in source.changes():   # ConfigChange batches
        store.apply(change)
    ...
    await source.aclose()

- Each watched object is a "file" of one document named
  `f"{cluster_id}:{kind}/{namespace}/{name}"` (namespace "" for Nodes and
  Namespaces), parsed with `parse_documents(..., cluster_id=...)`; a deleted
  object is `FileContent(source, None)`.
- `changes()` starts the watches, yields one full-state ConfigChange
  (`synced=True`) once every collection has been listed, then one ConfigChange
  per batch of events that arrived together (an object changed twice in a
  batch is delivered once, in its last state; one added and deleted within a
  batch not at all). Nothing is yielded when nothing really changed (see
  `watch.list_watch`: relists are diffs, resourceVersion-only updates are
  dropped). It keeps running through disconnects and ends only after `aclose()`.
- Kinds: `CONFIG_KINDS` for role "config" (the Istio kinds of networking.istio.io
  and security.istio.io, each in the first version the server serves among v1,
  v1beta1, v1alpha3, plus Service, EndpointSlice, Pod, Namespace, Secret,
  Node, and the ConfigMaps named in `CONFIGMAP_NAMES`: MeshConfig `istio` and the
  injector's `istio-sidecar-injector`, one watch per name by field selector, so no
  other ConfigMap is read); `REMOTE_KINDS` for role "remote" (Service, EndpointSlice,
  Pod, Node, Namespace).
- `spec.namespaces`: None watches every namespace; a set watches only those
  (one watch per namespaced kind and namespace; Namespaces filtered by name;
  Nodes are always all).
- Secrets: only types Opaque and kubernetes.io/tls (gateway credentials), and
  not the `istio/multiCluster` kubeconfig secrets. Secret data is never logged.
- `status()` -> ClusterStatus: "connecting" until the first full sync,
  "synced", or "unreachable" while any watch is failing (with `last_error`);
  `last_sync` is the wall-clock time the cluster was last known to be in sync
  (a list, a watch (re)opened, an event or a bookmark).
- `aclose()` cancels every task and closes the ApiClient (its connections).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes_asyncio.client import ApiClient

from xdsd.model.parse import DEFAULT_DOMAIN_SUFFIX, parse_documents
from xdsd.sources.events import ConfigChange, FileContent
from xdsd.sources.kube.client import (
    CORE_TYPES,
    ISTIO_GROUP_OF,
    ISTIO_KINDS,
    KubeResourceApi,
    ResourceType,
    discover_istio_types,
    new_api_client,
    server_of,
)
from xdsd.sources.kube.watch import DEFAULT_BACKOFF, Backoff, Sleep, describe_error, list_watch

log = logging.getLogger(__name__)

ClusterRole = Literal["config", "remote"]
ClusterState = Literal["connecting", "synced", "unreachable"]

MULTICLUSTER_LABEL = "istio/multiCluster"
ISTIO_CONFIG_KINDS: tuple[str, ...] = tuple(k for kinds in ISTIO_KINDS.values() for k in kinds)
CONFIG_KINDS: tuple[str, ...] = (
    *ISTIO_CONFIG_KINDS,
    "Service",
    "EndpointSlice",
    "Pod",
    "Namespace",
    "Secret",
    "Node",
    "ConfigMap",
)
# The only ConfigMaps read (by name, in every watched namespace): MeshConfig, the injector's.
CONFIGMAP_NAMES: tuple[str, ...] = ("istio", "istio-sidecar-injector")
# Namespaces too: their labels decide what MeshConfig discoverySelectors select there.
REMOTE_KINDS: tuple[str, ...] = ("Service", "EndpointSlice", "Pod", "Node", "Namespace")
KNOWN_KINDS = frozenset(CORE_TYPES) | frozenset(ISTIO_GROUP_OF)

# Batches at least this large are parsed in a worker thread.
_THREAD_PARSE_MIN = 64


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster to watch. `kubeconfig` None means in-cluster credentials.

    The kubeconfig holds credentials: it is left out of repr (and of hashing).
    """

    cluster_id: str
    kubeconfig: Mapping[str, Any] | None = field(default=None, repr=False, hash=False)
    role: ClusterRole = "config"
    namespaces: frozenset[str] | None = None
    # This control plane's revision: other revisions' Istio config is not read.
    revision: str | None = None

    @property
    def server(self) -> str:
        """The API server URL (no credentials)."""
        return server_of(self.kubeconfig)


@dataclass(frozen=True)
class ClusterStatus:
    cluster_id: str
    state: ClusterState
    last_error: str | None = None
    last_sync: float | None = None  # time.time() when last known in sync
    objects: int = 0
    role: ClusterRole = "config"
    server: str = ""


class SyncedEvent(asyncio.Event):
    """An asyncio.Event that is also truthy once set."""

    def __bool__(self) -> bool:
        return self.is_set()


def source_name(cluster_id: str, kind: str, namespace: str, name: str) -> str:
    return f"{cluster_id}:{kind}/{namespace}/{name}"


# -- per-kind object handling ------------------------------------------------------------

_SECRET_TYPES = frozenset({"", "Opaque", "kubernetes.io/tls"})


def _keep_secret(obj: Mapping[str, Any]) -> bool:
    secret_type = obj.get("type") or ""
    if secret_type not in _SECRET_TYPES:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return not (isinstance(labels, Mapping) and MULTICLUSTER_LABEL in labels)


def _normalize_node(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what the model reads: heartbeats and conditions must not cause changes."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("annotations", None)
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind")}
    out["metadata"] = meta
    status = obj.get("status")
    if isinstance(status, Mapping) and "addresses" in status:
        out["status"] = {"addresses": status["addresses"]}
    return out


_POD_STATUS_DROPPED = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


def _normalize_pod(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    if isinstance(status, Mapping) and any(k in status for k in _POD_STATUS_DROPPED):
        obj = dict(obj)
        obj["status"] = {k: v for k, v in status.items() if k not in _POD_STATUS_DROPPED}
    return obj


_KEEP: dict[str, Callable[[Mapping[str, Any]], bool]] = {"Secret": _keep_secret}
_NORMALIZE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "Node": _normalize_node,
    "Pod": _normalize_pod,
}


# -- the source ----------------------------------------------------------------------------


@dataclass
class _Watch:
    rtype: ResourceType
    namespace: str | None  # None: all namespaces (or a cluster-scoped kind)
    synced: bool = False
    failing: bool = False
    field_selector: str | None = None

    @property
    def label(self) -> str:
        ns = f" in {self.namespace}" if self.namespace else ""
        sel = f" ({self.field_selector})" if self.field_selector else ""
        return f"{self.rtype.kind} ({self.rtype.api_version}){ns}{sel}"


class ClusterSource:
    def __init__(
        self,
        spec: ClusterSpec,
        *,
        kinds: Iterable[str] | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff = DEFAULT_BACKOFF,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        batch_window: float = 0.0,
        clock: Callable[[], float] = time.time,
        api_client_factory: Callable[[ClusterSpec], Any] | None = None,
        rediscover_interval: float = 30.0,
    ) -> None:
        """`kinds` defaults to CONFIG_KINDS or REMOTE_KINDS by `spec.role`.

        Istio kinds the API server does not serve yet are looked for again every
        `rediscover_interval` seconds (through `sleep`): CRDs installed after start
        are watched from then on, without a restart.

        `batch_window` (seconds, through `sleep`) waits after the first event of
        a batch for more to arrive. `api_client_factory(spec)` is awaited to
        make the ApiClient (default: `new_api_client(spec.kubeconfig)`).
        """
        self.spec = spec
        chosen = tuple(kinds) if kinds is not None else _default_kinds(spec.role)
        unknown = sorted(set(chosen) - KNOWN_KINDS)
        if unknown:
            raise ValueError(f"unknown kinds: {', '.join(unknown)}")
        self.kinds = tuple(dict.fromkeys(chosen))
        self.synced = SyncedEvent()
        self._sleep = sleep
        self._backoff = backoff
        self._domain_suffix = domain_suffix
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._batch_window = batch_window
        self._clock = clock
        self._factory = api_client_factory
        self._rediscover_interval = rediscover_interval
        self._api: ApiClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._setup_done = False  # client made, kinds discovered, watches started
        self._setup_error: str | None = None
        self._watches: list[_Watch] = []
        self._last_error: str | None = None
        self._last_sync: float | None = None
        self._pending: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
        self._delivered: dict[str, Mapping[str, Any]] = {}
        self._wake = asyncio.Event()
        self.notes: tuple[str, ...] = ()  # kinds not served, etc.

    # -- public ---------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        failing = self._setup_error is not None or any(w.failing for w in self._watches)
        state: ClusterState
        if failing:
            state = "unreachable"
        elif not self.synced.is_set():
            state = "connecting"
        else:
            state = "synced"
        return ClusterStatus(
            cluster_id=self.spec.cluster_id,
            state=state,
            last_error=self._last_error,
            last_sync=self._last_sync,
            objects=len(self._delivered),
            role=self.spec.role,
            server=self.spec.server,
        )

    @property
    def api_client(self) -> ApiClient | None:
        """The API client (None until made, or after `aclose()`); for the status writer."""
        return self._api

    def istio_objects(self) -> list[tuple[ResourceType, Mapping[str, Any]]]:
        """The Istio config objects last delivered (raw API dicts), with their types."""
        types = {w.rtype.kind: w.rtype for w in self._watches if w.rtype.kind in ISTIO_GROUP_OF}
        out: list[tuple[ResourceType, Mapping[str, Any]]] = []
        for obj in self._delivered.values():
            rtype = types.get(str(obj.get("kind")))
            if rtype is not None:
                out.append((rtype, obj))
        return out

    async def changes(self) -> AsyncGenerator[ConfigChange, None]:
        """The full state once synced, then batched increments (forever)."""
        if self._started:
            raise RuntimeError("changes() can be iterated once")
        self._started = True
        if self._closed:
            return
        self._spawn(self._setup(), "setup")
        try:
            while not self._all_synced():
                if self._closed:
                    return
                await self._wake.wait()
                self._wake.clear()
            if self._closed:
                return
            first = await self._flush(initial=True)
            self.synced.set()
            log.info("cluster %s synced: %d objects", self.spec.cluster_id, len(self._delivered))
            yield first
            while True:
                await self._wake.wait()
                if self._batch_window > 0 and not self._closed:
                    await self._sleep(self._batch_window)
                self._wake.clear()
                if self._closed:
                    return
                change = await self._flush(initial=False)
                if change.files:
                    yield change
        finally:
            await self._cancel_tasks()

    async def aclose(self) -> None:
        """Stop every watch and close the API client; `changes()` ends. Idempotent."""
        self._closed = True
        self._wake.set()
        await self._cancel_tasks()
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(
            coro, name=f"xdsd-kube[{self.spec.cluster_id}] {name}"
        )
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

    def _all_synced(self) -> bool:
        return self._setup_done and all(w.synced for w in self._watches)

    def _error(self, where: str, message: str) -> None:
        first = self._last_error is None or not self._failing()
        self._last_error = f"{where}: {message}"
        (log.warning if first else log.debug)(
            "cluster %s (%s): %s", self.spec.cluster_id, self.spec.server, self._last_error
        )

    def _failing(self) -> bool:
        return self._setup_error is not None or any(w.failing for w in self._watches)

    def _mark_sync(self) -> None:
        self._last_sync = self._clock()

    async def _setup(self) -> None:
        """Make the client and discover the Istio kinds (retrying), then start the watches."""
        attempt = 0
        while self._api is None:
            try:
                if self._factory is not None:
                    api = await self._factory(self.spec)
                else:
                    api = await new_api_client(self.spec.kubeconfig)
            except Exception as e:
                attempt += 1
                self._error("client", describe_error(e))
                self._setup_error = self._last_error
                self._wake.set()
                await self._sleep(self._backoff.delay(attempt))
                continue
            if self._closed:  # aclose() ran while the client was being made
                await api.close()
                return
            self._api = api
        istio = [k for k in self.kinds if k in ISTIO_GROUP_OF]
        found: dict[str, ResourceType] = {}
        while istio:
            try:
                found, notes = await discover_istio_types(
                    self._api, istio, timeout=self._request_timeout
                )
            except Exception as e:
                attempt += 1
                self._error("discovery", describe_error(e))
                self._setup_error = self._last_error
                self._wake.set()
                await self._sleep(self._backoff.delay(attempt))
                continue
            self.notes = tuple(notes)
            for note in notes:
                log.warning("cluster %s: %s", self.spec.cluster_id, note)
            break
        self._setup_error = None
        for kind in self.kinds:
            rtype = found.get(kind) if kind in ISTIO_GROUP_OF else CORE_TYPES[kind]
            if rtype is not None:
                self._add_watches(rtype)
        self._setup_done = True
        self._wake.set()
        missing = [k for k in istio if k not in found]
        if missing and self._rediscover_interval > 0:
            self._spawn(self._rediscover(missing), "rediscover")

    def _add_watches(self, rtype: ResourceType) -> None:
        namespaces = sorted(self.spec.namespaces) if self.spec.namespaces is not None else None
        selectors: tuple[str | None, ...] = (None,)
        if rtype.kind == "ConfigMap":
            selectors = tuple(f"metadata.name={n}" for n in CONFIGMAP_NAMES)
        new = [
            _Watch(rtype, ns, field_selector=sel)
            for sel in selectors
            for ns in (namespaces if rtype.namespaced and namespaces is not None else [None])
        ]
        self._watches.extend(new)
        for w in new:
            self._spawn(self._run_watch(w), w.label)

    async def _rediscover(self, missing: list[str]) -> None:
        """Watch Istio kinds whose CRDs appear after start (istiod restarts for them)."""
        assert self._api is not None
        while missing and not self._closed:
            await self._sleep(self._rediscover_interval)
            try:
                found, notes = await discover_istio_types(
                    self._api, missing, timeout=self._request_timeout
                )
            except Exception as e:
                log.debug("cluster %s: rediscovery: %s", self.spec.cluster_id, describe_error(e))
                continue
            for kind, rtype in sorted(found.items()):
                log.info(
                    "cluster %s: %s (%s) is served now: watching it",
                    self.spec.cluster_id,
                    kind,
                    rtype.api_version,
                )
                self._add_watches(rtype)
                missing.remove(kind)
            if found:
                self.notes = tuple(notes)
                self._wake.set()

    async def _run_watch(self, w: _Watch) -> None:
        assert self._api is not None
        kind = w.rtype.kind
        api = KubeResourceApi(
            self._api,
            w.rtype,
            namespace=w.namespace,
            field_selector=w.field_selector,
            watch_timeout=self._watch_timeout,
            request_timeout=self._request_timeout,
        )
        keep = _KEEP.get(kind)
        if kind == "Namespace" and self.spec.namespaces is not None:
            keep = _namespace_filter(self.spec.namespaces)
        cluster = self.spec.cluster_id
        async for ev in list_watch(
            api,
            kind=kind,
            sleep=self._sleep,
            backoff=self._backoff,
            keep=keep,
            normalize=_NORMALIZE.get(kind),
        ):
            if ev.type in ("ADDED", "MODIFIED"):
                self._pending[source_name(cluster, kind, ev.namespace, ev.name)] = (kind, ev.object)
                self._mark_sync()
            elif ev.type == "DELETED":
                self._pending[source_name(cluster, kind, ev.namespace, ev.name)] = (kind, None)
                self._mark_sync()
            elif ev.type == "ERROR":
                self._error(w.label, ev.error)
                w.failing = True
            elif ev.type in ("SYNCED", "RESUMED"):
                if w.failing:
                    log.info("cluster %s: %s %s", cluster, w.label, ev.type.lower())
                w.failing = False
                w.synced = True
                self._mark_sync()
            self._wake.set()

    async def _flush(self, *, initial: bool) -> ConfigChange:
        pending, self._pending = self._pending, {}
        work: list[tuple[str, str, Mapping[str, Any] | None]] = []
        kinds: set[str] = set()
        for source in sorted(pending):
            kind, obj = pending[source]
            prev = self._delivered.get(source)
            if obj is None and prev is None:
                continue
            if obj is not None and prev is not None and obj == prev:
                continue
            work.append((source, kind, obj))
            kinds.add(kind)
            if obj is None:
                del self._delivered[source]
            else:
                self._delivered[source] = obj
        if len(work) >= _THREAD_PARSE_MIN:
            files = await asyncio.to_thread(self._parse_all, work)
        else:
            files = self._parse_all(work)
        return ConfigChange(tuple(files), frozenset(kinds), synced=initial)

    def _parse_all(
        self, work: list[tuple[str, str, Mapping[str, Any] | None]]
    ) -> list[FileContent]:
        out: list[FileContent] = []
        for source, _kind, obj in work:
            if obj is None:
                out.append(FileContent(source, None))
                continue
            result = parse_documents(
                [obj],
                source,
                domain_suffix=self._domain_suffix,
                cluster_id=self.spec.cluster_id,
                revision=self.spec.revision,
            )
            out.append(FileContent(source, result))
        return out


def _default_kinds(role: ClusterRole) -> tuple[str, ...]:
    return CONFIG_KINDS if role == "config" else REMOTE_KINDS


def _namespace_filter(namespaces: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    def keep(obj: Mapping[str, Any]) -> bool:
        return (obj.get("metadata") or {}).get("name") in namespaces

    return keep
