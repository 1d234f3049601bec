"""Debounce: wait for a quiet period (bounded by a max delay), then push once.

Like istiod's debounce: changes that arrive close together become one push,
and only one push computation is in flight at a time. The clock and the sleep
are injected so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from xdsd.push.request import PushRequest

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class DebounceSettings:
    quiet: float = 0.1  # seconds without a new change before pushing (istiod: 100ms)
    max_delay: float = 10.0  # push at the latest this long after the first change (istiod: 10s)
    # The quiet period while only endpoints changed. istiod debounces them like any
    # change (PILOT_ENABLE_EDS_DEBOUNCE); here an endpoint push is cheap (only the
    # changed assignments, to the streams holding them), and with pods replaced ~10/s
    # a 100 ms quiet period merges replacements and delays each by a window or more.
    # Short enough for that, long enough to take a replacement's few watch events
    # (new Pod, EndpointSlice, old Pod deleted) as one push. Never above `quiet`.
    endpoint_quiet: float = 0.02

    def __post_init__(self) -> None:
        if self.quiet < 0 or self.max_delay < self.quiet:
            raise ValueError(
                f"debounce: need 0 <= quiet ({self.quiet}) <= max_delay ({self.max_delay})"
            )
        if self.endpoint_quiet < 0:
            raise ValueError(f"debounce: need 0 <= endpoint quiet ({self.endpoint_quiet})")


class Debouncer:
    def __init__(
        self,
        fire: Callable[[PushRequest, float], Awaitable[None]],
        settings: DebounceSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`fire(request, waited_seconds)` runs the push; it is never run concurrently."""
        self._fire = fire
        self.settings = settings or DebounceSettings()
        self._clock = clock
        self._sleep = sleep
        self._pending: PushRequest | None = None
        self._first = 0.0
        self._last = 0.0
        self._arrived = asyncio.Event()
        self.pushes = 0

    def request(self, req: PushRequest) -> None:
        now = self._clock()
        if self._pending is None:
            self._pending = req
            self._first = now
        else:
            self._pending = self._pending.merge(req)
        self._last = now
        self._arrived.set()

    @property
    def pending(self) -> PushRequest | None:
        return self._pending

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            await self._arrived.wait()
            await self.step()

    async def step(self) -> None:
        """Wait out the current debounce window and push (one cycle of `run`)."""
        s = self.settings
        while self._pending is not None:
            now = self._clock()
            quiet = min(s.endpoint_quiet, s.quiet) if self._pending.endpoints_only else s.quiet
            quiet_left = quiet - (now - self._last)
            max_left = s.max_delay - (now - self._first)
            if quiet_left <= 0 or max_left <= 0:
                req, waited = self._pending, now - self._first
                self._pending = None
                self._arrived.clear()
                self.pushes += 1
                await self._fire(req, waited)
                return
            await self._sleep(min(quiet_left, max_left))
        self._arrived.clear()
