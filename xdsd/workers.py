"""Worker processes: `xdsd serve --workers N` serves proxies from every core of a host.

CPython runs Python code on one core per process, so N processes serve xDS. The
`Supervisor` (the `serve` process) runs the config sources, once, and N worker
processes each run a normal `XdsdApp` whose config comes from the supervisor:

- Ports: every worker binds the same xDS ports with SO_REUSEPORT and the kernel
  spreads new connections over them. The supervisor first checks each port is
  free (so a taken port is one clear error, not N workers silently sharing it with
  a stranger) and holds a bound, not listening, SO_REUSEPORT socket on it for its
  lifetime: a port 0 becomes one concrete port for all, and a restarted worker
  finds it still free for it.
- Config: parsed once, in the supervisor, and shipped parsed. The supervisor's
  app wraps its sources (`SourceHooks`): each `ConfigChange` (with its cluster id
  in the Kubernetes mode), each remote cluster event and the sources' states are
  pickled once and written to every worker over a socketpair (length-prefixed
  frames). A worker gets the current state first (each store's content,
  `ConfigStore.replay()`, and the remote clusters), then the stream; it feeds them
  into the same classes through relay sources, so its readiness gate, last-good
  rules, debounce and pushes are a single process's. The API servers see one set
  of watches whatever N is.
- Only the supervisor: the sources (list+watch), `--write-status`, the root-cert
  ConfigMaps, the admin port (`/ready` once every worker is ready, `/healthz`,
  its own `/metrics`, `/debug/clusterz`, `/debug/workers`, and `/debug/syncz` and
  `/debug/adsz` gathered from the workers). Every worker: xDS and the CA on the
  shared ports, TokenReview, its debounce and snapshots, and an admin server on
  an ephemeral loopback port (listed in `/debug/workers`) with its own debug
  views and metrics.
- Lifecycle: SIGTERM/SIGINT to the supervisor -> SIGTERM to the workers, which
  send GOAWAY and drain as a single process does; a worker that dies is restarted
  with backoff; workers die with the supervisor (PR_SET_PDEATHSIG, and the end of
  their socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import ctypes
import dataclasses
import errno
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout
from prometheus_client import CollectorRegistry, Counter, Gauge

from xdsd.admin.http import AdminServer
from xdsd.app import AppSettings, FolderLike, SourceHooks, XdsdApp
from xdsd.model.store import ConfigChange
from xdsd.multicluster import RemoteSource, Source
from xdsd.server.grpc_server import GrpcSettings
from xdsd.sources.folder import FolderSource
from xdsd.webhooks.server import WebhookSettings

if TYPE_CHECKING:  # kubernetes_asyncio is imported only in the Kubernetes mode
    from xdsd.sources.kube import ClusterSpec, ClusterStatus, RemoteEvent, RemoteProblem

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")

# -- messages (pickled, length-prefixed) -------------------------------------------------------


@dataclass(frozen=True)
class WorkerInit:
    """The first message to a worker: its settings (ports concrete, SO_REUSEPORT on)."""

    index: int
    settings: AppSettings


@dataclass(frozen=True)
class Changed:
    """A source's change; `key` is the cluster id (None: the config folder)."""

    key: str | None
    change: ConfigChange


@dataclass(frozen=True)
class Remote:
    event: RemoteEvent


@dataclass(frozen=True)
class RemotesSynced:
    pass


@dataclass(frozen=True)
class SourceState:
    """A source's connection state, for a worker's /debug/clusterz and staleness."""

    key: str | None  # None: the remote secrets source
    status: ClusterStatus
    notes: tuple[str, ...] = ()
    problems: tuple[RemoteProblem, ...] = ()


@dataclass(frozen=True)
class Siblings:
    """Every worker's admin port: each worker adds the others' proxies to its
    istio.io/debug/syncz answer, so proxy-status through any one shows all."""

    admin_ports: tuple[int, ...]


