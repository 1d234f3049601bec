"""Keep CPython's cyclic GC off the long-lived heap of a serving process.

A full (generation 2) collection walks every tracked object. With a mesh loaded
(the store, the snapshot, cached resources: hundreds of thousands of objects)
one takes around 100 ms on this project's benchmark box, and endpoint churn
starts one every few pushes, because each snapshot build leaves thousands of
new long-lived objects: the process then spends more time in the GC than in
the build, in pauses that land on push latency.

`gc.freeze()` moves everything alive into the permanent generation, which
collections skip. Garbage in it that is not part of a cycle (nearly all of
ours: frozen dataclasses, tuples, bytes) is still freed by reference counting
the moment its last reference goes. So:
- `settle()` once the initial config is loaded: collect, then freeze;
- after every full collection CPython starts by itself (e.g. while thousands of
  proxies connect), freeze its survivors: they were just found alive, and the
  next full pass then walks only what came after (installed by `install`);
- young collections run every `young_threshold` net allocations instead of 700:
  pushing to thousands of streams allocates fast, and at 700 the young passes
  alone took ~8% of a core in the load benchmark (20,000: ~1.5%);
- cyclic garbage among frozen objects waits for `quiet()`, a full collection
  of everything and a freeze again, at most every `interval` seconds and at a
  moment the caller chooses (after a push, else on its timer): the leak is
  bounded by the interval and the one long pause is paid once per interval,
  not every few pushes.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

_MAX_PAUSES = 100_000  # timed collections kept for `drain` (a bound, should it not run)


class GcModule(Protocol):
    def collect(self) -> int: ...
    def get_threshold(self) -> tuple[int, int, int]: ...
    def set_threshold(self, threshold0: int, threshold1: int, threshold2: int, /) -> None: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def get_freeze_count(self) -> int: ...


class HeapKeeper:
    def __init__(
        self,
        *,
        interval: float = 300.0,
        young_threshold: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        gc_module: GcModule = gc,
    ) -> None:
        if interval < 0:
            raise ValueError("interval must not be negative (0: never)")
        self.interval = interval
        self.young_threshold = young_threshold
        self._clock = clock
        self._gc = gc_module
        self._last: float | None = None  # None: nothing frozen yet
        self.refreezes = 0
        self.freezes_after_full = 0
        self._callback: Callable[[str, dict[str, Any]], None] | None = None
        self._threshold0: int | None = None  # the young threshold before `settle`
        # (generation, seconds) of collections not yet taken by `drain`. The callback
        # only appends here: it runs inside whatever allocated, e.g. a metrics scrape
        # holding the histogram's lock, so it must not take locks itself.
        self._pauses: list[tuple[int, float]] = []

    def install(self) -> None:
        """Freeze the survivors of CPython's own full collections (once settled) and
        time every collection (see `drain`); until `close`."""
        self.close()
        started = [0.0]

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
                return
            generation = int(info["generation"])
            if len(self._pauses) < _MAX_PAUSES:
                self._pauses.append((generation, time.perf_counter() - started[0]))
            if generation == 2 and self._last is not None:
                self._gc.freeze()
                self.freezes_after_full += 1

        self._callback = callback
        gc.callbacks.append(callback)

    def drain(self, observe: Callable[[int, float], None]) -> None:
        """Hand the collections timed since the last drain to `observe`."""
        pauses, self._pauses = self._pauses, []
        for generation, seconds in pauses:
            observe(generation, seconds)

    def close(self) -> None:
        """Stop timing and freezing; give the GC back its thresholds and the heap."""
        if self._callback is not None:
            gc.callbacks.remove(self._callback)
            self._callback = None
        if self._threshold0 is not None:
            _, threshold1, threshold2 = self._gc.get_threshold()
            self._gc.set_threshold(self._threshold0, threshold1, threshold2)
            self._threshold0 = None
        if self._last is not None:
            self._gc.unfreeze()
            self._last = None

    def settle(self) -> None:
        """The long-lived state is loaded (e.g. the initial config): collect, then freeze."""
        threshold0, threshold1, threshold2 = self._gc.get_threshold()
        if self._threshold0 is None:
            self._threshold0 = threshold0
        self._gc.set_threshold(self.young_threshold, threshold1, threshold2)
        self._refreeze()

    def quiet(self) -> bool:
        """A quiet moment (a push is done, or the caller's timer): refreeze if the
        interval has passed.

        Returns whether it did. Nothing happens before the first `settle`, nor ever
        with an interval of 0.
        """
        if not self.interval or self._last is None or self._clock() - self._last < self.interval:
            return False
        self._refreeze()
        return True

    def _refreeze(self) -> None:
        start = time.perf_counter()
        self._gc.unfreeze()
        self._last = None  # no freeze from the callback inside this collection
        found = self._gc.collect()
        self._gc.freeze()
        self._last = self._clock()
        self.refreezes += 1
        log.info(
            "heap collected and frozen: %d objects, %d unreachable, in %.0f ms",
            self._gc.get_freeze_count(),
            found,
            (time.perf_counter() - start) * 1000,
        )
