"""A token bucket for new streams per second (clock injected, so tests drive time)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; `take()` spends one if there is one.

    A reconnect storm (every proxy of a dead replica at once) is spread out:
    `reserve()` books the next token and says how long to wait for it, so new
    streams are admitted at the rate in arrival order (istiod waits on its
    limiter the same way); only a wait longer than the caller accepts is refused.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = max(now, self._last)

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def reserve(self, max_wait: float) -> float | None:
        """Book a token: seconds until it is there (0: now); None if that is over max_wait."""
        self._refill()
        wait = max(0.0, (1 - self._tokens) / self.rate)
        if wait > max_wait:
            return None
        self._tokens -= 1
        return wait

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens
