"""gRPC xDS services: ADS (state of the world and Delta) and the per-type services.

The server knows the xDS protocol, not Istio: it asks a `ConfigProvider` to
identify the proxy from its node and for the current resources of a type, and
is told by `notify()` that resources may have changed. All protocol decisions
are the pure functions in `xdsd.server.protocol`; this module only moves bytes.

One task per stream does everything that touches the stream's state (requests
and pushes are queued to it), so no locks are needed and responses on a stream
keep their order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import secrets
import socket
import sys
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from xdsd import __version__
from xdsd.cache import wire
from xdsd.cache.resources import (
    CLUSTER,
    ENDPOINT,
    PUSH_ORDER,
    Resource,
    ResourceSet,
    delta_chunks,
    short_type,
    sotw_chunks,
)
from xdsd.server import protocol as p
from xdsd.server.auth import AuthError, Caller, StreamAuth
from xdsd.server.limits import TokenBucket
from xdsd.server.metrics import XdsMetrics

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
PER_TYPE_SERVICES: Mapping[str, tuple[str, str, str]] = {
    # type URL -> (service, SotW method, Delta method)
    CLUSTER: (
        "envoy.service.cluster.v3.ClusterDiscoveryService",
        "StreamClusters",
        "DeltaClusters",
    ),
    ENDPOINT: (
        "envoy.service.endpoint.v3.EndpointDiscoveryService",
        "StreamEndpoints",
        "DeltaEndpoints",
    ),
    "type.googleapis.com/envoy.config.listener.v3.Listener": (
        "envoy.service.listener.v3.ListenerDiscoveryService",
        "StreamListeners",
        "DeltaListeners",
    ),
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": (
        "envoy.service.route.v3.RouteDiscoveryService",
        "StreamRoutes",
        "DeltaRoutes",
    ),
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": (
        "envoy.service.secret.v3.SecretDiscoveryService",
        "StreamSecrets",
        "DeltaSecrets",
    ),
}


class NodeRejected(Exception):
    """The provider will not serve this node (bad id, not authorized, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProxyWatch(Protocol):
    """The provider's handle on one connected proxy."""

    @property
    def proxy_id(self) -> str: ...

    def resources(self, type_url: str) -> ResourceSet:
        """Current resources of a type for this proxy (empty for unknown types)."""
        ...

    def query_types(self) -> frozenset[str]:
        """Types answered once per request (debug queries), not subscribed to."""
        ...

    def query(self, type_url: str, names: tuple[str, ...], caller: Caller | None) -> list[Resource]:
        """The answer to a query type request from a stream authenticated as `caller`
        (None: authentication off, or the plaintext port)."""
        ...

    def close(self) -> None: ...


class ConfigProvider(Protocol):
    async def wait_ready(self) -> None:
        """Return once the first full config load is done (the readiness gate)."""
        ...

    def open(
        self, node_id: str, metadata: Mapping[str, Any], peer: str, context: Any
    ) -> ProxyWatch:
        """Identify the proxy; raise NodeRejected to refuse the stream."""
        ...


def proxy_version(node: Any, metadata: Mapping[str, Any]) -> str:
    """pilot_xds's version label: the proxy's ISTIO_VERSION (as istiod), else the Envoy
    build a plain Envoy reports ("envoy-1.40.0"), else "unknown" (never an empty label)."""
    istio = metadata.get("ISTIO_VERSION")
    if isinstance(istio, str) and istio:
        return istio
    if node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        name = node.user_agent_name or "envoy"
        return f"{name}-{v.major_number}.{v.minor_number}.{v.patch}"
    return "unknown"


@dataclass
class Connection:
    """One xDS stream, for debug output and pushes. Mutated only by its own task."""

    conn_id: str
    peer: str
    delta: bool
    node_id: str = ""
    proxy_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: str = ""  # pilot_xds's version label (see `proxy_version`)
    # Who the stream authenticated as (None when authentication is off).
    caller: Caller | None = None
    watch: ProxyWatch | None = None
    states: dict[str, p.WatchState] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)
    pushes: int = 0
    # Types to look at on the next push; None means all.
    dirty: set[str] | None = field(default_factory=set)
    # When the oldest change not yet pushed to this stream began (monotonic).
    change_started: float | None = None
    # type URL -> (nonce of a pushed response, when its change began): ACK => converged.
    converging: dict[str, tuple[str, float]] = field(default_factory=dict)
    # type URL -> the set the stream's state was last planned against (in sync with).
    planned: dict[str, ResourceSet] = field(default_factory=dict)
    # SotW: type URL -> the last request's names (see `_names_key`), so that an ACK
    # naming the same 1,000 clusters costs a bytes comparison, not 1,000 strings.
    names: dict[str, RequestedNames] = field(default_factory=dict)
    # Requests and at most one push token, consumed by the stream's task.
    inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    push_queued: bool = False
    queued_at: float = 0.0  # perf_counter() when the queued push was queued
    _nonces: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_nonce(self) -> str:
        return f"{self.conn_id}-{next(self._nonces)}"

    def mark_dirty(self, types: frozenset[str] | None) -> None:
        if types is None:
            self.dirty = None
        elif self.dirty is not None:
            self.dirty |= types
        if not self.push_queued:  # pushes coalesce: never two queued for one stream
            self.push_queued = True
            self.queued_at = time.perf_counter()
            self.inbox.put_nowait(_WAKE)


