"""Wires the stages: sources -> model -> translate -> cache -> server.

`XdsdApp` is the only object that knows all stages. It owns the current
MeshSnapshot, rebuilds it after a debounced change, resets the group cache and
tells the xDS streams to push. It is also the server's ConfigProvider (proxy
identity, current resources) and the admin server's DebugView.

Config comes from a folder (`config_dir`) or from Kubernetes (`kubeconfig` or
`in_cluster`): then `xdsd.multicluster.Clusters` keeps one store per cluster
(the config cluster, and the remote clusters of `istio/multiCluster` Secrets or
of a folder of kubeconfigs), and each snapshot merges them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from envoy.service.status.v3 import csds_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xdsd.admin.http import AdminServer
from xdsd.admin.xds_debug import DEBUG_TYPE, debug_body
from xdsd.ca.identity import parse_spiffe
from xdsd.cache.dump import dump_messages, dump_resources
from xdsd.cache.groups import Change, GroupCache
from xdsd.cache.resources import ENDPOINT, PUSH_ORDER, Resource, ResourceSet, short_type
from xdsd.heap import HeapKeeper
from xdsd.model.build import SnapshotBuilder
from xdsd.model.discovery import discovery_selectors
from xdsd.model.jwks import JWKS_KIND, is_fetched_source
from xdsd.model.jwks import describe as describe_jwks
from xdsd.model.networks import describe_networks
from xdsd.model.objects import SecretData, key_of, object_label
from xdsd.model.proxy import NodeIdError, Proxy, parse_proxy
from xdsd.model.snapshot import MeshSnapshot, ServiceKey
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError, ConfigObject, Endpoint, Resolution
from xdsd.multicluster import ClusterMetrics, Clusters, RemoteSource, Source
from xdsd.peers import PeerSyncz
from xdsd.push.debounce import Debouncer, DebounceSettings
from xdsd.push.request import PushRequest
from xdsd.security import Security, SecuritySettings
from xdsd.server.ads import Connection, NodeRejected, ServerSettings, XdsServices
from xdsd.server.auth import Caller
from xdsd.server.grpc_server import GrpcSettings, XdsServer
from xdsd.server.metrics import XdsMetrics
from xdsd.sources.events import ConfigChange, FileContent
from xdsd.sources.folder import FolderSource
from xdsd.sources.jwks import JwksResolver, JwksSettings, wanted_by
from xdsd.translate.auto_mtls import endpoints_need_mtls
from xdsd.translate.checks import config_problems
from xdsd.translate.generate import (
    GENERATORS,
    SERVED_TYPES,
    ProxyContext,
    context_key,
    group_key,
    proxy_context,
)
from xdsd.webhooks.admission import Handlers, WebhookContext, WebhookMetrics
from xdsd.webhooks.config import injector_problems, load_injector_config
from xdsd.webhooks.inject import InjectSettings
from xdsd.webhooks.server import WebhookServer, WebhookSettings

if TYPE_CHECKING:  # kubernetes_asyncio is imported only in the Kubernetes mode
    from xdsd.sources.kube import Backoff, ClusterSource, ClusterSpec
    from xdsd.sources.kube.rootcert import RootCertPublisher

log = logging.getLogger(__name__)

# istioctl's debug queries over xDS (istiod's StatusGen): answered once per request.
DEBUG_SYNCZ = "istio.io/debug/syncz"
DEBUG_CONFIG_DUMP = "istio.io/debug/config_dump"
DEBUG_TYPES = frozenset({DEBUG_SYNCZ, DEBUG_CONFIG_DUMP, DEBUG_TYPE})
_CLIENT_CONFIG = "type.googleapis.com/envoy.service.status.v3.ClientConfig"
_STATUS = {
    "SYNCED": csds_pb2.SYNCED,
    "NOT_SENT": csds_pb2.NOT_SENT,
    "STALE": csds_pb2.STALE,
    "ERROR": csds_pb2.ERROR,
}


@dataclass(frozen=True)
class AppSettings:
    # A folder of YAML, or (the Kubernetes mode) a kubeconfig / in-cluster credentials.
    config_dir: Path | None = None
    xds: GrpcSettings = field(default_factory=GrpcSettings)
    server: ServerSettings = field(default_factory=ServerSettings)  # push slots, admission
    admin_host: str = "127.0.0.1"
    admin_port: int = 15014  # 0 picks a free port; -1 turns the admin server off
    # Serve /debug/* to non-loopback clients too (off: debug output names everything).
    remote_debug: bool = False
    debounce: DebounceSettings = field(default_factory=DebounceSettings)
    # The config folder's scan period when file events are unavailable (FolderSource);
    # the remote secrets folder's poll.
    poll_interval: float = 0.5
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    # -- the Kubernetes mode ---------------------------------------------------------------
    kubeconfig: Path | None = None  # the config cluster's kubeconfig file
    in_cluster: bool = False  # the config cluster is the one xdsd runs in
    namespaces: frozenset[str] | None = None  # watch only these namespaces (None: all)
    own_namespace: str = "istio-system"  # where the istio/multiCluster Secrets are
    remote_secrets_dir: Path | None = None  # kubeconfig files instead of Secrets
    cluster_id: str = "Kubernetes"  # the config cluster's id
    # istio.io/rev of this control plane (several per external cluster): other revisions'
    # Istio config and remote secrets are not read. None: every object is ours.
    revision: str | None = None
    # Admin addresses (HOST:PORT) of the other replicas: their proxies join this one's
    # istio.io/debug/syncz answer (xdsd.peers). Their /debug must answer remote clients.
    peer_admins: tuple[str, ...] = ()
    peer_poll_interval: float = 2.0
    remote_sync_timeout: float = 30.0  # a slower remote cluster does not hold readiness
    sync_progress_interval: float = 5.0  # log progress of a long initial sync
    kube_backoff: Backoff | None = None  # reconnect delays after API errors (None: default)
    kube_watch_timeout: int = 300  # seconds a watch request asks the server to last
    # Write each Istio config object's validation result into its status (Istio's shape).
    write_status: bool = False
    status_delay: float = 0.5  # the status writer's debounce, in seconds
    # Authentication, Istio's authorization, the CA, stream limits (xdsd.security).
    security: SecuritySettings = field(default_factory=SecuritySettings)
    # Freeze the loaded heap so GC passes skip it (xdsd.heap); for a serving process,
    # not for one that hosts other work (tests).
    freeze_heap: bool = False
    gc_collect_interval: float = 300.0  # the frozen heap's full collection; 0: never
    # istiod's webhooks on 15017 (xdsd.webhooks; None: off) and what injected proxies
    # are told about the control plane.
    webhooks: WebhookSettings | None = None
    inject: InjectSettings = field(default_factory=InjectSettings)
    # Fetching the key sets RequestAuthentications name by jwksUri (xdsd.sources.jwks).
    jwks: JwksSettings = field(default_factory=JwksSettings)

    def __post_init__(self) -> None:
        sources = [self.config_dir is not None, self.kubeconfig is not None, self.in_cluster]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one config source: a config dir, a kubeconfig or in-cluster"
            )
        if self.remote_sync_timeout < 0:
            raise ValueError("remote_sync_timeout must not be negative")

    @property
    def kube(self) -> bool:
        """Config comes from Kubernetes API servers."""
        return self.config_dir is None


def load_kubeconfig(path: Path) -> Mapping[str, Any]:
    """A kubeconfig file's content; ValueError (naming the file, not the content) if unusable."""
    from xdsd.sources.kube.remote import parse_kubeconfig

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read kubeconfig {path}: {e.strerror or e}") from None
    doc, problem = parse_kubeconfig(data)
    if doc is None:
        raise ValueError(f"kubeconfig {path}: {problem}")
    return doc


