#!/usr/bin/env python3
"""The floor for benchmarks/load.py: the least an ADS server in grpc.aio can do.

    python benchmarks/floor.py --capture FILE --port P

It serves SotW and Delta ADS streams with pre-serialized resources captured
from xdsd (one proxy per class: see loadgen.capture), computes nothing, and
pushes a new version when told on stdin, one command per line:

    eds OLD_ADDRESS NEW_ADDRESS   every EDS resource holding OLD gets NEW instead
    rds OLD_MARKER NEW_MARKER     the same for RDS resources (a VirtualService edit)

Addresses and markers have fixed lengths, so swapping them in the serialized
bytes keeps every length prefix valid: the pushed bytes are what xdsd would
send, minus the work of computing them. Changed resources go to every stream
subscribed to them (SotW: the changed EDS/RDS resources by name, as xdsd does;
Delta: the changed resources); like xdsd, a stream never has two pushes
queued: changes that arrive meanwhile merge into the pending one. ACKs and NACKs are read and ignored. It prints
"ready" on stdout once it listens, and stops on EOF of stdin or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import pickle
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import CDS, EDS, LDS, RDS, class_of_node

WILDCARD_TYPES = (CDS, LDS)
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


# -- protobuf framing (the same bytes xdsd's cache builds) ---------------------------------


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _head(num: int, length: int) -> bytes:
    return _varint(num << 3 | 2) + _varint(length)


@dataclass(frozen=True)
class Res:
    name: str
    version: str
    sotw: bytes  # DiscoveryResponse.resources entry (an Any)
    delta: bytes  # DeltaDiscoveryResponse.resources entry (a Resource)

    @classmethod
    def make(cls, type_url: str, name: str, payload: bytes) -> Res:
        version = hashlib.blake2b(payload, digest_size=8).hexdigest()
        any_msg = _field(1, type_url.encode()) + _field(2, payload)
        resource = _field(1, version.encode()) + _field(2, any_msg) + _field(3, name.encode())
        return cls(name, version, _field(2, any_msg), _field(2, resource))


# -- the served state ----------------------------------------------------------------------


class Floor:
    def __init__(self, captured: dict[str, dict[str, dict[str, bytes]]]) -> None:
        # class -> type -> name -> Res; payloads equal across classes share one Res.
        self.tables: dict[str, dict[str, dict[str, Res]]] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self._payloads: dict[tuple[str, str], bytes] = {}  # (type, name) kept for swaps
        interned: dict[tuple[str, str, bytes], Res] = {}
        for klass, types in captured.items():
            self.tables[klass] = {}
            for type_url, items in types.items():
                table = self.tables[klass][type_url] = {}
                for name, payload in items.items():
                    key = (type_url, name, payload)
                    if key not in interned:
                        interned[key] = Res.make(type_url, name, payload)
                    table[name] = interned[key]
        self._raw: dict[int, bytes] = {id(r): k[2] for k, r in interned.items()}
        self.streams: set[Stream] = set()
        self.default_class = next(iter(self.tables))
        self._versions: dict[tuple[str, str], str] = {}

    def version(self, klass: str, type_url: str) -> str:
        """A content hash of a class's resources of a type (as xdsd's set versions)."""
        key = (klass, type_url)
        v = self._versions.get(key)
        if v is None:
            h = hashlib.blake2b(digest_size=8)
            for name, res in sorted(self.tables[klass].get(type_url, {}).items()):
                h.update(f"{name}\0{res.version}\n".encode())
            v = self._versions[key] = h.hexdigest()
        return v

    def swap(self, type_url: str, old: bytes, new: bytes) -> frozenset[str]:
        """Replace `old` by `new` in every resource of the type; the changed names."""
        changed: set[str] = set()
        done: dict[int, Res] = {}
        for table in self.tables.values():
            resources = table.get(type_url, {})
            for name, res in list(resources.items()):
                hit = done.get(id(res))
                if hit is None:
                    payload = self._raw[id(res)]
                    if old not in payload:
                        continue
                    hit = Res.make(type_url, name, payload.replace(old, new))
                    self._raw[id(hit)] = payload.replace(old, new)
                    done[id(res)] = hit
                resources[name] = hit
                changed.add(name)
        for key in [k for k in self._versions if k[1] == type_url]:
            del self._versions[key]
        return frozenset(changed)

    def push(self, type_url: str, names: frozenset[str]) -> None:
        for stream in self.streams:
            stream.wake(type_url, names)


@dataclass(eq=False)
class Stream:
    floor: Floor
    delta: bool
    klass: str = ""
    inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    names: dict[str, frozenset[str] | None] = field(default_factory=dict)  # None: wildcard
    nonces: Any = field(default_factory=lambda: itertools.count(1))

    # Changes not yet sent, by type; at most one wake-up queued (newest wins: a
    # stream that falls behind gets the current bytes of everything changed, once).
    pending: dict[str, set[str]] = field(default_factory=dict)
    queued: bool = False

    def wake(self, type_url: str, names: frozenset[str]) -> None:
        self.pending.setdefault(type_url, set()).update(names)
        if not self.queued:
            self.queued = True
            self.inbox.put_nowait(_WAKE)

    def on_wake(self) -> list[bytes]:
        pending, self.pending, self.queued = self.pending, {}, False
        out = []
        for type_url, names in pending.items():
            data = self.on_push(type_url, frozenset(names))
            if data is not None:
                out.append(data)
        return out

    def table(self, type_url: str) -> dict[str, Res]:
        return self.floor.tables[self.klass].get(type_url, {})

    def response(self, type_url: str, chosen: list[Res]) -> bytes:
        version = self.floor.version(self.klass, type_url).encode()
        nonce = str(next(self.nonces)).encode()
        if self.delta:
            return b"".join(
                (
                    _field(1, version),
                    *(r.delta for r in chosen),
                    _field(4, type_url.encode()),
                    _field(5, nonce),
                )
            )
        return b"".join(
            (
                _field(1, version),
                *(r.sotw for r in chosen),
                _field(4, type_url.encode()),
                _field(5, nonce),
            )
        )

    def select(self, type_url: str, names: frozenset[str] | None) -> list[Res]:
        table = self.table(type_url)
        if names is None:
            return list(table.values())
        return [r for n in sorted(names) if (r := table.get(n)) is not None]

    def on_request(self, msg: Any) -> bytes | None:
        if not self.klass:
            self.klass = class_of_node(msg.node.id)
            if self.klass not in self.floor.tables:
                self.klass = self.floor.default_class
        t = msg.type_url
        if self.delta:
            subscribe = frozenset(msg.resource_names_subscribe)
            current = self.names.get(t, frozenset())
            first = t not in self.names
            if first and t in WILDCARD_TYPES and (not subscribe or "*" in subscribe):
                self.names[t] = None
                return self.response(t, self.select(t, None))
            if not subscribe and not msg.resource_names_unsubscribe:
                return None  # an ACK or NACK
            kept = (current or frozenset()) - frozenset(msg.resource_names_unsubscribe)
            self.names[t] = None if current is None else kept | subscribe
            return self.response(t, self.select(t, subscribe)) if subscribe else None
        names = frozenset(msg.resource_names)
        wanted = None if t in WILDCARD_TYPES and not names else names
        if msg.response_nonce and self.names.get(t, ()) == wanted:
            return None  # ACK / NACK
        self.names[t] = wanted
        return self.response(t, self.select(t, wanted))

    def on_push(self, type_url: str, changed: frozenset[str]) -> bytes | None:
        if type_url not in self.names:
            return None
        subscribed = self.names[type_url]
        names = changed if subscribed is None else changed & subscribed
        if not names:
            return None
        return self.response(type_url, self.select(type_url, names))


_EOF = object()
_WAKE = object()


async def _pump(requests: AsyncIterator[Any], inbox: asyncio.Queue[Any]) -> None:
    try:
        async for msg in requests:
            inbox.put_nowait(msg)
    finally:
        inbox.put_nowait(_EOF)


def handlers(floor: Floor) -> list[grpc.GenericRpcHandler]:
    def make(delta: bool) -> Any:
        async def handler(requests: AsyncIterator[Any], context: Any) -> None:
            stream = Stream(floor, delta)
            floor.streams.add(stream)
            reader = asyncio.create_task(_pump(requests, stream.inbox))
            try:
                while True:
                    item = await stream.inbox.get()
                    if item is _EOF:
                        return
                    if item is _WAKE:
                        outs = list(stream.on_wake())
                    else:
                        out = stream.on_request(item)
                        outs = [] if out is None else [out]
                        del out
                    del item
                    # As xdsd: written one at a time, and not held while waiting.
                    while outs:
                        await context.write(outs.pop(0))
            finally:
                reader.cancel()
                floor.streams.discard(stream)

        req = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        return grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=req.FromString, response_serializer=lambda b: b
        )

    return [
        grpc.method_handlers_generic_handler(
            SERVICE,
            {"StreamAggregatedResources": make(False), "DeltaAggregatedResources": make(True)},
        )
    ]


async def serve(captured: dict[str, Any], port: int) -> None:
    floor = Floor(captured)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            # As xdsd: gRPC's default cancels new streams past 1,000 waiting.
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 40_000),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(handlers(floor))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise SystemExit(f"floor: cannot listen on port {port}")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)

    async def commands() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                stop.set()
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] in ("eds", "rds"):
                type_url = EDS if parts[0] == "eds" else RDS
                changed = floor.swap(type_url, parts[1].encode(), parts[2].encode())
                floor.push(type_url, changed)

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await server.stop(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--capture", type=Path, required=True, help="pickle from loadgen.capture")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(pickle.loads(args.capture.read_bytes()), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
