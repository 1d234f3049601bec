"""Simulated Envoy proxies on real gRPC ADS streams, for benchmarks/load.py.

Each `SimProxy` opens one ADS stream (state of the world or Delta) and behaves
like Envoy's xDS client, without doing anything with the config:

- CDS first (wildcard); for every CDS response it (re)subscribes EDS to the
  EDS clusters it got (their `service_name`, else the cluster name), then ACKs;
- after the first EDS response it asks for LDS; for every LDS response it
  (re)subscribes RDS to the route names in the listeners' HTTP connection
  managers (`rds.route_config_name`), then ACKs;
- every response is ACKed: SotW with the same names, the response's version
  and nonce; Delta with the nonce (subscription changes go in their own request).

What it records (time.monotonic(), which is system-wide on Linux, so the
driver compares it with its own clock): when it had ACKed all four types
(full config), when it ACKed an RDS response carrying a VirtualService marker
`bench-vs-NNNNNN`, and when it ACKed an EDS response carrying the new address
of a tracked endpoint change. Responses are only looked into where needed:
clusters and listeners are parsed once per version (they are the same bytes
for every proxy of a group) and markers are found by a byte search.

Many proxies run in one asyncio loop per worker process (`worker_main`),
sharing one gRPC channel (one HTTP/2 connection) per `STREAMS_PER_CHANNEL`
streams; the driver talks to each worker over a multiprocessing pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

_PREFIX = "type.googleapis.com/"
CDS = _PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = _PREFIX + "envoy.config.listener.v3.Listener"
RDS = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
TYPES = (CDS, EDS, LDS, RDS)
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = ADS + "StreamAggregatedResources"
DELTA_METHOD = ADS + "DeltaAggregatedResources"
HCM_TYPE = (
    _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

STREAMS_PER_CHANNEL = 100
RETRY_INITIAL_S = 0.5  # Envoy's gRPC mux backoff: 500 ms base, 30 s max, jittered
RETRY_MAX_S = 30.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Every channel its own HTTP/2 connection (grpc shares subchannels by default).
    ("grpc.use_local_subchannel_pool", 1),
]

# Endpoint addresses are 10.1xx.1xx.1xx: always 14 characters, so the floor can
# swap one for another in serialized bytes, and no address is a substring of another.
IP_RE = re.compile(rb"10\.1\d\d\.1\d\d\.1\d\d")
VS_MARK = "bench-vs-{:06d}"
VS_RE = re.compile(rb"bench-vs-(\d{6})")


def pod_ip(n: int) -> str:
    """The n-th endpoint address (n < 1,000,000), fixed length."""
    return f"10.{100 + n // 10000 % 100}.{100 + n // 100 % 100}.{100 + n % 100}"


@dataclass(frozen=True)
class ProxySpec:
    index: int
    node_id: str
    namespace: str
    delta: bool
    klass: str  # proxies of one class get the same config (the floor serves per class)


def class_of_node(node_id: str) -> str:
    """Proxies of one app (pods svc-S-J of service svc-S) or client namespace share a class."""
    parts = node_id.split("~")
    if len(parts) != 4:
        return ""
    pod, _, ns = parts[2].partition(".")
    if pod.startswith("svc-"):
        return pod.rsplit("-", 1)[0]
    return f"clients.{ns}"


def node_metadata(namespace: str) -> dict[str, str]:
    return {"NAMESPACE": namespace, "ISTIO_VERSION": "1.24.0", "CLUSTER_ID": "Kubernetes"}


# -- what the responses say (cached: many proxies get the same bytes) ---------------------


class Decoder:
    """Cluster/listener facts per resource content, shared by a worker's proxies."""

    def __init__(self) -> None:
        self._sotw: dict[tuple[str, str], frozenset[str]] = {}
        self._res: dict[tuple[str, str, str], frozenset[str]] = {}

    def sotw_names(self, resp: Any) -> frozenset[str]:
        """EDS names from a SotW CDS response, RDS names from a SotW LDS response."""
        key = (resp.type_url, resp.version_info)
        got = self._sotw.get(key)
        if got is None:
            out: set[str] = set()
            for any_msg in resp.resources:
                out |= wanted_by(resp.type_url, any_msg.value)
            got = frozenset(out)
            if resp.version_info:
                self._sotw[key] = got
        return got

    def delta_names(self, type_url: str, res: Any) -> frozenset[str]:
        key = (type_url, res.name, res.version)
        got = self._res.get(key)
        if got is None:
            got = wanted_by(type_url, res.resource.value)
            if res.version:
                self._res[key] = got
        return got


