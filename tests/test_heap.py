"""HeapKeeper: freeze after the initial load, refreeze at most every interval."""

from __future__ import annotations

import pytest

from xdsd.heap import HeapKeeper


class FakeGc:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threshold = (700, 10, 10)

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def get_freeze_count(self) -> int:
        return 0

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, t0: int, t1: int, t2: int, /) -> None:
        self.threshold = (t0, t1, t2)


def test_nothing_before_settle_then_refreeze_once_per_interval() -> None:
    now = [100.0]
    fake = FakeGc()
    heap = HeapKeeper(interval=60.0, clock=lambda: now[0], gc_module=fake)
    now[0] += 1000
    assert heap.quiet() is False  # nothing loaded yet: the GC keeps its defaults
    assert fake.calls == []
    heap.settle()
    assert fake.calls == ["unfreeze", "collect", "freeze"]
    assert fake.threshold == (20_000, 10, 10)
    now[0] += 59.9
    assert heap.quiet() is False
    now[0] += 0.1
    assert heap.quiet() is True
    assert fake.calls == ["unfreeze", "collect", "freeze"] * 2
    assert heap.quiet() is False  # the interval counts from the last refreeze
    assert heap.refreezes == 2


def test_interval_zero_means_never_and_negative_is_refused() -> None:
    now = [0.0]
    fake = FakeGc()
    heap = HeapKeeper(interval=0, clock=lambda: now[0], gc_module=fake)
    heap.settle()
    now[0] += 1e9
    assert heap.quiet() is False
    with pytest.raises(ValueError, match="interval"):
        HeapKeeper(interval=-1)


def test_pauses_are_timed_until_closed() -> None:
    import gc

    seen: list[tuple[int, float]] = []
    heap = HeapKeeper()
    heap.install()
    try:
        gc.collect(1)
    finally:
        heap.close()
    heap.drain(lambda gen, seconds: seen.append((gen, seconds)))
    assert seen and seen[-1][0] == 1 and seen[-1][1] >= 0
    gc.collect(0)
    heap.drain(lambda gen, seconds: seen.append((gen, seconds)))
    assert len(seen) == 1  # closed: no callback left behind; drained once


def test_close_gives_the_gc_back_its_threshold_and_the_heap() -> None:
    fake = FakeGc()
    heap = HeapKeeper(gc_module=fake)
    heap.settle()
    assert fake.threshold == (20_000, 10, 10)
    fake.calls.clear()
    heap.close()
    assert fake.threshold == (700, 10, 10)
    assert fake.calls == ["unfreeze"]
    heap.close()  # twice: nothing more
    assert fake.calls == ["unfreeze"]


def test_survivors_of_a_full_collection_are_frozen_once_settled() -> None:
    import gc

    fake = FakeGc()
    heap = HeapKeeper(gc_module=fake)  # the callback sees the real collections
    heap.install()
    try:
        gc.collect(2)
        assert fake.calls == []  # not settled: CPython's GC as it is
        heap.settle()
        fake.calls.clear()
        gc.collect(1)
        assert fake.calls == []  # only full passes
        gc.collect(2)
        assert fake.calls == ["freeze"]
        assert heap.freezes_after_full == 1
    finally:
        heap.close()