def instance_id() -> str:
    """This server process's name among replicas (and workers): the pod's name, as
    istiod uses POD_NAME, else the host's; with the process id, so that two xdsd
    processes on one host answer istioctl as two control planes."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}.{os.getpid()}"


def istio_control_plane_identifier(component: str, instance: str, version: str) -> str:
    """ControlPlane.identifier as istiod writes it on `istio.io/debug/syncz` answers
    (pilot/pkg/xds IstioControlPlaneInstance as JSON): istioctl proxy-status reads
    the ID for its ISTIOD column and keys the answers of replicas by it."""
    info = {"version": version, "revision": "", "golang_version": "", "status": "", "tag": ""}
    return json.dumps({"Component": component, "ID": instance, "Info": info})


@dataclass(frozen=True)
class ServerSettings:
    control_plane_id: str = "xdsd"
    # The version debug answers report in their control plane identifier.
    version: str = __version__
    # Responses being written at once, over all streams (istiod PILOT_PUSH_THROTTLE):
    # bounds the bytes queued in gRPC during a push to every proxy.
    push_concurrency: int = 100
    # Responses up to this size are written without a slot: the slots bound the
    # megabytes a push to every proxy queues in gRPC, and waiting behind them made an
    # endpoint change's few hundred bytes wait for the full configs of a storm (the
    # wait is for the proxy to take a write, not for CPU). Streams x this bounds the rest.
    small_response_bytes: int = 16 * 1024
    # A write not taken by the proxy within this time gives its slot back (it goes on
    # without one), so stalled proxies cannot take all the slots. 0: never.
    slow_send_s: float = 1.0
    # New streams over the admission rate wait for their turn up to this long; beyond
    # it they are refused (RESOURCE_EXHAUSTED) and retry with backoff.
    admission_max_wait_s: float = 60.0


_EOF = object()
_WAKE = object()


class XdsServices:
    """The xDS gRPC services, with their connections. Register on a grpc.aio server."""

    def __init__(
        self,
        provider: ConfigProvider,
        metrics: XdsMetrics,
        settings: ServerSettings | None = None,
        *,
        auth: StreamAuth | None = None,
        new_streams: TokenBucket | None = None,
    ) -> None:
        self.provider = provider
        self.metrics = metrics
        self.settings = settings or ServerSettings()
        # Authentication at stream start, authorization of the node (None: off).
        self.auth = auth
        # New streams per second; over the limit a stream ends RESOURCE_EXHAUSTED.
        self.new_streams = new_streams
        self._control_plane = wire.control_plane(self.settings.control_plane_id)
        # Debug answers (syncz, config_dump) name the instance the way istiod does.
        self._debug_control_plane = wire.control_plane(
            istio_control_plane_identifier(
                self.settings.control_plane_id, instance_id(), self.settings.version
            )
        )
        self.connections: dict[str, Connection] = {}
        # The names SotW streams request, shared by the streams that request the same.
        self.requested_names: weakref.WeakValueDictionary[bytes, RequestedNames] = (
            weakref.WeakValueDictionary()
        )
        self._send_slots = asyncio.Semaphore(max(1, self.settings.push_concurrency))
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)

    # -- registration -----------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def stream(delta: bool, types: frozenset[str] | None) -> Any:
            async def handler(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> None:
                # Written one at a time through the bounded send slots: the stream makes
                # its next response only once the proxy took the previous one.
                responses = self._stream(requests, context, delta=delta, only=types)
                try:
                    async for out in responses:
                        written = await self._write(context, out)
                        # Not held while the stream waits for its next push: a
                        # response is up to megabytes, and there are thousands of streams.
                        del out
                        if not written:
                            return
                finally:
                    await responses.aclose()

            return grpc.stream_stream_rpc_method_handler(
                handler,
                request_deserializer=(
                    discovery_pb2.DeltaDiscoveryRequest.FromString if delta else _RawSotw
                ),
                response_serializer=_identity,
            )

        def sotw(types: frozenset[str] | None) -> Any:
            return stream(False, types)

        def delta(types: frozenset[str] | None) -> Any:
            return stream(True, types)

        out = [
            grpc.method_handlers_generic_handler(
                ADS_SERVICE,
                {
                    "StreamAggregatedResources": sotw(None),
                    "DeltaAggregatedResources": delta(None),
                },
            )
        ]
        for type_url, (service, sotw_method, delta_method) in PER_TYPE_SERVICES.items():
            only = frozenset({type_url})
            out.append(
                grpc.method_handlers_generic_handler(
                    service, {sotw_method: sotw(only), delta_method: delta(only)}
                )
            )
        return out

    async def _write(self, context: grpc.aio.ServicerContext, data: bytes) -> bool:
        """Write one response; False when the stream broke (the handler then ends)."""
        if len(data) <= self.settings.small_response_bytes:
            return await self._send(context, data)
        slots = self._send_slots
        if slots.locked():
            waited = time.perf_counter()
            await slots.acquire()
            self.metrics.send_wait.observe(time.perf_counter() - waited)
        else:
            await slots.acquire()
        held = True

        def give_back(slow: bool) -> None:
            nonlocal held
            if held:
                held = False
                slots.release()
                if slow:
                    # A proxy not reading: the write goes on without a slot, so a stalled
                    # proxy cannot hold one. Its stream makes nothing else meanwhile (one
                    # response in flight; later pushes merge into the next, newest wins).
                    self.metrics.slow_sends.inc()
                    log.info("slow xDS stream %s: a response waits for the proxy", context.peer())

        timer = (
            asyncio.get_running_loop().call_later(self.settings.slow_send_s, give_back, True)
            if self.settings.slow_send_s > 0
            else None
        )
        try:
            return await self._send(context, data)
        finally:
            if timer is not None:
                timer.cancel()
            give_back(False)

    async def _send(self, context: grpc.aio.ServicerContext, data: bytes) -> bool:
        try:
            await context.write(data)
        except asyncio.CancelledError:
            raise
        except Exception:  # the call was cancelled or broke under the write
            return False
        self.metrics.bytes_sent.inc(len(data))
        return True

    # -- pushes -----------------------------------------------------------------------

    def notify(
        self,
        types: frozenset[str] | None = None,
        only: Callable[[Connection], bool] | None = None,
        *,
        since: float | None = None,
    ) -> int:
        """Tell streams that resources may have changed; returns how many were woken.

        `since` (time.monotonic()) is when the change began; the time until each
        proxy ACKs what the push sent is pilot_proxy_convergence_time.
        """
        woken = 0
        started = time.monotonic() if since is None else since
        for conn in self.connections.values():
            if conn.watch is not None and (only is None or only(conn)):
                if conn.change_started is None:
                    conn.change_started = started
                conn.mark_dirty(types)
                woken += 1
        return woken

    # -- the stream -------------------------------------------------------------------

    async def _stream(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        *,
        delta: bool,
        only: frozenset[str] | None,
    ) -> AsyncGenerator[bytes, None]:
        conn = Connection(f"{self._prefix}-{next(self._ids)}", context.peer(), delta)
        inbox = conn.inbox
        reader = asyncio.create_task(_pump(requests, inbox), name=f"xds-read-{conn.conn_id}")
        try:
            if self.new_streams is not None:
                wait = self.new_streams.reserve(self.settings.admission_max_wait_s)
                if wait is None:
                    raise NodeRejected(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "too many new streams; retry later"
                    )
                if wait > 0:  # admitted at the bucket's rate, in arrival order
                    self.metrics.admission_wait.observe(wait)
                    await asyncio.sleep(wait)
            if self.auth is not None:
                conn.caller = await self.auth.authenticate(context, "xDS stream")
            await self.provider.wait_ready()
            while True:
                item = await inbox.get()
                if item is _EOF:
                    return
                if isinstance(item, BaseException):
                    raise item
                outs = (
                    self._push(conn)
                    if item is _WAKE
                    else self._on_request(conn, item, context, only)
                )
                del item
                # Popped, not bound to a name: nothing here keeps the last response
                # alive while the stream waits in inbox.get().
                while outs:
                    yield outs.pop(0)
        except NodeRejected as e:
            self.metrics.refused_streams.labels(reason=e.code.name.lower()).inc()
            log.warning("refused xDS stream from %s: %s", conn.peer, e.message)
            await context.abort(e.code, e.message)
        except AuthError as e:  # logged and counted by StreamAuth
            self.metrics.refused_streams.labels(reason=e.code.name.lower()).inc()
            await context.abort(e.code, e.message)
        finally:
            reader.cancel()
            self._disconnect(conn)

    def _connect(self, conn: Connection, node: Any, context: grpc.aio.ServicerContext) -> None:
        if not node.id:
            raise NodeRejected(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request on a stream must carry node.id"
            )
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        if self.auth is not None:
            self.auth.authorize(conn.caller, node.id, metadata, conn.peer)
        watch = self.provider.open(node.id, metadata, conn.peer, context)
        conn.node_id = node.id
        conn.metadata = metadata
        conn.watch = watch
        conn.proxy_id = watch.proxy_id
        self.connections[conn.conn_id] = conn
        conn.version = proxy_version(node, metadata)
        self.metrics.connected.labels(version=conn.version).inc()
        log.info(
            "proxy %s connected (%s, %s)",
            conn.proxy_id,
            "delta" if conn.delta else "sotw",
            conn.peer,
        )

    def _disconnect(self, conn: Connection) -> None:
        if self.connections.pop(conn.conn_id, None) is None:
            return
        self.metrics.connected.labels(version=conn.version).dec()
        if conn.watch is not None:
            conn.watch.close()
        log.info("proxy %s disconnected", conn.proxy_id)

    def _on_request(
        self,
        conn: Connection,
        msg: Any,
        context: grpc.aio.ServicerContext,
        only: frozenset[str] | None,
    ) -> list[bytes]:
        raw = None
        if isinstance(msg, _RawSotw):
            raw, msg = msg.data, msg.msg
        if conn.watch is None:
            self._connect(conn, msg.node, context)
        type_url = msg.type_url
        if not type_url and only is not None and len(only) == 1:
            type_url = next(iter(only))  # per-type services may leave it out
        if only is not None and type_url not in only:
            raise NodeRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"type {type_url!r} cannot be requested on this service",
            )
        state = conn.states.get(type_url)
        if conn.delta:
            state, decision = p.on_delta_request(state, _delta_request(type_url, msg))
        else:
            state, decision = p.on_sotw_request(
                state, _sotw_request(type_url, msg, raw, conn, self.requested_names)
            )
        conn.states[type_url] = state
        short = short_type(type_url)
        if decision.verdict is p.Verdict.NACK and state.nack is not None:
            self.metrics.rejects.labels(type=short).inc()
            log.warning(
                "proxy %s rejected %s version %s: %s",
                conn.proxy_id,
                short,
                state.nack.version,
                state.nack.message,
            )
        elif decision.verdict is p.Verdict.STALE:
            self.metrics.expired_nonce.labels(type=short).inc()
        if decision.verdict is not p.Verdict.STALE and msg.response_nonce:
            pending = conn.converging.get(type_url)
            if pending is not None and pending[0] == msg.response_nonce:
                del conn.converging[type_url]
                if decision.verdict is not p.Verdict.NACK:
                    self.metrics.convergence.observe(time.monotonic() - pending[1])
        if not decision.respond:
            return []
        if not conn.delta and conn.watch is not None and type_url in conn.watch.query_types():
            return [self._answer_query(conn, type_url, tuple(msg.resource_names))]
        return self._send_types(conn, [type_url], force={type_url: decision.force})

    def _answer_query(self, conn: Connection, type_url: str, names: tuple[str, ...]) -> bytes:
        """A one-shot answer (debug types): not a subscription, never pushed again."""
        assert conn.watch is not None
        resources = conn.watch.query(type_url, names, conn.caller)
        nonce = conn.next_nonce()
        version = str(int(time.time() * 1000))
        conn.states[type_url] = dataclasses.replace(
            conn.states[type_url], nonce=nonce, version=version, responded=True
        )
        return wire.sotw_response(
            version=version,
            type_url=type_url,
            nonce=nonce,
            resource_fields=sotw_chunks(resources),
            control_plane=self._debug_control_plane,
        )

    def _push(self, conn: Connection) -> list[bytes]:
        dirty = conn.dirty
        conn.dirty = set()
        conn.push_queued = False
        self.metrics.queue_time.observe(time.perf_counter() - conn.queued_at)
        started, conn.change_started = conn.change_started, None
        if conn.watch is None:
            return []
        queries = conn.watch.query_types()
        watched = [t for t in PUSH_ORDER if t in conn.states] + sorted(
            t for t in conn.states if t not in PUSH_ORDER and t not in queries
        )
        if dirty is not None:
            watched = [t for t in watched if t in dirty or (t == ENDPOINT and CLUSTER in dirty)]
        out = self._send_types(conn, watched, force={}, started=started)
        if out:
            conn.pushes += 1
        return out

    def _send_types(
        self,
        conn: Connection,
        types: list[str],
        force: Mapping[str, frozenset[str] | None],
        started: float | None = None,
    ) -> list[bytes]:
        assert conn.watch is not None
        out: list[bytes] = []
        for type_url in types:
            t0 = time.perf_counter()
            state = conn.states[type_url]
            resources = conn.watch.resources(type_url)
            kind_force = force.get(type_url, frozenset())
            only: frozenset[str] | None = None
            last = conn.planned.get(type_url)
            if last is not None and not kind_force and not state.resend and not state.resend_all:
                if resources is last:
                    continue  # the stream already holds exactly this set
                only = changed_since(resources, last)
            conn.planned[type_url] = resources
            nonce = conn.next_nonce()
            data: bytes | None = None
            if conn.delta:
                state, dreply = p.plan_delta(
                    state, resources, nonce=nonce, force=kind_force, only=only
                )
                if dreply is not None:
                    data = wire.delta_response(
                        system_version=resources.version,
                        type_url=type_url,
                        nonce=nonce,
                        resource_fields=delta_chunks(dreply.resources),
                        removed=list(dreply.removed),
                        control_plane=self._control_plane,
                    )
                    sent_names = {r.name for r in dreply.resources}
            else:
                state, sreply = p.plan_sotw(
                    state, resources, nonce=nonce, force=kind_force, only=only
                )
                if sreply is not None:
                    data = wire.sotw_response(
                        version=sreply.version,
                        type_url=type_url,
                        nonce=nonce,
                        resource_fields=sotw_chunks(sreply.resources),
                        control_plane=self._control_plane,
                    )
                    sent_names = {r.name for r in sreply.resources}
            conn.states[type_url] = state
            if data is None:
                continue
            out.append(data)
            short = short_type(type_url)
            per_type = self.metrics.by_type(short)
            per_type.push_time.observe(time.perf_counter() - t0)
            if started is not None:
                conn.converging[type_url] = (nonce, started)
            per_type.pushes.inc()
            per_type.config_size.observe(len(data))
            if type_url == CLUSTER and sent_names and ENDPOINT in conn.states:
                # Updated clusters warm until their endpoints arrive again: resend
                # them, right after the clusters (Envoy and istiod do the same).
                conn.states[ENDPOINT] = p.mark_resend(conn.states[ENDPOINT], None)
                if ENDPOINT not in types:
                    types.insert(types.index(type_url) + 1, ENDPOINT)
        return out


def changed_since(rset: ResourceSet, last: ResourceSet, depth: int = 8) -> frozenset[str] | None:
    """Names that can differ between `last` and `rset`, when `rset` was patched from it
    (a few generations back at most); None when unknown."""
    changed: set[str] = set()
    cur = rset
    for _ in range(depth):
        base = cur.base
        if base is None:
            return None
        changed |= cur.changed
        if base is last:
            return frozenset(changed)
        cur = base
    return None


def _identity(data: bytes) -> bytes:
    return data


async def _pump(requests: AsyncIterator[Any], inbox: asyncio.Queue[Any]) -> None:
    try:
        async for msg in requests:
            inbox.put_nowait(msg)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the stream broke: hand the error to the stream task
        inbox.put_nowait(e)
        return
    inbox.put_nowait(_EOF)


def _error(msg: Any) -> tuple[int, str] | None:
    if msg.HasField("error_detail"):
        return (msg.error_detail.code, msg.error_detail.message)
    return None


class _RawSotw:
    """A DiscoveryRequest with the bytes it was read from."""

    __slots__ = ("data", "msg")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.msg = discovery_pb2.DiscoveryRequest.FromString(data)


class RequestedNames:
    """The resource names of a SotW request, by the bytes that encode them (`_names_key`).

    Shared: the streams of a group request the same 1,000 names; one tuple and one set
    for all of them instead of 1,000 strings per stream (~130 KiB each).
    """

    __slots__ = ("__weakref__", "key", "name_set", "names")

    def __init__(self, key: bytes, names: tuple[str, ...]) -> None:
        self.key = key
        self.names = names
        self.name_set = frozenset(n for n in names if n != p.WILDCARD)


def _sotw_request(
    type_url: str,
    msg: Any,
    raw: bytes | None = None,
    conn: Connection | None = None,
    shared: MutableMapping[bytes, RequestedNames] | None = None,
) -> p.SotwRequest:
    key = _names_key(raw, msg) if raw is not None and conn is not None else None
    found: RequestedNames | None = None
    if key is not None and conn is not None:
        found = conn.names.get(type_url)
        if found is None or found.key != key:
            found = shared.get(key) if shared is not None else None
            if found is None:
                found = RequestedNames(key, tuple(map(sys.intern, msg.resource_names)))
                if shared is not None:
                    shared[key] = found
            conn.names[type_url] = found
    if found is not None:
        names, name_set = found.names, found.name_set
    else:
        names = tuple(msg.resource_names)
        name_set = frozenset(n for n in names if n != p.WILDCARD)
    return p.SotwRequest(
        type_url=type_url,
        version_info=msg.version_info,
        names=names,
        nonce=msg.response_nonce,
        error=_error(msg),
        name_set=name_set,
    )


# DiscoveryRequest fields around the resource names (3): the leading ones by their
# one-byte tags (number << 3 | length-delimited), the tail ones by number.
_REQ_VERSION_TAG, _REQ_NODE_TAG = 0x0A, 0x12
_REQ_TYPE_URL, _REQ_NONCE, _REQ_ERROR_DETAIL = 4, 5, 6


def _names_key(data: bytes, msg: Any) -> bytes | None:
    """The bytes of a DiscoveryRequest that hold its resource names, or None.

    Encoders write fields in number order: version_info (1) and node (2), then the
    names (3), then type_url (4), response_nonce (5) and error_detail (6). The key is
    what is left between leading fields 1 and 2 and a tail that must be exactly the
    encoding of fields 4-6 as parsed: every resource name is in it, so two requests
    with the same key name the same resources. Anything else (another order, field 7,
    an encoding of error_detail other than ours): None, and the names are read.
    """
    if len(msg.resource_locators):
        return None
    pos, end = 0, len(data)
    for tag in (_REQ_VERSION_TAG, _REQ_NODE_TAG):
        if pos < end and data[pos] == tag:
            length, pos = _varint(data, pos + 1)
            pos += length
    tail = wire.field_str(_REQ_TYPE_URL, msg.type_url) + wire.field_str(
        _REQ_NONCE, msg.response_nonce
    )
    if msg.HasField("error_detail"):
        tail += wire.field_bytes(_REQ_ERROR_DETAIL, msg.error_detail.SerializeToString())
    if pos > end - len(tail) or not data.endswith(tail):
        return None
    return data[pos : end - len(tail)]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return len(data), pos  # truncated: past the end, so no key


def _delta_request(type_url: str, msg: Any) -> p.DeltaRequest:
    return p.DeltaRequest(
        type_url=type_url,
        subscribe=tuple(map(sys.intern, msg.resource_names_subscribe)),
        unsubscribe=tuple(msg.resource_names_unsubscribe),
        initial_versions=dict(msg.initial_resource_versions),
        nonce=msg.response_nonce,
        error=_error(msg),
    )