@dataclass(frozen=True)
class WorkerState:
    """A worker's report to the supervisor (when it changes)."""

    index: int
    pid: int
    admin_port: int
    ready: bool
    streams: int


def _mappingproxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


def _reduce_mappingproxy(m: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mappingproxy, (dict(m),)


def register_pickling() -> None:
    """Parsed objects hold read-only mappings, which pickle does not know (idempotent)."""
    copyreg.pickle(MappingProxyType, _reduce_mappingproxy)


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader) -> object | None:
    """The next message, or None at the end of the stream."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        data = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    # Only our own processes are at the other end of the socketpair.
    message: object = pickle.loads(data)
    return message


# -- supervisor side: sources that also ship their changes --------------------------------------


class _Fanout:
    """Ships messages to every worker: pickled once, written to each worker's socket."""

    def __init__(self) -> None:
        self.links: dict[int, asyncio.StreamWriter] = {}

    def send(self, message: object) -> None:
        if not self.links:
            return
        data = frame(message)
        for writer in self.links.values():
            if not writer.is_closing():
                writer.write(data)


class _TeeSource:
    """A real source (folder or cluster) whose changes are shipped as they are applied."""

    def __init__(self, inner: Any, key: str | None, fanout: _Fanout) -> None:
        self.inner = inner
        self.key = key
        self._fanout = fanout

    @property
    def synced(self) -> asyncio.Event:
        event: asyncio.Event = self.inner.synced
        return event

    async def changes(self) -> AsyncIterator[ConfigChange]:
        async for change in self.inner.changes():
            # No await until the consumer applied it: a worker's replay (the stores)
            # and this stream neither miss nor repeat a change.
            self._fanout.send(Changed(self.key, change))
            yield change

    def status(self) -> ClusterStatus:
        st: ClusterStatus = self.inner.status()
        return st

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # api_client, istio_objects, notes
        return getattr(self.inner, name)


class _TeeRemotes:
    """The remote secrets source, its events shipped to the workers."""

    def __init__(self, inner: RemoteSource, fanout: _Fanout) -> None:
        self.inner = inner
        self._fanout = fanout
        self._synced_task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> asyncio.Event:
        return self.inner.synced

    async def changes(self) -> AsyncIterator[RemoteEvent]:
        # `synced` is set after the initial events were taken, so this goes after them.
        self._synced_task = asyncio.create_task(self._ship_synced(), name="remotes-synced-relay")
        async for event in self.inner.changes():
            self._fanout.send(Remote(event))
            yield event

    async def _ship_synced(self) -> None:
        await self.inner.synced.wait()
        self._fanout.send(RemotesSynced())

    def status(self) -> ClusterStatus:
        return self.inner.status()

    def problems(self) -> tuple[RemoteProblem, ...]:
        return self.inner.problems()

    async def aclose(self) -> None:
        if self._synced_task is not None:
            self._synced_task.cancel()
        await self.inner.aclose()


# -- worker side: sources fed by the supervisor -------------------------------------------------


class _SyncedEvent(asyncio.Event):
    def __bool__(self) -> bool:
        return self.is_set()