# -- worker processes (xdsd.workers) -----------------------------------------------------


class FolderLike(Protocol):
    """What the app needs of a folder source (`FolderSource`, or a worker's relay)."""

    @property
    def synced(self) -> asyncio.Event: ...

    def changes(self) -> AsyncIterator[ConfigChange]: ...


@dataclass(frozen=True)
class SourceHooks:
    """How `xdsd.workers` plugs into the app; the defaults are a normal single process.

    Each source hook gets the default factory and returns the source to use: the
    supervisor wraps the real sources to ship their changes to the workers, a worker
    replaces them with relays of what the supervisor ships.
    """

    folder: Callable[[Callable[[], FolderSource]], FolderLike] | None = None
    cluster: Callable[[ClusterSpec, Callable[[], Source]], Source] | None = None
    remotes: Callable[[Callable[[], RemoteSource]], RemoteSource] | None = None
    serve_xds: bool = True  # the supervisor serves no proxies
    push: bool = True  # rebuild after changes (the supervisor: only for --write-status)
    writer: bool = True  # --write-status and the root-cert ConfigMaps (not in workers)
    # JWKS fetching (the supervisor's, shipped to workers as store changes).
    fetch_jwks: bool = True
    # Called with each fetched-JWKS change the app applied (the supervisor ships it).
    fetched: Callable[[ConfigChange], None] | None = None


# -- end of worker hooks ----------------------------------------------------------------------


