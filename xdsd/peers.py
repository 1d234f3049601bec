"""The proxies of the other replicas, for `istio.io/debug/syncz` (istioctl proxy-status).

istiod answers proxy-status with its own proxies only, so `istioctl proxy-status
--xds-address` against one replica behind a load balancer shows a random part of
the mesh (istio/istio#37217). xdsd replicas started with `--peer-admin HOST:PORT`
(repeatable; a name resolving to every replica, such as a headless Service, counts
for all its addresses) read each other's `/debug/syncz` every few seconds and add
the peers' proxies to their own answer. The peers' admin ports must answer remote
clients (`--remote-debug`, on a network only the replicas reach).

The workers of `serve --workers N` are each other's peers the same way: the
supervisor tells every worker its siblings' loopback admin addresses
(`set_siblings`), so the worker a connection lands on answers for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class PeerSyncz:
    """Polls the peers' /debug/syncz; `entries()` are the fresh ones, by peer."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        interval: float = DEFAULT_INTERVAL_S,
        timeout: float = 2.0,
        own_addresses: Callable[[], set[tuple[str, int]]] = set,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers = tuple(peers)
        self.interval = interval
        self.timeout = timeout
        self._own = own_addresses
        self._clock = clock
        self._siblings: tuple[tuple[str, int], ...] = ()
        self._latest: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._entered = False
        self.errors: dict[str, str] = {}

    def set_siblings(self, addresses: Sequence[tuple[str, int]]) -> None:
        """The other workers' admin addresses (they change as workers restart)."""
        before = {_url(*a) for a in self._siblings}
        self._siblings = tuple(addresses)
        for url in before - {_url(*a) for a in self._siblings}:
            # A restarted worker's old port: its proxies went with it.
            self._latest.pop(url, None)
            self.errors.pop(url, None)
        self._start()

    def entries(self) -> list[dict[str, Any]]:
        """The proxies the peers reported within the last three intervals."""
        now = self._clock()
        out: list[dict[str, Any]] = []
        for url, (at, items) in sorted(self._latest.items()):
            if now - at <= 3 * self.interval:
                out.extend(dict(item, peer=url) for item in items)
        return out

    async def _targets(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        own = self._own()
        out: list[tuple[str, int]] = []
        for peer in self.peers:
            host, _, port_text = peer.rpartition(":")
            host = host.strip("[]")
            try:
                port = int(port_text)
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (ValueError, OSError) as e:
                self.errors[peer] = f"cannot resolve: {e}"
                continue
            for info in infos:
                addr = (str(info[4][0]), port)
                if addr not in own and addr not in out:
                    out.append(addr)
        out += [a for a in self._siblings if a not in own and a not in out]
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        for host, port in await self._targets():
            url = _url(host, port)
            try:
                async with session.get(f"{url}/debug/syncz") as r:
                    if r.status != 200:
                        raise ValueError(f"HTTP {r.status}")
                    doc = await r.json()
                if not isinstance(doc, list):
                    raise ValueError("not a list")
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                if self.errors.get(url) is None:
                    log.warning("peer %s: cannot read its proxies (%s)", url, e)
                self.errors[url] = str(e) or type(e).__name__
                continue
            self.errors.pop(url, None)
            self._latest[url] = (self._clock(), [d for d in doc if isinstance(d, dict)])

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.poll_once(session)
                await asyncio.sleep(self.interval)

    def _start(self) -> None:
        if self._entered and self._task is None and (self.peers or self._siblings):
            self._task = asyncio.create_task(self._run(), name="peer-syncz")

    async def __aenter__(self) -> PeerSyncz:
        self._entered = True
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._entered = False
