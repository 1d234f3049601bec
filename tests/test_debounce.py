"""Debounce on a hand-driven clock: quiet period, max delay, merging, one push at a time."""

from __future__ import annotations

import pytest

from xdsd.push.debounce import Debouncer, DebounceSettings
from xdsd.push.request import PushRequest


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        # Requests to inject while "sleeping": time -> request.
        self.arrivals: list[tuple[float, PushRequest]] = []
        self.debouncer: Debouncer | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + seconds
        # Deliver any arrivals that happen before the sleep ends.
        while self.arrivals and self.arrivals[0][0] <= target:
            at, req = self.arrivals.pop(0)
            self.now = at
            assert self.debouncer is not None
            self.debouncer.request(req)
        self.now = target


def make(settings: DebounceSettings) -> tuple[Debouncer, FakeTime, list[tuple[PushRequest, float]]]:
    t = FakeTime()
    fired: list[tuple[PushRequest, float]] = []

    async def fire(req: PushRequest, waited: float) -> None:
        fired.append((req, waited))

    d = Debouncer(fire, settings, clock=t.clock, sleep=t.sleep)
    t.debouncer = d
    return d, t, fired


async def test_single_change_waits_the_quiet_period() -> None:
    d, t, fired = make(DebounceSettings(quiet=0.1, max_delay=10))
    d.request(PushRequest(kinds=frozenset({"Service"})))
    await d.step()
    assert fired == [(PushRequest(kinds=frozenset({"Service"})), pytest.approx(0.1))]
    assert t.now == pytest.approx(0.1)


async def test_changes_in_the_quiet_period_merge_into_one_push() -> None:
    d, t, fired = make(DebounceSettings(quiet=0.1, max_delay=10))
    d.request(PushRequest(kinds=frozenset({"Service"})))
    t.arrivals = [(0.05, PushRequest(kinds=frozenset({"Pod"}))), (0.12, PushRequest())]
    await d.step()
    assert len(fired) == 1
    req, waited = fired[0]
    assert req.kinds == {"Service", "Pod"}
    assert req.events == 3
    # The last change came at 0.12, so the push waits until 0.22.
    assert waited == pytest.approx(0.22)


async def test_a_steady_stream_of_changes_is_cut_at_max_delay() -> None:
    d, t, fired = make(DebounceSettings(quiet=0.1, max_delay=1.0))
    d.request(PushRequest())
    t.arrivals = [(0.05 * i, PushRequest()) for i in range(1, 100)]  # every 50ms for 5s
    await d.step()
    assert len(fired) == 1
    assert fired[0][1] == pytest.approx(1.0)
    assert d.pending is None
    # The changes after the cut start a new window.
    d.request(PushRequest())
    await d.step()
    assert len(fired) == 2


async def test_endpoint_only_survives_merge_only_if_all_were() -> None:
    a = PushRequest(kinds=frozenset({"EndpointSlice"}))
    b = PushRequest(kinds=frozenset({"Service"}))
    assert a.endpoints_only and a.merge(PushRequest(kinds=frozenset({"Pod"}))).endpoints_only
    assert not a.merge(b).endpoints_only
    assert not PushRequest().endpoints_only  # an unknown change is not


async def test_endpoint_changes_wait_their_own_shorter_quiet_period() -> None:
    """Pods replaced every 50 ms: each replacement (its slice and Pod events 5 ms apart)
    is one push after 20 ms, not merged with the next as a 100 ms quiet period would."""
    d, t, fired = make(DebounceSettings(quiet=0.1, max_delay=10, endpoint_quiet=0.02))
    d.request(PushRequest(kinds=frozenset({"EndpointSlice"})))
    t.arrivals = [(0.005, PushRequest(kinds=frozenset({"Pod"})))]
    await d.step()
    assert [(sorted(r.kinds), w) for r, w in fired] == [
        (["EndpointSlice", "Pod"], pytest.approx(0.025))
    ]
    # A Service edit in the window: the whole window waits the full quiet period.
    t.now = 1.0
    d.request(PushRequest(kinds=frozenset({"EndpointSlice"})))
    t.arrivals = [(1.01, PushRequest(kinds=frozenset({"Service"})))]
    await d.step()
    assert fired[1][1] == pytest.approx(0.11)


async def test_zero_quiet_pushes_immediately() -> None:
    d, t, fired = make(DebounceSettings(quiet=0, max_delay=0))
    d.request(PushRequest())
    await d.step()
    assert len(fired) == 1 and t.sleeps == []


def test_invalid_settings_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="quiet"):
        DebounceSettings(quiet=2, max_delay=1)