class _Relay:
    """Dispatches the supervisor's messages to the worker's relay sources."""

    def __init__(self) -> None:
        self._queues: dict[str | None, asyncio.Queue[ConfigChange]] = {}
        self.states: dict[str | None, SourceState] = {}
        self.remote_events: asyncio.Queue[RemoteEvent] = asyncio.Queue()
        self.remotes_synced = _SyncedEvent()
        self.siblings: tuple[int, ...] = ()
        self.on_siblings: Callable[[tuple[int, ...]], None] | None = None

    def queue(self, key: str | None) -> asyncio.Queue[ConfigChange]:
        return self._queues.setdefault(key, asyncio.Queue())

    def dispatch(self, message: object) -> None:
        if isinstance(message, Changed):
            self.queue(message.key).put_nowait(message.change)
        elif isinstance(message, Remote):
            from xdsd.sources.kube import ClusterRemoved

            if isinstance(message.event, ClusterRemoved):
                # A cluster added again later starts from a fresh queue; its old
                # relay source (closed when the removal is taken) keeps the old one.
                self._queues.pop(message.event.cluster_id, None)
            self.remote_events.put_nowait(message.event)
        elif isinstance(message, RemotesSynced):
            self.remotes_synced.set()
        elif isinstance(message, SourceState):
            self.states[message.key] = message
        elif isinstance(message, Siblings):
            self.siblings = message.admin_ports
            if self.on_siblings is not None:
                self.on_siblings(self.siblings)
        else:
            log.warning("unexpected message from the supervisor: %s", type(message).__name__)

    def hooks(self, settings: AppSettings) -> SourceHooks:
        # Fetched JWKS come from the supervisor as changes of the config store's source.
        if not settings.kube:
            return SourceHooks(
                folder=lambda _default: _RelaySource(self, None), writer=False, fetch_jwks=False
            )
        return SourceHooks(
            cluster=lambda spec, _default: _RelaySource(self, spec.cluster_id),
            remotes=lambda _default: _RelayRemotes(self),
            writer=False,
            fetch_jwks=False,
        )


class _RelaySource:
    """A folder or cluster source that yields what the supervisor's source yielded."""

    def __init__(self, relay: _Relay, key: str | None) -> None:
        self._relay = relay
        self.key = key
        self._queue = relay.queue(key)
        self.synced = _SyncedEvent()

    async def changes(self) -> AsyncIterator[ConfigChange]:
        while True:
            change = await self._queue.get()
            if change.synced:
                self.synced.set()
            yield change

    @property
    def notes(self) -> tuple[str, ...]:
        state = self._relay.states.get(self.key)
        return state.notes if state is not None else ()

    def status(self) -> ClusterStatus:
        from xdsd.sources.kube import ClusterStatus

        state = self._relay.states.get(self.key)
        if state is not None:
            return state.status
        return ClusterStatus(self.key or "", "synced" if self.synced.is_set() else "connecting")

    async def aclose(self) -> None:
        pass


class _RelayRemotes:
    def __init__(self, relay: _Relay) -> None:
        self._relay = relay

    @property
    def synced(self) -> asyncio.Event:
        return self._relay.remotes_synced

    async def changes(self) -> AsyncIterator[RemoteEvent]:
        while True:
            yield await self._relay.remote_events.get()

    def status(self) -> ClusterStatus:
        from xdsd.sources.kube import ClusterStatus

        state = self._relay.states.get(None)
        return state.status if state is not None else ClusterStatus("", "connecting")

    def problems(self) -> tuple[RemoteProblem, ...]:
        state = self._relay.states.get(None)
        return state.problems if state is not None else ()

    async def aclose(self) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor dies (Linux), and exit if it is gone already."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit("xdsd worker: the supervisor is gone")


async def run_worker(fd: int, parent: int) -> int:
    """A worker process (`xdsd _worker`): serve xDS with config from the supervisor."""
    _die_with_parent(parent)
    register_pickling()
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    init = await read_message(reader)
    if not isinstance(init, WorkerInit):
        log.error("worker: no settings from the supervisor")
        return 1
    relay = _Relay()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group: the supervisor stops the workers in order.
    loop.add_signal_handler(signal.SIGINT, lambda: None)

    async def follow() -> None:
        while (message := await read_message(reader)) is not None:
            relay.dispatch(message)
        log.warning("worker %d: the supervisor is gone; stopping", init.index)
        stop.set()

    tasks = [asyncio.create_task(follow(), name="from-supervisor")]
    try:
        async with XdsdApp(init.settings, hooks=relay.hooks(init.settings)) as app:

            def siblings(ports: tuple[int, ...]) -> None:
                app.peers.set_siblings([("127.0.0.1", p) for p in ports if p != app.admin_port])

            relay.on_siblings = siblings
            siblings(relay.siblings)
            tasks.append(asyncio.create_task(_report(app, init.index, writer), name="report"))
            log.info(
                "worker %d serving: xDS on %s, admin on http://127.0.0.1:%d",
                init.index,
                ", ".join(str(p) for p in (app.xds_port, app.tls_port) if p >= 0),
                app.admin_port,
            )
            await stop.wait()
            log.info("worker %d: shutting down", init.index)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
    return 0