class _Watch:
    """The app's handle on one connected proxy (implements server.ProxyWatch)."""

    def __init__(self, app: XdsdApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy
        self._generation = -1
        self._ctx: ProxyContext | None = None
        self._key: Hashable = None

    @property
    def proxy_id(self) -> str:
        return self.proxy.id

    def _context(self) -> tuple[ProxyContext, Hashable]:
        snapshot = self.app.snapshot
        if self._ctx is None or self._generation != snapshot.generation:
            self._ctx, self._key = self.app.contexts.get(snapshot, self.proxy)
            self._generation = snapshot.generation
        return self._ctx, self._key

    def resources(self, type_url: str) -> ResourceSet:
        if type_url not in SERVED_TYPES:
            return ResourceSet.of(type_url, ())
        ctx, key = self._context()
        return self.app.cache.get(ctx, key, type_url)

    def query_types(self) -> frozenset[str]:
        return DEBUG_TYPES

    def query(self, type_url: str, names: tuple[str, ...], caller: Caller | None) -> list[Resource]:
        scope = self.app.debug_scope(caller)
        if type_url == DEBUG_SYNCZ:
            return self.app.client_configs(scope)
        if type_url == DEBUG_CONFIG_DUMP and len(names) == 1:
            return self.app.config_dump_resources(names[0], scope)
        if type_url == DEBUG_TYPE and len(names) == 1:
            body = debug_body(
                self.app,
                names[0],
                restricted=scope is not None,
                visible=lambda proxy_id: self.app.in_scope(proxy_id, scope),
            )
            return [Resource.from_bytes(names[0], DEBUG_TYPE, body)]
        return []

    def close(self) -> None:
        pass


class _Contexts:
    """Proxy contexts of the current snapshot, one per `context_key` (e.g. per app, not
    per pod); carried to the next snapshot when only endpoints changed."""

    def __init__(self) -> None:
        self.generation = -1
        self._by_key: dict[Hashable, tuple[ProxyContext, Hashable]] = {}
        self.built = 0

    def reset(self, snapshot: MeshSnapshot, endpoints_only: bool) -> None:
        if endpoints_only:
            # Nothing a context plans from changed; generators read endpoints from the new
            # snapshot. A proxy whose own workload changed gets another context_key.
            self._by_key = {
                k: (dataclasses.replace(ctx, snapshot=snapshot), gk)
                for k, (ctx, gk) in self._by_key.items()
            }
        else:
            self._by_key = {}
        self.generation = snapshot.generation

    def get(self, snapshot: MeshSnapshot, proxy: Proxy) -> tuple[ProxyContext, Hashable]:
        if snapshot.generation != self.generation:
            self.reset(snapshot, endpoints_only=False)
        key = context_key(snapshot, proxy)
        hit = self._by_key.get(key)
        if hit is None:
            ctx = proxy_context(snapshot, proxy)
            hit = self._by_key[key] = (ctx, group_key(ctx))
            self.built += 1
        return hit

    def __len__(self) -> int:
        return len(self._by_key)


def _peer_client_config(entry: Mapping[str, Any]) -> Resource:
    """A ClientConfig from a peer's /debug/syncz entry (what `client_configs` would say)."""
    cc = csds_pb2.ClientConfig()
    cc.node.id = str(entry.get("proxy", ""))
    for key, meta in (
        ("cluster_id", "CLUSTER_ID"),
        ("namespace", "NAMESPACE"),
        ("istio_version", "ISTIO_VERSION"),
    ):
        if entry.get(key):
            cc.node.metadata[meta] = str(entry[key])
    types = entry.get("types")
    for st in sorted(types.values() if isinstance(types, Mapping) else (), key=str):
        if not isinstance(st, Mapping) or "type_url" not in st:
            continue
        g = cc.generic_xds_configs.add(
            type_url=str(st["type_url"]), version_info=str(st.get("sent_version") or "")
        )
        g.config_status = _STATUS.get(str(st.get("status")), g.config_status)
        nack = st.get("last_nack")
        if isinstance(nack, Mapping) and st.get("status") == "ERROR":
            g.error_state.details = str(nack.get("error", ""))
            g.error_state.version_info = str(nack.get("version", ""))
    return Resource.from_message(cc.node.id, _CLIENT_CONFIG, cc)


def _endpoint_services(old: MeshSnapshot, new: MeshSnapshot) -> frozenset[ServiceKey] | None:
    """The services whose endpoints changed, if nothing but EDS endpoints did (else None).

    Endpoints of DNS, headless and passthrough services shape clusters and listeners
    (DNS targets, original destination), so a change to those is a full push.
    """
    if new.services != old.services or new.configs != old.configs:
        return None
    changed: set[ServiceKey] = set()
    for k in old.endpoints.keys() | new.endpoints.keys():
        before, after = old.endpoints.get(k, ()), new.endpoints.get(k, ())
        if before != after:
            # A service's first (or last) sidecar endpoint turns auto mTLS on (off) in
            # its clusters: a cluster change.
            if endpoints_need_mtls(old, before) != endpoints_need_mtls(new, after):
                return None
            changed.add(k[0])
    by_key = {
        (s.hostname, s.namespace): s for s in new.services if (s.hostname, s.namespace) in changed
    }
    for key in changed:
        svc = by_key.get(key)
        if (
            svc is None
            or svc.resolution is not Resolution.STATIC
            or svc.headless
            or svc.external_name is not None
        ):
            return None
    return frozenset(changed)


class XdsdApp:
    def __init__(
        self,
        settings: AppSettings,
        registry: CollectorRegistry | None = None,
        hooks: SourceHooks | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = hooks or SourceHooks()  # worker processes (xdsd.workers)
        self.registry = registry or CollectorRegistry()
        self.metrics = XdsMetrics(self.registry)
        self.clusters: Clusters | None = None
        if settings.kube:
            self.clusters = self._new_clusters()
            self.registry.register(ClusterMetrics(self.clusters))
        self.store = self.clusters.config_store if self.clusters else ConfigStore()
        self.snapshot = MeshSnapshot(
            root_namespace=settings.root_namespace, domain_suffix=settings.domain_suffix
        )
        self.builder = SnapshotBuilder()  # reuses the work of the previous build
        self.heap = (
            HeapKeeper(interval=settings.gc_collect_interval) if settings.freeze_heap else None
        )
        self.cache = GroupCache()
        self.contexts = _Contexts()
        self._config_kubeconfig: tuple[Mapping[str, Any] | None] | None = None
        self.security = Security(
            settings.security,
            self.registry,
            domain_suffix=settings.domain_suffix,
            kubeconfigs=self._kubeconfig_of if settings.kube else None,
            default_cluster_id=settings.cluster_id,
        )
        self.services = XdsServices(
            self,
            self.metrics,
            settings.server,
            auth=self.security.auth,
            new_streams=self.security.new_streams,
        )
        self.debouncer = Debouncer(self._push, settings.debounce)
        self.source: FolderLike | None = None if settings.kube else self._new_source()
        self.jwks: JwksResolver | None = None
        if self.hooks.fetch_jwks:
            self.jwks = JwksResolver(settings.jwks, registry=self.registry)
        self._jwks_seen: tuple[object, ...] | None = None
        self._jwks_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: XdsServer | None = None
        self._admin: AdminServer | None = None
        self._webhooks: WebhookServer | None = None
        self.webhook_handlers = Handlers(
            WebhookContext(
                snapshot=lambda: self.snapshot,
                ready=self.ready.is_set,
                namespaces=settings.namespaces,
                config_cluster_id=settings.cluster_id,
                inject=settings.inject,
            ),
            WebhookMetrics(self.registry),
        )
        self._generation = 0
        self._build_errors: tuple[ConfigError, ...] = ()
        self._ca_secret_seen: object = None  # the cacerts Secret object last looked at
        # The other replicas' proxies, for syncz (--peer-admin).
        self.peers = PeerSyncz(settings.peer_admins, interval=settings.peer_poll_interval)
        self.m_ca_rotation = Counter(
            "xdsd_ca_rotations",
            "cacerts Secret changes: rotated to a new CA, or refused (error)",
            ["result"],
            registry=self.registry,
        )
        self._logged_errors: set[str] = set()
        self._last_push: dict[str, Any] | None = None
        self._pushes = 0
        self.root_certs: RootCertPublisher | None = None  # istio-ca-root-cert ConfigMaps
        self._status_writer: Any = None  # xdsd.sources.kube.status.StatusWriter
        if settings.kube and settings.write_status and self.hooks.writer:
            self._status_writer = self._new_status_writer()
        self._init_metrics()

    def _init_metrics(self) -> None:
        r = self.registry
        self.m_services = Gauge("pilot_services", "Total services known to pilot.", registry=r)
        self.m_pushcontext = Histogram(
            "pilot_pushcontext_init_seconds",
            "Time to build a mesh snapshot, in seconds.",
            registry=r,
        )
        self.m_debounce = Histogram(
            "pilot_debounce_time",
            "Time from the first change of a debounce window to its push, in seconds.",
            registry=r,
        )
        self.m_invalid = Gauge(
            "xdsd_config_errors", "Config objects with errors in the current config.", registry=r
        )
        self.m_gc_pause = Histogram(
            "xdsd_gc_pause_seconds",
            "Pauses of CPython's cyclic garbage collector, by generation (2: full), in seconds.",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def xds_port(self) -> int:
        return self._server.port if self._server else self.settings.xds.port

    @property
    def tls_port(self) -> int:
        return self._server.tls_port if self._server else self.settings.xds.tls_port

    @property
    def mtls_port(self) -> int:
        return self._server.mtls_port if self._server else self.settings.xds.mtls_port

    @property
    def webhook_port(self) -> int:
        """The webhook server's port (-1: off)."""
        if self._webhooks is not None:
            return self._webhooks.port
        return self.settings.webhooks.port if self.settings.webhooks is not None else -1

    @property
    def admin_port(self) -> int:
        return self._admin.port if self._admin else self.settings.admin_port

    async def __aenter__(self) -> XdsdApp:
        if self.settings.kube and self.settings.security.ca_secret is not None:
            await self.security.load_ca_secret(
                self._kubeconfig_of(self.settings.cluster_id)[1], self.settings.own_namespace
            )
        if self.hooks.serve_xds:
            self._server = await XdsServer(
                self.services, self.settings.xds, self.security.handlers()
            ).__aenter__()
        try:
            if self.heap is not None:
                self.heap.install()
                self._tasks.append(asyncio.create_task(self._heap_upkeep(), name="heap"))
            if self.settings.admin_port >= 0:
                self._admin = await AdminServer(
                    self,
                    self.settings.admin_host,
                    self.settings.admin_port,
                    remote_debug=self.settings.remote_debug,
                    extra={"injectz": self._injectz, "networkz": self._networkz},
                ).__aenter__()
            if self.settings.webhooks is not None and self.hooks.serve_xds:
                self._webhooks = await WebhookServer(
                    self.webhook_handlers, self.settings.webhooks
                ).__aenter__()
            if self.clusters is not None:
                await self.clusters.start()
                if self.hooks.writer:
                    self._start_root_cert_publisher()
                self._tasks.append(asyncio.create_task(self._kube_ready(), name="kube-ready"))
                if self._status_writer is not None:
                    self._tasks.append(
                        asyncio.create_task(self._status_writer.run(), name="status-writer")
                    )
            else:
                self._tasks.append(asyncio.create_task(self._watch_source(), name="config-source"))
            if self.hooks.push:
                self._tasks.append(asyncio.create_task(self.debouncer.run(), name="debounce"))
            await self.peers.__aenter__()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.peers.__aexit__(None, None, None)
        if self.jwks is not None:
            await self.jwks.aclose()  # its HTTP session, if a fetch was cut short
        try:
            await self._close_servers()
        finally:
            if self.heap is not None:
                self.heap.close()

    async def _close_servers(self) -> None:
        if self.root_certs is not None:
            await self.root_certs.aclose()
            self.root_certs = None
        if self.clusters is not None:
            await self.clusters.aclose()
        if self._server is not None:
            await self._server.__aexit__(None, None, None)
            self._server = None
        await self.security.aclose()
        if self._webhooks is not None:
            await self._webhooks.__aexit__(None, None, None)
            self._webhooks = None
        if self._admin is not None:
            await self._admin.__aexit__(None, None, None)
            self._admin = None

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    # -- config pipeline ------------------------------------------------------------------

    async def _watch_source(self) -> None:
        """Keep the source running: an unexpected error is logged, then it resumes."""
        while True:
            try:
                await self._consume_source()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("config source failed; serving the last config, retrying")
                await asyncio.sleep(max(self.settings.poll_interval, 1.0))
                # A fresh source re-reads everything, so no change is lost.
                self.source = self._new_source()

    async def _consume_source(self) -> None:
        """Feed folder changes into the store; the first full load opens the gate."""
        assert self.source is not None
        async for change in self.source.changes():
            if change.synced and self.ready.is_set():
                change = self._as_resync(change)
            before = self.store.generation
            self.store.apply(change)
            self._track_jwks()
            if not self.ready.is_set() and self.source.synced.is_set():
                await self._start_jwks()
                self._open_gate()
                log.info(
                    "initial config loaded: %d services, %d errors",
                    len(self.snapshot.services),
                    len(self.snapshot.errors),
                )
                continue
            if self.store.generation != before:
                self.debouncer.request(
                    PushRequest(kinds=change.kinds, reason="config", started=time.monotonic())
                )
            elif change.files:
                # Nothing served changed (e.g. a broken edit of an object whose last
                # good version stays), but what we report about the config did.
                self._refresh_errors()

    def _new_source(self) -> FolderLike:
        def folder() -> FolderSource:
            assert self.settings.config_dir is not None
            return FolderSource(
                self.settings.config_dir,
                poll_interval=self.settings.poll_interval,
                revision=self.settings.revision,
            )

        return folder() if self.hooks.folder is None else self.hooks.folder(folder)

    # -- the Kubernetes mode ------------------------------------------------------------------

    def _new_clusters(self) -> Clusters:
        from xdsd.sources.kube import ClusterSpec, RemoteSecrets
        from xdsd.sources.kube.watch import DEFAULT_BACKOFF

        s = self.settings
        backoff = s.kube_backoff or DEFAULT_BACKOFF
        kubeconfig = None if s.kubeconfig is None else load_kubeconfig(s.kubeconfig)
        config = ClusterSpec(s.cluster_id, kubeconfig, "config", s.namespaces, s.revision)

        def remote_secrets() -> RemoteSource:
            if s.remote_secrets_dir is not None:
                return RemoteSecrets(
                    folder=s.remote_secrets_dir,
                    local_cluster_id=s.cluster_id,
                    namespaces=s.namespaces,
                    poll_interval=s.poll_interval,
                )
            return RemoteSecrets(
                config,
                namespace=s.own_namespace,
                local_cluster_id=s.cluster_id,
                namespaces=s.namespaces,
                backoff=backoff,
                watch_timeout=s.kube_watch_timeout,
                revision=s.revision,
            )

        hook = self.hooks.remotes
        remotes = remote_secrets() if hook is None else hook(remote_secrets)
        return Clusters(
            config,
            source_factory=self._cluster_source,
            on_change=self._cluster_changed,
            on_errors=self._cluster_errors,
            remotes=remotes,
            remote_sync_timeout=s.remote_sync_timeout,
            progress_interval=s.sync_progress_interval,
        )

    def _cluster_source(self, spec: ClusterSpec) -> Source:
        hook = self.hooks.cluster
        if hook is None:
            return self._new_cluster_source(spec)
        return hook(spec, lambda: self._new_cluster_source(spec))

    def _new_cluster_source(self, spec: ClusterSpec) -> ClusterSource:
        from xdsd.sources.kube import ClusterSource
        from xdsd.sources.kube.watch import DEFAULT_BACKOFF

        return ClusterSource(
            spec,
            domain_suffix=self.settings.domain_suffix,
            backoff=self.settings.kube_backoff or DEFAULT_BACKOFF,
            watch_timeout=self.settings.kube_watch_timeout,
        )

    def _new_status_writer(self) -> Any:
        from xdsd.sources.kube.status import StatusWriter

        assert self.clusters is not None
        return StatusWriter(self.clusters.config_source, delay=self.settings.status_delay)

    def _update_status(self) -> None:
        """Tell the status writer (--write-status) the current problems."""
        if self._status_writer is not None and self.ready.is_set():
            served = [object_label(key_of(o.ref)) for o in self.store.objects()]
            self._status_writer.update(self.snapshot.errors, served)

    def _start_root_cert_publisher(self) -> None:
        """With a CA: Istio's istio-ca-root-cert ConfigMaps in the clusters that name us."""
        from xdsd.sources.kube.rootcert import RootCertPublisher
        from xdsd.sources.kube.watch import DEFAULT_BACKOFF

        clusters = self.clusters
        if clusters is None or self.security.ca is None:
            return
        publisher = RootCertPublisher(
            self.settings.cluster_id,
            self.settings.own_namespace,
            self.security.ca.root_pem,
            registry=self.registry,
            backoff=self.settings.kube_backoff or DEFAULT_BACKOFF,
            watch_timeout=self.settings.kube_watch_timeout,
        )
        self.root_certs = publisher
        if self.snapshot.generation > 0:  # else the first build tells it (`_rebuild`)
            publisher.set_selectors(discovery_selectors(self.store, self.settings.root_namespace))
        publisher.sync(clusters.specs())
        clusters.members_listeners.append(lambda: publisher.sync(clusters.specs()))

    def _kubeconfig_of(self, cluster_id: str) -> tuple[bool, Mapping[str, Any] | None]:
        """The kubeconfig of a cluster by id, for TokenReview (None: in-cluster)."""
        s = self.settings
        if cluster_id == s.cluster_id:
            if self._config_kubeconfig is None:
                kc = None if s.kubeconfig is None else load_kubeconfig(s.kubeconfig)
                self._config_kubeconfig = (kc,)
            return True, self._config_kubeconfig[0]
        spec = self.clusters.spec(cluster_id) if self.clusters is not None else None
        return (True, spec.kubeconfig) if spec is not None else (False, None)

    async def _kube_ready(self) -> None:
        """The gate opens once the config cluster (and remotes, up to a timeout) synced."""
        assert self.clusters is not None
        await self.clusters.initial_sync.wait()
        await self._start_jwks()
        self._open_gate()
        self._update_status()
        log.info(
            "initial config loaded from %d clusters: %d services, %d errors",
            len(self.clusters.cluster_ids()),
            len(self.snapshot.services),
            len(self.snapshot.errors),
        )

    def _open_gate(self) -> None:
        """The initial load is in: the first snapshot, readiness, and the heap settles."""
        self._rebuild(PushRequest(reason="initial"))
        self.ready.set()
        self._track_jwks()
        if self.heap is not None:
            self.heap.settle()

    def _cluster_changed(self, cluster_id: str, kinds: frozenset[str]) -> None:
        self._track_jwks()
        # Before the gate opens, the initial build takes everything in.
        if self.ready.is_set():
            self.debouncer.request(
                PushRequest(kinds=kinds, reason=f"cluster {cluster_id}", started=time.monotonic())
            )

    def _cluster_errors(self) -> None:
        if self.ready.is_set():
            self._refresh_errors()

    def _store_errors(self) -> tuple[ConfigError, ...]:
        """Problems of every store, in the order build_snapshot reports them."""
        errors = self.store.errors()
        if self.clusters is not None:
            for store in self.clusters.remote_stores().values():
                errors += store.errors()
        return errors

    def _as_resync(self, change: ConfigChange) -> ConfigChange:
        """A full load after a restart: files the store has but the scan lacks are gone."""
        present = {c.source for c in change.files}
        gone = tuple(
            FileContent(s, None)
            for s in self.store.sources()
            if s not in present and not is_fetched_source(s)
        )
        return ConfigChange(change.files + gone, change.kinds, synced=True)

    # -- JWKS (RequestAuthentication jwksUri) ------------------------------------------------

    async def _start_jwks(self) -> None:
        """Before the gate opens: fetch what the config names (each fetch bounded by its
        rule's timeout), so the first push already inlines the key sets, as istiod's
        first push context does; then keep following the config and refreshing."""
        if self.jwks is None or self._jwks_task is not None:
            return
        objs = self.store.objects("RequestAuthentication")
        self._jwks_seen = objs
        self.jwks.want(wanted_by(o for o in objs if isinstance(o, ConfigObject)))
        change = None
        try:
            change = await self.jwks.step()
        except Exception:
            log.exception("initial JWKS fetch failed; the resolver retries")
        if change is not None:
            self._apply_fetched(change)
        self._jwks_task = asyncio.create_task(self._follow_jwks(), name="jwks")
        self._tasks.append(self._jwks_task)

    def _track_jwks(self) -> None:
        """Tell the resolver which URLs the RequestAuthentications name. Only once the
        gate is open: a worker started later gets the fetched key sets in the replay."""
        if self.jwks is None or not self.ready.is_set():
            return
        objs = self.store.objects("RequestAuthentication")
        if objs is not self._jwks_seen:  # the store hands out the same tuple until a change
            self._jwks_seen = objs
            self.jwks.want(wanted_by(o for o in objs if isinstance(o, ConfigObject)))

    async def _follow_jwks(self) -> None:
        assert self.jwks is not None
        while True:
            try:
                async for change in self.jwks.changes():
                    self._apply_fetched(change)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("JWKS resolver failed; keeping the fetched key sets, restarting")
                await asyncio.sleep(1.0)

    def _apply_fetched(self, change: ConfigChange) -> None:
        """Fetched key sets into the config store (and to the workers), then a push."""
        before = self.store.generation
        self.store.apply(change)
        if self.hooks.fetched is not None:
            self.hooks.fetched(change)  # no await since the apply: workers' replay stays exact
        if not self.ready.is_set():
            return
        if self.store.generation != before:
            self.debouncer.request(
                PushRequest(kinds=change.kinds, reason="jwks", started=time.monotonic())
            )
        else:
            self._refresh_errors()

    def _follow_ca_secret(self) -> None:
        """Serve a rotated cacerts Secret (--ca-secret) without a restart: new CSRs are
        signed by the new CA and the istio-ca-root-cert ConfigMaps get its root. The
        Secret is watched with the other Secrets of the config cluster (when its namespace
        is watched); a Secret that does not make a CA leaves the current one serving."""
        name = self.settings.security.ca_secret
        if not self.settings.kube or name is None or self.security.ca is None:
            return
        from xdsd.sources.kube.rootcert import CACERTS_KEYS

        obj = self.store.get("Secret", self.settings.own_namespace, name)
        if obj is None or obj is self._ca_secret_seen or not isinstance(obj, ConfigObject):
            return
        self._ca_secret_seen = obj
        data = obj.spec.get("data")
        source = f"Secret {self.settings.own_namespace}/{name}"
        if not isinstance(data, SecretData):
            return
        try:
            entries = {k: data.decoded(k) for k in CACERTS_KEYS if k in data}
            rotated = self.security.rotate_ca(entries, source)
        except (ValueError, KeyError, AttributeError) as e:
            self.m_ca_rotation.labels("error").inc()
            log.error("%s does not make a CA (%s): the current CA keeps signing", source, e)
            return
        if rotated:
            self.m_ca_rotation.labels("rotated").inc()
            if self.root_certs is not None:
                self.root_certs.set_root(self.security.ca.root_pem)

    def _rebuild(self, req: PushRequest) -> frozenset[ServiceKey] | None:
        """A new snapshot; returns the services whose endpoints changed when nothing else did."""
        self._follow_ca_secret()
        start = time.perf_counter()
        self._generation += 1
        old = self.snapshot
        clusters = self.clusters
        snapshot = self.builder.build(
            self.store,
            generation=self._generation,
            root_namespace=self.settings.root_namespace,
            domain_suffix=self.settings.domain_suffix,
            remotes=clusters.remote_stores() if clusters else {},
            config_cluster_id=self.settings.cluster_id,
            stale=clusters.stale() if clusters else frozenset(),
            trust_domain=self.settings.security.trust_domain,
        )
        extra = config_problems(snapshot)  # e.g. CUSTOM policies without their provider
        if self.settings.webhooks is not None:
            extra += injector_problems(snapshot)  # what the injector ConfigMap has that we ignore
        if extra:
            snapshot = dataclasses.replace(snapshot, errors=snapshot.errors + tuple(extra))
        self.snapshot = snapshot
        if self.root_certs is not None:  # istio-ca-root-cert only where discovery selects
            self.root_certs.set_selectors(
                discovery_selectors(self.store, self.settings.root_namespace)
            )
        self._build_errors = snapshot.errors[len(self._store_errors()) :]
        endpoint_services = None
        # Endpoint kinds only: whether the change is endpoint-only is then checked on the
        # snapshots (services and Istio config unchanged, only EDS services moved).
        if req.endpoints_only and old.generation > 0:
            endpoint_services = _endpoint_services(old, snapshot)
        self.cache.reset(snapshot.generation, snapshot, Change(req.kinds, endpoint_services))
        self.contexts.reset(snapshot, endpoints_only=endpoint_services is not None)
        self.m_pushcontext.observe(time.perf_counter() - start)
        self.m_services.set(len(snapshot.services))
        self.m_invalid.set(sum(1 for e in snapshot.errors if e.severity == "error"))
        self._log_new_errors(snapshot.errors)
        self._update_status()
        return endpoint_services

    def _refresh_errors(self) -> None:
        errors = self._store_errors() + self._build_errors
        if errors != self.snapshot.errors:
            self.snapshot = dataclasses.replace(self.snapshot, errors=errors)
            self.m_invalid.set(sum(1 for e in errors if e.severity == "error"))
            self._log_new_errors(errors)
        self._update_status()

    def _log_new_errors(self, errors: tuple[ConfigError, ...]) -> None:
        """Log each problem once, when it first appears."""
        current = {str(e): e for e in errors}
        for text, err in current.items():
            if text not in self._logged_errors:
                log.log(
                    logging.WARNING if err.severity == "error" else logging.INFO, "config: %s", text
                )
        self._logged_errors = set(current)

    async def _push(self, req: PushRequest, waited: float) -> None:
        self.m_debounce.observe(waited)
        start = time.perf_counter()
        endpoint_services = self._rebuild(req)
        # Endpoint-only: only EDS can differ; streams holding none of the changed
        # assignments find their set unchanged and send nothing.
        types = frozenset({ENDPOINT}) if endpoint_services is not None else None
        woken = self.services.notify(types, since=req.started)
        self._last_push = {
            "generation": self._generation,
            "at": time.time(),
            "reason": req.reason,
            "kinds": sorted(req.kinds),
            "changes_merged": req.events,
            "debounce_seconds": round(waited, 4),
            "rebuild_seconds": round(time.perf_counter() - start, 4),
            "types": "eds" if types is not None else "all",
            "endpoint_services": None
            if endpoint_services is None
            else sorted(f"{h}/{ns}" for h, ns in endpoint_services),
            "streams_woken": woken,
        }
        self._pushes += 1
        log.info(
            "push %d (%s, %d changes): %d streams",
            self._generation,
            ",".join(sorted(req.kinds)) or req.reason,
            req.events,
            woken,
        )
        if self.heap is not None:
            self._heap_chores()

    def _heap_chores(self) -> None:
        assert self.heap is not None
        pause = self.m_gc_pause
        self.heap.drain(lambda gen, seconds: pause.labels(str(gen)).observe(seconds))
        self.heap.quiet()

    async def _heap_upkeep(self) -> None:
        """GC pause metrics, and the periodic full collection when no push comes."""
        while True:
            await asyncio.sleep(5.0)
            self._heap_chores()

    # -- ConfigProvider (for the xDS server) ---------------------------------------------

    async def wait_ready(self) -> None:
        await self.ready.wait()

    def open(self, node_id: str, metadata: Mapping[str, Any], peer: str, context: Any) -> _Watch:
        try:
            proxy = parse_proxy(node_id, metadata)
        except NodeIdError as e:
            raise NodeRejected(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return _Watch(self, proxy)

    # -- DebugView (for the admin server) --------------------------------------------------

    def is_ready(self) -> bool:
        return self.ready.is_set()

    def metrics_registry(self) -> CollectorRegistry:
        return self.registry

    def syncz(self) -> list[dict[str, Any]]:
        out = []
        for conn in sorted(self.services.connections.values(), key=lambda c: c.proxy_id):
            if not _is_proxy(conn):
                continue
            types = {}
            for type_url, st in conn.states.items():
                types[short_type(type_url)] = {
                    "type_url": type_url,
                    "sent_nonce": st.nonce,
                    "sent_version": st.version,
                    "acked_nonce": st.acked_nonce,
                    "acked_version": st.acked_version,
                    "status": _sync_status(st),
                    "resources": "*" if st.wildcard else len(st.names),
                    "nacks": st.nacks,
                    "last_nack": None
                    if st.nack is None
                    else {
                        "version": st.nack.version,
                        "code": st.nack.code,
                        "error": st.nack.message,
                    },
                }
            entry: dict[str, Any] = {
                "proxy": conn.proxy_id,
                "node_id": conn.node_id,
                "connection": conn.conn_id,
                "delta": conn.delta,
                "types": types,
            }
            if isinstance(conn.watch, _Watch):
                proxy = conn.watch.proxy
                entry["cluster_id"] = proxy.cluster_id
                entry["namespace"] = proxy.namespace
                entry["istio_version"] = proxy.istio_version
            out.append(entry)
        return out

    def adsz(self) -> list[dict[str, Any]]:
        return [
            {
                "proxy": c.proxy_id,
                "connection": c.conn_id,
                "peer": c.peer,
                "node_id": c.node_id,
                "protocol": "delta" if c.delta else "sotw",
                "connected_at": c.connected_at,
                "pushes": c.pushes,
                "watched": sorted(short_type(t) for t in c.states),
                "metadata": dict(c.metadata),
            }
            for c in sorted(self.services.connections.values(), key=lambda c: c.proxy_id)
        ]

    def _proxy_sets(self, proxy_id: str) -> dict[str, ResourceSet] | None:
        for conn in self.services.connections.values():
            if conn.proxy_id == proxy_id and isinstance(conn.watch, _Watch) and _is_proxy(conn):
                watch = conn.watch
                return {t: watch.resources(t) for t in PUSH_ORDER if t in GENERATORS}
        return None

    def config_dump(self, proxy_id: str) -> dict[str, Any] | None:
        sets = self._proxy_sets(proxy_id)
        return None if sets is None else dump_resources(sets)

    def debug_scope(self, caller: Caller | None) -> frozenset[str] | None:
        """The namespaces whose proxies a debug query may show (None: all), as istiod:
        a caller authenticated in the root namespace sees all, any other only the
        proxies of its own namespace; unauthenticated streams (the plaintext port,
        --insecure-no-auth) see all."""
        if caller is None:
            return None
        spiffe = [i for i in (parse_spiffe(u) for u in caller.identities) if i is not None]
        namespaces = frozenset(i.namespace for i in spiffe)
        return None if self.settings.root_namespace in namespaces else namespaces

    def config_dump_resources(
        self, proxy_id: str, scope: frozenset[str] | None = None
    ) -> list[Resource]:
        """istio.io/debug/config_dump: the dump sections as unnamed resources."""
        sets = self._proxy_sets(proxy_id)
        if sets is None or not self.in_scope(proxy_id, scope):
            return []
        out = []
        for message in dump_messages(sets):
            type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
            out.append(Resource.from_message("", type_url, message))
        return out

    def in_scope(self, proxy_id: str, scope: frozenset[str] | None) -> bool:
        if scope is None:
            return True
        return any(
            isinstance(c.watch, _Watch) and c.watch.proxy.namespace in scope
            for c in self.services.connections.values()
            if c.proxy_id == proxy_id
        )

    def client_configs(self, scope: frozenset[str] | None = None) -> list[Resource]:
        """istio.io/debug/syncz: one envoy.service.status.v3.ClientConfig per proxy (of
        the namespaces in `scope`, when given)."""
        out = []
        for conn in sorted(self.services.connections.values(), key=lambda c: c.proxy_id):
            if not _is_proxy(conn):
                continue
            if scope is not None and not (
                isinstance(conn.watch, _Watch) and conn.watch.proxy.namespace in scope
            ):
                continue
            cc = csds_pb2.ClientConfig()
            cc.node.id = conn.proxy_id
            if isinstance(conn.watch, _Watch):
                proxy = conn.watch.proxy
                cc.node.metadata["CLUSTER_ID"] = proxy.cluster_id
                cc.node.metadata["NAMESPACE"] = proxy.namespace
                cc.node.metadata["ISTIO_VERSION"] = proxy.istio_version
            for type_url, st in sorted(conn.states.items()):
                g = cc.generic_xds_configs.add(type_url=type_url, version_info=st.version)
                g.config_status = _STATUS[_sync_status(st)]
                if st.nack is not None:
                    g.error_state.details = st.nack.message
                    g.error_state.version_info = st.nack.version
            out.append(Resource.from_message(conn.proxy_id, _CLIENT_CONFIG, cc))
        own = {r.name for r in out}
        for entry in self.peers.entries():  # the other replicas' proxies (--peer-admin)
            if scope is not None and entry.get("namespace") not in scope:
                continue
            if entry.get("proxy") not in own:
                out.append(_peer_client_config(entry))
                own.add(str(entry.get("proxy")))
        return out

    def push_status(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "ready": self.ready.is_set(),
            "generation": snap.generation,
            "pushes": self._pushes,
            "last_push": self._last_push,
            "pending": None
            if self.debouncer.pending is None
            else {
                "kinds": sorted(self.debouncer.pending.kinds),
                "changes": self.debouncer.pending.events,
            },
            "services": len(snap.services),
            "proxies": sum(1 for c in self.services.connections.values() if _is_proxy(c)),
            "groups_cached": len(self.cache.sets()),
        }

    def configz(self) -> dict[str, Any]:
        """Every config object with its validation status, and problems of objects not served."""
        snap = self.snapshot
        by_object: dict[str, list[ConfigError]] = {}
        for e in snap.errors:
            by_object.setdefault(e.object, []).append(e)
        objects = []
        served = set()
        for obj in self.store.objects():
            label = object_label(key_of(obj.ref))
            served.add(label)
            problems = by_object.get(label, [])
            status = "accepted"
            if any(e.severity == "error" for e in problems):
                status = "serving last good version"
            elif problems:
                status = "accepted with warnings"
            objects.append(
                {
                    "object": label,
                    "source": obj.ref.source,
                    "status": status,
                    "problems": [_problem(e) for e in problems],
                }
            )
        rejected = [
            {"object": label or None, "status": "rejected", "problems": [_problem(e) for e in errs]}
            for label, errs in sorted(by_object.items())
            if label not in served and any(e.severity == "error" for e in errs)
        ]
        ignored = [
            _problem(e)
            for label, errs in sorted(by_object.items())
            if label not in served and not any(x.severity == "error" for x in errs)
            for e in errs
        ]
        return {
            "generation": snap.generation,
            "objects": objects,
            "rejected": rejected,
            "skipped": ignored,
            # Key sets fetched for RequestAuthentication jwksUri (xdsd.sources.jwks).
            "jwks": [describe_jwks(o) for o in snap.configs_of(JWKS_KIND)],
            # The fetcher's view (the process that fetches: single or supervisor).
            "jwks_fetches": self.jwks.status() if self.jwks is not None else None,
        }

    async def _networkz(self) -> dict[str, Any]:
        """Networks, their east-west gateways and endpoint counts (split-horizon EDS)."""
        return describe_networks(self.snapshot)

    async def _injectz(self) -> dict[str, Any]:
        """The injector's config: where it comes from and what of it xdsd ignores."""
        config = load_injector_config(self.snapshot)
        return {
            "enabled": self.settings.webhooks is not None,
            "port": self.webhook_port,
            "source": config.source,
            "policy": config.policy,
            "values": config.values,
            "ignored": [{"path": p, "message": m} for p, m in config.problems],
        }

    def clusterz(self) -> dict[str, Any]:
        """Every Kubernetes cluster connection and its state (folder mode: none)."""
        if self.clusters is None:
            return {"mode": "folder", "config_dir": str(self.settings.config_dir), "clusters": []}
        return {
            "mode": "kubernetes",
            "config_cluster": self.settings.cluster_id,
            "ready": self.ready.is_set(),
            "clusters": self.clusters.status(),
            "remote_secrets": self.clusters.remotes_status(),
        }

    def registryz(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        stale = self.clusters.stale() if self.clusters else frozenset()
        out = []
        for svc in snap.services:
            # istiod's names for the addresses of IP auto-allocation.
            auto = {
                f"autoAllocatedIPv{'6' if ':' in a else '4'}Address": a for a in svc.auto_addresses
            }
            out.append(
                {
                    **auto,
                    "hostname": svc.hostname,
                    "namespace": svc.namespace,
                    "name": svc.name,
                    "source": str(svc.ref),
                    "addresses": list(svc.addresses),
                    # LoadBalancer ingress, externalIPs (east-west gateways: /debug/networkz)
                    "externalAddresses": list(svc.external_addresses),
                    "resolution": svc.resolution.value,
                    "clusters": list(svc.clusters),
                    "ports": [
                        {
                            "name": p.name,
                            "port": p.port,
                            "protocol": p.protocol.value,
                            "endpoints": [
                                _endpoint_info(e, stale) for e in snap.endpoints_for(svc, p.port)
                            ],
                        }
                        for p in svc.ports
                    ],
                }
            )
        return out


def _endpoint_info(e: Endpoint, stale: frozenset[str]) -> dict[str, Any]:
    loc = e.locality
    return {
        "address": f"{e.address}:{e.port}",
        "cluster": e.cluster_id,
        "network": e.network,
        "locality": "/".join((loc.region, loc.zone, loc.subzone)).rstrip("/"),
        "healthy": e.healthy,
        "stale": e.cluster_id in stale,
    }


def _problem(e: ConfigError) -> dict[str, str]:
    return {"source": e.source, "path": e.path, "message": e.message, "severity": e.severity}


def _is_proxy(conn: Connection) -> bool:
    """A proxy watches config; a debug client (istioctl) only asks debug queries."""
    return any(t not in DEBUG_TYPES for t in conn.states)


def _sync_status(st: Any) -> str:
    if not st.nonce:
        return "NOT_SENT"
    if st.nack is not None:
        return "ERROR"
    return "SYNCED" if st.acked else "STALE"