def wanted_by(type_url: str, payload: bytes) -> frozenset[str]:
    """The EDS (for a cluster) or RDS (for a listener) names a resource makes Envoy ask for."""
    if type_url == CDS:
        c = cluster_pb2.Cluster.FromString(payload)
        if c.type == cluster_pb2.Cluster.EDS:
            return frozenset({c.eds_cluster_config.service_name or c.name})
        return frozenset()
    if type_url == LDS:
        listener = listener_pb2.Listener.FromString(payload)
        names: set[str] = set()
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM_TYPE:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        names.add(hcm.rds.route_config_name)
        return frozenset(names)
    return frozenset()


def resource_name(type_url: str, payload: bytes) -> str:
    """The name of a serialized resource (for the floor's capture)."""
    if type_url == CDS:
        return cluster_pb2.Cluster.FromString(payload).name
    if type_url == EDS:
        return endpoint_pb2.ClusterLoadAssignment.FromString(payload).cluster_name
    if type_url == LDS:
        return listener_pb2.Listener.FromString(payload).name
    if type_url == RDS:
        return route_pb2.RouteConfiguration.FromString(payload).name
    raise ValueError(type_url)


# -- one proxy ------------------------------------------------------------------------------


@dataclass
class Tracking:
    """What the worker's proxies look for in responses (set by the driver)."""

    ips: dict[bytes, int] = field(default_factory=dict)  # new endpoint address -> event


class SimProxy:
    def __init__(
        self,
        spec: ProxySpec,
        decoder: Decoder,
        tracking: Tracking,
        *,
        keep: bool = False,
    ) -> None:
        self.spec = spec
        self.decoder = decoder
        self.tracking = tracking
        self.keep = keep  # keep the last response's resources per type (capture)
        self.kept: dict[str, dict[str, bytes]] = {}  # type -> name -> payload
        self.t_start = 0.0
        self.t_full: float | None = None
        self.acked: set[str] = set()
        self.vs_seen: dict[int, float] = {}
        self.ip_seen: dict[int, float] = {}
        self.error: str | None = None  # the last stream failure
        self.t_error: float | None = None
        self.debug_error = ""
        self.failures = 0
        self.open = False
        self.done = False
        self.responses = 0
        self.bytes = 0
        # SotW: last version/nonce per type and the names asked for.
        self.version: dict[str, str] = {}
        self.nonce: dict[str, str] = {}
        self.names: dict[str, frozenset[str]] = {}
        # Delta: what each cluster/listener asks for.
        self.wants: dict[str, dict[str, frozenset[str]]] = {CDS: {}, LDS: {}}
        self.lds_requested = False
        self._first = True

    # -- requests ------------------------------------------------------------------------

    def _sotw_request(self, type_url: str, names: Iterable[str] = ()) -> bytes:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self.version.get(type_url, ""),
            response_nonce=self.nonce.get(type_url, ""),
            resource_names=sorted(names),
        )
        self._node(req)
        return req.SerializeToString()

    def _delta_request(
        self,
        type_url: str,
        nonce: str = "",
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
    ) -> bytes:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            response_nonce=nonce,
            resource_names_subscribe=sorted(subscribe),
            resource_names_unsubscribe=sorted(unsubscribe),
        )
        self._node(req)
        return req.SerializeToString()

    def _node(self, req: Any) -> None:
        if self._first:  # Envoy: the node on the first request of a stream only
            self._first = False
            req.node.id = self.spec.node_id
            for k, v in node_metadata(self.spec.namespace).items():
                req.node.metadata[k] = v

    # -- responses -----------------------------------------------------------------------

    def _keep(self, t: str, payloads: list[bytes], full: bool) -> None:
        kept = self.kept.setdefault(t, {})
        if full:
            kept.clear()
        for payload in payloads:
            kept[resource_name(t, payload)] = payload

    def on_sotw(self, raw: bytes) -> tuple[str, list[bytes]]:
        resp = discovery_pb2.DiscoveryResponse.FromString(raw)
        t = resp.type_url
        out: list[bytes] = []
        if self.keep:
            self._keep(t, [a.value for a in resp.resources], t in (CDS, LDS))
        if t in (CDS, LDS):
            sub = EDS if t == CDS else RDS
            wanted = self.decoder.sotw_names(resp)
            if (t == CDS or self.names.get(sub) is not None) and self.names.get(sub) != wanted:
                self.names[sub] = wanted
                out.append(self._sotw_request(sub, wanted))
        self.version[t] = resp.version_info
        self.nonce[t] = resp.nonce
        out.append(self._sotw_request(t, self.names.get(t, ())))
        if t == EDS and not self.lds_requested:
            self.lds_requested = True
            self.names.setdefault(RDS, frozenset())
            out.append(self._sotw_request(LDS))
        return t, out

    def on_delta(self, raw: bytes) -> tuple[str, list[bytes]]:
        resp = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        t = resp.type_url
        out: list[bytes] = []
        if self.keep:
            self._keep(t, [r.resource.value for r in resp.resources], False)
        if t in (CDS, LDS):
            sub = EDS if t == CDS else RDS
            wants = self.wants[t]
            for res in resp.resources:
                wants[res.name] = self.decoder.delta_names(t, res)
            for name in resp.removed_resources:
                wants.pop(name, None)
            wanted = frozenset().union(*wants.values())
            have = self.names.get(sub)
            if have is None or have != wanted:
                have = have or frozenset()
                self.names[sub] = wanted
                out.append(
                    self._delta_request(sub, subscribe=wanted - have, unsubscribe=have - wanted)
                )
        out.append(self._delta_request(t, nonce=resp.nonce))
        if t == EDS and not self.lds_requested:
            self.lds_requested = True
            out.append(self._delta_request(LDS))
        return t, out

    def _observe(self, t: str, raw: bytes, now: float) -> None:
        self.acked.add(t)
        if self.t_full is None and len(self.acked) == 4:
            self.t_full = now
        if t == RDS:
            for m in VS_RE.findall(raw):
                self.vs_seen.setdefault(int(m), now)
        elif t == EDS and self.tracking.ips:
            ips = self.tracking.ips
            for ip in IP_RE.findall(raw):
                ev = ips.get(ip)
                if ev is not None and ev not in self.ip_seen:
                    self.ip_seen[ev] = now

    def _new_stream(self) -> None:
        """Forget the stream's protocol state (a reconnect starts over, as Envoy's does)."""
        self.version.clear()
        self.nonce.clear()
        self.names.clear()
        self.wants = {CDS: {}, LDS: {}}
        self.lds_requested = False
        self._first = True
        if self.t_full is None:
            self.acked.clear()

    async def run(self, channel: grpc.aio.Channel, *, retry: bool = True) -> None:
        """The stream, reopened after a failure with Envoy's jittered exponential backoff
        (500 ms doubling to 30 s) unless `retry` is off."""
        self.t_start = time.monotonic()
        backoff = RETRY_INITIAL_S
        try:
            while True:
                self._new_stream()
                if await self._one_stream(channel):
                    backoff = RETRY_INITIAL_S  # it got somewhere: start the backoff over
                if not retry:
                    return
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, RETRY_MAX_S)
        finally:
            self.done = True
            self.open = False

    async def _one_stream(self, channel: grpc.aio.Channel) -> bool:
        """Run one ADS stream until it fails; True if it had received a response."""
        method = DELTA_METHOD if self.spec.delta else SOTW_METHOD
        call = channel.stream_stream(method)()
        got = False
        try:
            first = self._delta_request(CDS) if self.spec.delta else self._sotw_request(CDS)
            self.open = True
            await call.write(first)
            handle = self.on_delta if self.spec.delta else self.on_sotw
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    self._failed("EOF: stream closed by the server", "")
                    return got
                got = True
                self.responses += 1
                self.bytes += len(raw)
                type_url, out = handle(raw)
                for req in out:
                    await call.write(req)
                self._observe(type_url, raw, time.monotonic())
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as e:
            self._failed(f"{e.code().name}: {e.details()}", e.debug_error_string())
        except Exception as e:  # a bug in the load generator: report it, do not spin
            self._failed(f"{type(e).__name__}: {e}", "")
            call.cancel()
        finally:
            self.open = False
        return got

    def _failed(self, error: str, debug: str) -> None:
        self.failures += 1
        self.error = error
        self.t_error = time.monotonic()
        self.debug_error = debug


async def until(done: Any, deadline: float, step: float = 0.01) -> None:
    """Poll `done()` until it holds or the deadline passes (proxies record their own times;
    this only decides when to answer the driver)."""
    while time.monotonic() < deadline:
        if done():
            return
        await asyncio.sleep(step)


# -- a worker process: many proxies in one loop ------------------------------------------


