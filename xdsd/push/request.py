"""What a push is about; requests that arrive while one waits are merged."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PushRequest:
    # Config kinds that changed ("Service", "VirtualService", ...).
    kinds: frozenset[str] = frozenset()
    # Only endpoints changed: listeners, routes and clusters need no rebuild.
    endpoints_only: bool = False
    # How many change events this request stands for (for the debounce metrics).
    events: int = 1
    reason: str = ""
    # When the first change of this request happened (time.monotonic()); None: now.
    started: float | None = None

    def merge(self, other: PushRequest) -> PushRequest:
        return PushRequest(
            kinds=self.kinds | other.kinds,
            endpoints_only=self.endpoints_only and other.endpoints_only,
            events=self.events + other.events,
            reason=self.reason if self.reason == other.reason else "mixed",
            started=_earliest(self.started, other.started),
        )


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
