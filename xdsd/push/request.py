"""What a push is about; requests that arrive while one waits are merged."""

from __future__ import annotations

from dataclasses import dataclass

# Kinds whose changes move endpoints only (an EDS push; listeners, routes and clusters
# need no rebuild).
ENDPOINT_KINDS = frozenset({"EndpointSlice", "Endpoints", "Pod", "WorkloadEntry", "Node"})


@dataclass(frozen=True)
class PushRequest:
    # Config kinds that changed ("Service", "VirtualService", ...).
    kinds: frozenset[str] = frozenset()
    # How many change events this request stands for (for the debounce metrics).
    events: int = 1
    reason: str = ""
    # When the first change of this request happened (time.monotonic()); None: now.
    started: float | None = None

    @property
    def endpoints_only(self) -> bool:
        """Only endpoint kinds changed (an unknown change, no kinds, is not)."""
        return bool(self.kinds) and self.kinds <= ENDPOINT_KINDS

    def merge(self, other: PushRequest) -> PushRequest:
        return PushRequest(
            kinds=self.kinds | other.kinds,
            events=self.events + other.events,
            reason=self.reason if self.reason == other.reason else "mixed",
            started=_earliest(self.started, other.started),
        )


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