class Fleet:
    """A worker's proxies, their channels and tasks."""

    def __init__(self, specs: Sequence[ProxySpec], per_channel: int = STREAMS_PER_CHANNEL) -> None:
        self.specs = specs
        self.per_channel = per_channel
        self.tracking = Tracking()
        self.proxies: list[SimProxy] = []
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []

    def connect(self, address: str) -> None:
        """Start every proxy's stream at once (a connect storm); fresh state each time."""
        decoder = Decoder()
        self.tracking.ips = {}
        self.proxies = [SimProxy(s, decoder, self.tracking) for s in self.specs]
        for i, proxy in enumerate(self.proxies):
            if i % self.per_channel == 0:
                self.channels.append(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
            self.tasks.append(asyncio.create_task(proxy.run(self.channels[-1])))

    async def wait(self, cond: Any, deadline: float) -> None:
        await until(lambda: all(cond(p) or p.done for p in self.proxies), deadline)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ch in self.channels:
            await ch.close()
        self.tasks.clear()
        self.channels.clear()

    def stats(self) -> dict[str, Any]:
        errors = [p.error for p in self.proxies if p.error]
        return {
            "proxies": len(self.proxies),
            "full": sum(1 for p in self.proxies if p.t_full is not None),
            "alive": sum(1 for p in self.proxies if p.open),
            "errors": sum(p.failures for p in self.proxies),
            "proxies_failed": len(errors),
            "error_samples": sorted(set(errors))[:3],
            "error_times": sorted(p.t_error for p in self.proxies if p.t_error is not None),
            "error_debug": sorted({p.debug_error[:300] for p in self.proxies if p.debug_error})[:2],
            "responses": sum(p.responses for p in self.proxies),
            "bytes": sum(p.bytes for p in self.proxies),
        }


async def _serve_driver(conn: Any, specs: Sequence[ProxySpec], per_channel: int) -> None:
    loop = asyncio.get_running_loop()
    fleet = Fleet(specs, per_channel)
    try:
        while True:
            cmd, *args = await loop.run_in_executor(None, conn.recv)
            if cmd == "exit":
                return
            if cmd == "connect":
                fleet.connect(args[0])
                reply: Any = "ok"
            elif cmd == "wait_full":
                await fleet.wait(lambda p: p.t_full is not None, args[0])
                reply = [(p.t_start, p.t_full) for p in fleet.proxies]
            elif cmd == "wait_vs":
                mark, deadline = args
                await fleet.wait(lambda p, m=mark: m in p.vs_seen, deadline)
                reply = [p.vs_seen.get(mark) for p in fleet.proxies]
            elif cmd == "track_ips":
                fleet.tracking.ips = dict(args[0])
                for p in fleet.proxies:
                    p.ip_seen.clear()
                reply = "ok"
            elif cmd == "collect_ips":
                per_event: dict[int, list[float]] = {}
                for p in fleet.proxies:
                    for ev, t in p.ip_seen.items():
                        per_event.setdefault(ev, []).append(t)
                    p.ip_seen.clear()
                fleet.tracking.ips = {}
                reply = per_event
            elif cmd == "stats":
                reply = fleet.stats()
            elif cmd == "close":
                await fleet.close()
                reply = "ok"
            else:
                reply = f"unknown command {cmd!r}"
            conn.send(reply)
    finally:
        with contextlib.suppress(Exception):
            await fleet.close()


def worker_main(
    conn: Any, specs: Sequence[ProxySpec], per_channel: int = STREAMS_PER_CHANNEL
) -> None:
    """Entry point of a load worker process (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us, also on Ctrl-C
    with contextlib.suppress(EOFError, BrokenPipeError, KeyboardInterrupt):
        asyncio.run(_serve_driver(conn, specs, per_channel))


# -- capture for the floor ----------------------------------------------------------------


async def capture(address: str, specs: Sequence[ProxySpec], timeout: float) -> dict[str, Any]:
    """Full config of one proxy per class, as {class: {type: [payload, ...]}} (SotW)."""
    decoder = Decoder()
    tracking = Tracking()
    proxies = [SimProxy(s, decoder, tracking, keep=True) for s in specs]
    # Few streams per connection: servers cap concurrent streams (xdsd: 100).
    channels = [
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        for _ in range(0, len(proxies), 50)
    ]
    tasks = [asyncio.create_task(p.run(channels[i // 50])) for i, p in enumerate(proxies)]
    deadline = time.monotonic() + timeout
    try:
        await until(lambda: all(p.t_full is not None or p.done for p in proxies), deadline)
        # Settle: the EDS resend after CDS may come right after the last ACK.
        await asyncio.sleep(0.3)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    missing = [p.spec.node_id for p in proxies if p.t_full is None]
    if missing:
        errs = {p.error for p in proxies if p.error}
        raise RuntimeError(f"capture: {len(missing)} proxies got no full config ({errs})")
    # Equal payloads as one object, so the pickle (and the floor) hold each once.
    interned: dict[bytes, bytes] = {}
    return {
        p.spec.klass: {
            t: {n: interned.setdefault(b, b) for n, b in p.kept.get(t, {}).items()} for t in TYPES
        }
        for p in proxies
    }