async def _report(app: XdsdApp, index: int, writer: asyncio.StreamWriter) -> None:
    """Tell the supervisor this worker's state whenever it changes (checked every 0.2 s)."""
    last: WorkerState | None = None
    while True:
        state = WorkerState(
            index, os.getpid(), app.admin_port, app.ready.is_set(), len(app.services.connections)
        )
        if state != last:
            writer.write(frame(state))
            last = state
        await asyncio.sleep(0.2)


# -- the supervisor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    workers: int = 2
    restart_delay: float = 0.5  # first restart delay, doubled up to restart_max_delay
    restart_max_delay: float = 30.0
    stable_after: float = 60.0  # a worker that ran this long restarts after restart_delay again
    # Arguments for each worker's command line (logging options).
    worker_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass(eq=False)
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    state: WorkerState | None = None
    restarts: int = 0
    started_at: float = 0.0
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """Check `port` is free, then hold it (SO_REUSEPORT, not listening): the port."""
    family, _, _, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if port != 0:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as e:
                why = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise OSError(f"cannot listen for xDS on {host}:{port}: {why}") from None
    hold = socket.socket(family, socket.SOCK_STREAM)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        hold.bind(addr)
    except OSError as e:
        hold.close()
        raise OSError(f"cannot listen for xDS on {host}:{port}: {e.strerror or e}") from None
    return hold, int(hold.getsockname()[1])


class Supervisor:
    """`async with Supervisor(settings, WorkerOptions(workers=N)) as s:` runs the config
    sources here and N worker processes serving xDS on the same ports."""

    def __init__(
        self,
        settings: AppSettings,
        options: WorkerOptions,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.registry = registry or CollectorRegistry()
        self.slots = [_Slot(i) for i in range(options.workers)]
        self.app: XdsdApp | None = None
        self.xds: GrpcSettings = settings.xds
        self.webhooks: WebhookSettings | None = settings.webhooks
        self._fanout = _Fanout()
        self._tees: dict[str | None, _TeeSource] = {}
        self._remotes: _TeeRemotes | None = None
        self._holds: list[socket.socket] = []
        self._admin: AdminServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._failed: asyncio.Future[str] | None = None
        self._siblings: tuple[int, ...] = ()  # the admin ports last shipped
        self.m_restarts = Counter(
            "xdsd_worker_restarts",
            "Worker processes restarted after they exited.",
            ["worker"],
            registry=self.registry,
        )
        self.m_workers = Gauge(
            "xdsd_workers_ready", "Worker processes ready to serve.", registry=self.registry
        )

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        return self._admin.port if self._admin is not None else self.settings.admin_port

    @property
    def xds_port(self) -> int:
        return self.xds.port

    @property
    def tls_port(self) -> int:
        return self.xds.tls_port

    async def __aenter__(self) -> Supervisor:
        register_pickling()
        try:
            self.xds = self._reserve_ports()
            self.webhooks = self._reserve_webhook_port()
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        # The supervisor's app reads the sources and keeps the stores (a new worker's
        # state); it serves no proxies and rebuilds snapshots only for --write-status.
        own = dataclasses.replace(
            s,
            admin_port=-1,
            peer_admins=(),  # the workers read the peers' proxies
            security=dataclasses.replace(s.security, authenticate=False),
        )
        hooks = SourceHooks(
            folder=self._tee_folder,
            cluster=self._tee_cluster,
            remotes=self._tee_remotes,
            serve_xds=False,
            push=s.kube and s.write_status,
            fetched=self._ship_fetched,
        )
        self.app = await XdsdApp(own, self.registry, hooks=hooks).__aenter__()
        if s.admin_port >= 0:
            self._admin = await AdminServer(
                _SupervisorView(self),
                s.admin_host,
                s.admin_port,
                remote_debug=s.remote_debug,
                extra={
                    "workers": self._debug_workers,
                    "syncz": lambda: self._gather("syncz"),
                    "adsz": lambda: self._gather("adsz"),
                    "config_dump": self._per_worker,
                    # Every worker reads the same injector config: the first one's.
                    "injectz": lambda: self._first_worker("injectz"),
                    "networkz": lambda: self._first_worker("networkz"),
                },
            ).__aenter__()
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        for slot in self.slots:
            slot.task = asyncio.create_task(self._run_slot(slot), name=f"worker-{slot.index}")
            self._tasks.append(slot.task)
        self._tasks.append(asyncio.create_task(self._ship_states(), name="source-states"))
        # Startup fails fast when a worker cannot start (a bad certificate, ...).
        serving: asyncio.Future[Any] = asyncio.gather(*(s.serving.wait() for s in self.slots))
        waiting: set[asyncio.Future[Any]] = {serving, self._failed}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._failed in done:
            serving.cancel()
            raise RuntimeError(self._failed.result())

    def _reserve_ports(self) -> GrpcSettings:
        x = self.settings.xds

        def reserve(port: int) -> int:
            if port < 0:
                return port
            hold, port = _reserve(x.host, port)
            self._holds.append(hold)
            return port

        return dataclasses.replace(
            x,
            reuse_port=True,
            port=reserve(x.port),
            tls_port=reserve(x.tls_port),
            mtls_port=reserve(x.mtls_port),
        )

    def _reserve_webhook_port(self) -> WebhookSettings | None:
        """The webhooks run in every worker too, on one shared port."""
        w = self.settings.webhooks
        if w is None:
            return None
        hold, port = _reserve(w.host, w.port)
        self._holds.append(hold)
        return dataclasses.replace(w, port=port, reuse_port=True)

    @property
    def webhook_port(self) -> int:
        return self.webhooks.port if self.webhooks is not None else -1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)
        # Workers drain (GOAWAY, then the grace period); then they are killed.
        deadline = self.settings.xds.shutdown_grace_s + 10.0
        procs = [s.process for s in self.slots if s.process is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), deadline)
        for proc in procs:
            if proc.returncode is None:
                log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, deadline)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for writer in self._fanout.links.values():
            writer.close()
        self._fanout.links.clear()
        if self.app is not None:
            await self.app.__aexit__(None, None, None)
            self.app = None
        if self._admin is not None:
            await self._admin.__aexit__(None, None, None)
            self._admin = None
        for hold in self._holds:
            hold.close()
        self._holds.clear()

    def ready(self) -> bool:
        return (
            self.app is not None
            and self.app.ready.is_set()
            and all(s.state is not None and s.state.ready for s in self.slots)
        )

    # -- hooks: the sources, wrapped -----------------------------------------------------------

    def _tee_folder(self, default: Callable[[], FolderSource]) -> FolderLike:
        tee = _TeeSource(default(), None, self._fanout)
        self._tees[None] = tee
        return tee

    def _tee_cluster(self, spec: ClusterSpec, default: Callable[[], Source]) -> Source:
        tee = _TeeSource(default(), spec.cluster_id, self._fanout)
        self._tees[spec.cluster_id] = tee
        return tee

    def _tee_remotes(self, default: Callable[[], RemoteSource]) -> RemoteSource:
        self._remotes = _TeeRemotes(default(), self._fanout)
        return self._remotes

    def _ship_fetched(self, change: ConfigChange) -> None:
        """Fetched JWKS go to the workers' config store, as its source's changes do."""
        s = self.settings
        self._fanout.send(Changed(s.cluster_id if s.kube else None, change))

    def _replay(self) -> list[object]:
        """What a new worker needs before the stream: the current state of everything."""
        app = self.app
        assert app is not None
        out: list[object] = []
        clusters = app.clusters
        if clusters is None:
            tee = self._tees.get(None)
            if tee is not None and tee.synced.is_set():
                out.append(Changed(None, _full_state(app.store)))
            return out
        from xdsd.sources.kube import ClusterAdded

        out += [Remote(ClusterAdded(spec)) for spec in clusters.specs()[1:]]
        stores = {clusters.config_cluster_id: clusters.config_store, **clusters.remote_stores()}
        for st in clusters.status():
            if st["synced"]:
                out.append(Changed(st["cluster"], _full_state(stores[st["cluster"]])))
        out += self._source_states()
        if self._remotes is not None and self._remotes.synced.is_set():
            out.append(RemotesSynced())
        return out

    def _source_states(self) -> list[SourceState]:
        out = []
        clusters = self.app.clusters if self.app is not None else None
        for cid in clusters.cluster_ids() if clusters is not None else []:
            tee = self._tees.get(cid)
            if tee is not None:
                out.append(SourceState(cid, tee.status(), tuple(getattr(tee, "notes", ()))))
        if self._remotes is not None:
            out.append(SourceState(None, self._remotes.status(), (), self._remotes.problems()))
        return out

    async def _ship_states(self) -> None:
        """Connection states change without changes to ship: send them when they do."""
        sent: dict[str | None, SourceState] = {}
        while True:
            for state in self._source_states():
                if sent.get(state.key) != state:
                    self._fanout.send(state)
                    sent[state.key] = state
            await asyncio.sleep(0.5)

    # -- the workers -------------------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        delay = self.options.restart_delay
        while True:
            started = time.monotonic()
            try:
                code = await self._run_worker(slot)
            except OSError as e:
                code = None
                log.error("worker %d could not be started: %s", slot.index, e)
            except Exception:
                code = None
                log.exception("worker %d failed", slot.index)
            if self._stopping:
                return
            if not slot.serving.is_set() and self._failed is not None and not self._failed.done():
                self._failed.set_result(f"worker {slot.index} exited during startup (code {code})")
                return
            if time.monotonic() - started >= self.options.stable_after:
                delay = self.options.restart_delay
            log.warning(
                "worker %d exited (code %s); restarting it in %.1fs", slot.index, code, delay
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            delay = min(delay * 2, self.options.restart_max_delay)
            slot.restarts += 1
            self.m_restarts.labels(str(slot.index)).inc()

    async def _run_worker(self, slot: _Slot) -> int:
        parent, child = socket.socketpair()
        try:
            cmd = [
                sys.executable,
                "-m",
                "xdsd",
                "_worker",
                "--fd",
                str(child.fileno()),
                "--parent",
                str(os.getpid()),
                *self.options.worker_args,
            ]
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, pass_fds=(child.fileno(),)
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        slot.process, slot.state, slot.started_at = proc, None, time.time()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent)
            slot.writer = writer
            # The settings, the current state and then the stream, with no await in
            # between: nothing is missed or sent twice.
            writer.write(frame(WorkerInit(slot.index, self._worker_settings())))
            for message in self._replay():
                writer.write(frame(message))
            self._fanout.links[slot.index] = writer
            while (message := await read_message(reader)) is not None:
                if isinstance(message, WorkerState):
                    slot.state = message
                    slot.serving.set()
                    self.m_workers.set(sum(1 for s in self.slots if s.state and s.state.ready))
                    self._ship_siblings()
            return await proc.wait()
        finally:
            self._fanout.links.pop(slot.index, None)
            if slot.writer is not None:
                # The stream's transport, not only its socket: else it is left to the GC
                # ("unclosed StreamWriter") when the worker ended the link first.
                slot.writer.close()
            slot.writer = None
            slot.state = None
            self.m_workers.set(sum(1 for s in self.slots if s.state and s.state.ready))
            self._ship_siblings()
            parent.close()
            if proc.returncode is None and not self._stopping:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def _ship_siblings(self) -> None:
        """Every worker's admin port to every worker, whenever one comes or changes."""
        ports = tuple(s.state.admin_port for s in self.slots if s.state is not None)
        if ports != self._siblings:
            self._siblings = ports
            self._fanout.send(Siblings(ports))

    def _worker_settings(self) -> AppSettings:
        return dataclasses.replace(
            self.settings,
            xds=self.xds,
            webhooks=self.webhooks,
            admin_host="127.0.0.1",
            admin_port=0,
            write_status=False,
        )

    # -- admin -----------------------------------------------------------------------------------

    async def _debug_workers(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": s.index,
                "pid": s.state.pid if s.state else (s.process.pid if s.process else None),
                "admin_port": s.state.admin_port if s.state else None,
                "ready": bool(s.state and s.state.ready),
                "streams": s.state.streams if s.state else 0,
                "restarts": s.restarts,
                "started_at": s.started_at,
            }
            for s in self.slots
        ]

    async def _per_worker(self) -> dict[str, str]:
        return {"error": _PER_WORKER}

    async def _first_worker(self, what: str) -> dict[str, Any]:
        """A worker's `/debug/<what>`: the first that answers."""
        async with ClientSession(timeout=ClientTimeout(total=5)) as http:
            for s in self.slots:
                if s.state is None:
                    continue
                url = f"http://127.0.0.1:{s.state.admin_port}/debug/{what}"
                try:
                    async with http.get(url) as resp:
                        doc: dict[str, Any] = json.loads(await resp.text())
                        return {"worker": s.index, **doc}
                except (OSError, TimeoutError, ValueError):
                    continue
        return {"error": "no worker answered"}

    async def _gather(self, what: str) -> list[dict[str, Any]]:
        """A per-proxy listing of every worker, each entry with its worker's index."""
        out: list[dict[str, Any]] = []
        async with ClientSession(timeout=ClientTimeout(total=5)) as http:
            for s in self.slots:
                if s.state is None:
                    continue
                url = f"http://127.0.0.1:{s.state.admin_port}/debug/{what}"
                try:
                    async with http.get(url) as resp:
                        rows = json.loads(await resp.text())
                except (OSError, TimeoutError, ValueError) as e:
                    out.append({"worker": s.index, "error": str(e) or type(e).__name__})
                    continue
                out += [{"worker": s.index, **row} for row in rows]
        return out


def _full_state(store: Any) -> ConfigChange:
    files = store.replay()
    kinds = frozenset(o.ref.kind for o in store.objects())
    return ConfigChange(files, kinds, synced=True)


_PER_WORKER = "per worker: see /debug/workers for each worker's admin port"


class _SupervisorView:
    """The supervisor's admin: readiness of all, its own metrics, its clusters."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._s = supervisor

    def is_ready(self) -> bool:
        return self._s.ready()

    def metrics_registry(self) -> CollectorRegistry:
        return self._s.registry

    def syncz(self) -> list[dict[str, Any]]:
        return [{"note": _PER_WORKER}]

    def adsz(self) -> list[dict[str, Any]]:
        return [{"note": _PER_WORKER}]

    def config_dump(self, proxy_id: str) -> dict[str, Any] | None:
        return None

    def configz(self) -> dict[str, Any]:
        return {"note": _PER_WORKER}

    def registryz(self) -> list[dict[str, Any]]:
        return [{"note": _PER_WORKER}]

    def clusterz(self) -> dict[str, Any]:
        app = self._s.app
        return app.clusterz() if app is not None else {}

    def push_status(self) -> dict[str, Any]:
        return {"note": _PER_WORKER, "ready": self._s.ready()}
