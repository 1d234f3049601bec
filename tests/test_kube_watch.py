"""The list+watch engine against fake list/watch functions (no server, no real sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import pytest

from xdsd.sources.kube.watch import (
    ApiError,
    Backoff,
    ListResult,
    WatchEvent,
    describe_error,
    list_watch,
)

Obj = dict[str, Any]


def svc(name: str, rv: str, port: int = 80, ns: str = "shop") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "spec": {"ports": [{"port": port}]},
    }


def ev(etype: str, obj: Obj) -> Obj:
    return {"type": etype, "object": obj}


def bookmark(rv: str) -> Obj:
    return ev("BOOKMARK", {"kind": "Service", "metadata": {"resourceVersion": rv}})


def gone() -> Obj:
    return ev("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


class Hang:
    """A watch answer that stays open until cancelled."""


class FakeApi:
    """Scripted answers: lists and watches are consumed in order; when a script
    runs out, the call hangs (the test has taken what it wanted by then)."""

    def __init__(self) -> None:
        self.lists: list[ListResult | Exception] = []
        # A watch answer: an exception (raised when opening) or a list of events,
        # possibly ending with an exception (raised mid-stream) or Hang().
        self.watches: list[Exception | list[Any]] = []
        self.calls: list[tuple[str, str | None]] = []
        self.open_streams = 0
        self.closed_streams = 0

    async def list(self, resource_version: str | None) -> ListResult:
        self.calls.append(("list", resource_version))
        if not self.lists:
            await asyncio.Event().wait()
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @contextlib.asynccontextmanager
    async def watch(self, resource_version: str) -> AsyncIterator[AsyncIterator[Mapping[str, Any]]]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            await asyncio.Event().wait()
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        self.open_streams += 1
        try:
            yield self._stream(answer)
        finally:
            self.closed_streams += 1

    async def _stream(self, items: list[Any]) -> AsyncIterator[Mapping[str, Any]]:
        for item in items:
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Hang):
                await asyncio.Event().wait()
            yield item


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


FIXED = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0)


async def take(gen: AsyncGenerator[WatchEvent, None], n: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            out.append(await anext(gen))
    return out


async def no_more(gen: AsyncGenerator[WatchEvent, None]) -> None:
    """Nothing else comes out (the fake has run out of answers and hangs)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(gen)


def brief(events: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.name) for e in events]


async def test_list_then_watch_from_the_lists_resource_version() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("b", "5"), svc("a", "4")], "10"))
    api.watches.append([ev("ADDED", svc("c", "11")), ev("MODIFIED", svc("a", "12", 81)), Hang()])
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    events = await take(gen, 5)
    assert brief(events) == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("SYNCED", ""),
        ("ADDED", "c"),
        ("MODIFIED", "a"),
    ]
    assert events[2].resource_version == "10"
    assert events[4].object is not None and events[4].object["spec"]["ports"][0]["port"] == 81
    # resourceVersion and managedFields are not part of what is delivered.
    assert "resourceVersion" not in events[0].object["metadata"]  # type: ignore[index]
    assert events[4].resource_version == "12"
    assert api.calls == [("list", None), ("watch", "10")]
    assert sleeps.delays == []
    await gen.aclose()
    assert api.closed_streams == api.open_streams == 1


async def test_first_list_uses_the_hint_and_relists_read_the_latest() -> None:
    api = FakeApi()
    api.lists += [ListResult([], "3"), ListResult([], "9")]
    api.watches.append(ApiError(410, "Expired: too old"))
    gen = list_watch(api, kind="Service", resource_version_hint="0", sleep=Sleeps(), backoff=FIXED)
    assert brief(await take(gen, 2)) == [("SYNCED", ""), ("SYNCED", "")]
    assert api.calls == [("list", "0"), ("watch", "3"), ("list", None)]
    await gen.aclose()


async def test_bookmarks_and_events_advance_the_resume_point() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("a", "4")], "10"))
    # The stream ends cleanly after a bookmark; then after an event; then drops.
    api.watches += [
        [bookmark("20")],
        [ev("MODIFIED", svc("a", "25", 81))],
        [bookmark("30"), ConnectionResetError("reset")],
        [Hang()],
    ]
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    events = await take(gen, 5)
    assert brief(events) == [
        ("ADDED", "a"),
        ("SYNCED", ""),
        ("MODIFIED", "a"),
        ("ERROR", ""),
        ("RESUMED", ""),
    ]
    assert "ConnectionResetError" in events[3].error
    await no_more(gen)
    assert api.calls == [
        ("list", None),
        ("watch", "10"),
        ("watch", "20"),
        ("watch", "25"),
        ("watch", "30"),
    ]
    # Healthy streams reconnect at once; the error after progress waits the first step.
    assert sleeps.delays == [1.0]
    await gen.aclose()


async def test_410_relist_is_a_diff_without_spurious_events() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("a", "1"), svc("b", "2"), svc("c", "3")], "10"))
    api.watches.append([ev("MODIFIED", svc("a", "11")), gone()])  # a: rv only: nothing
    # During the gap: a got a new resourceVersion without a change, b changed,
    # c was deleted, d was created.
    api.lists.append(ListResult([svc("a", "15"), svc("b", "16", 82), svc("d", "17")], "20"))
    api.watches.append([Hang()])
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    first = await take(gen, 4)
    assert brief(first) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("SYNCED", "")]
    relist = await take(gen, 4)
    assert brief(relist) == [("DELETED", "c"), ("MODIFIED", "b"), ("ADDED", "d"), ("SYNCED", "")]
    assert relist[0].object is not None and relist[0].object["metadata"]["name"] == "c"
    await no_more(gen)
    assert api.calls == [("list", None), ("watch", "10"), ("list", None), ("watch", "20")]
    assert sleeps.delays == []
    await gen.aclose()


async def test_410_relist_with_nothing_changed_yields_only_the_mark() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("a", "1"), svc("b", "2")], "10"))
    api.watches.append(ApiError(410, "Expired"))  # HTTP 410 when opening the watch
    api.lists.append(ListResult([svc("b", "2"), svc("a", "1")], "30"))
    api.watches.append([Hang()])
    gen = list_watch(api, kind="Service", sleep=Sleeps(), backoff=FIXED)
    await take(gen, 3)
    assert brief(await take(gen, 1)) == [("SYNCED", "")]
    await no_more(gen)
    await gen.aclose()


async def test_repeated_410_backs_off() -> None:
    api = FakeApi()
    for rv in ("1", "2", "3"):
        api.lists.append(ListResult([], rv))
        api.watches.append([gone()])
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    await take(gen, 3)
    await no_more(gen)
    # First 410: relist at once; a second one without progress waits, then longer.
    assert sleeps.delays == [1.0, 2.0]
    await gen.aclose()


async def test_errors_back_off_exponentially_with_jitter_capped_then_resume() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("a", "1")], "10"))
    api.watches += [ConnectionRefusedError("refused")] * 6
    api.watches += [[ev("ADDED", svc("b", "11")), Hang()]]
    sleeps = Sleeps()
    rolls = iter([0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    backoff = Backoff(initial=1.0, maximum=10.0, factor=2.0, jitter=0.5, random=lambda: next(rolls))
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=backoff)
    events = await take(gen, 2 + 6 + 2)
    assert brief(events) == [("ADDED", "a"), ("SYNCED", "")] + [("ERROR", "")] * 6 + [
        ("RESUMED", ""),
        ("ADDED", "b"),
    ]
    assert all("refused" in e.error for e in events[2:8])
    # base 1, 2, 4, 8, 10 (capped), 10; jitter -50% / +50% / none.
    assert sleeps.delays == [0.5, 3.0, 4.0, 8.0, 10.0, 10.0]
    # Every retry resumes from the last known resourceVersion: no relist.
    assert [c for c in api.calls if c[0] == "list"] == [("list", None)]
    assert {c[1] for c in api.calls if c[0] == "watch"} == {"10"}
    await gen.aclose()


async def test_list_errors_retry_the_list() -> None:
    api = FakeApi()
    api.lists += [ApiError(503, "ServiceUnavailable: busy"), TimeoutError(), ListResult([], "5")]
    api.watches.append([Hang()])
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    events = await take(gen, 3)
    assert brief(events) == [("ERROR", ""), ("ERROR", ""), ("SYNCED", "")]
    assert events[0].error == "list: HTTP 503: ServiceUnavailable: busy"
    assert events[1].error == "list: timed out"
    assert sleeps.delays == [1.0, 2.0]
    await gen.aclose()


async def test_a_stream_closing_at_once_does_not_loop_hot() -> None:
    api = FakeApi()
    api.lists.append(ListResult([], "5"))
    api.watches += [[], [], [], [Hang()]]
    sleeps = Sleeps()
    now = [0.0]
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED, clock=lambda: now[0])
    await take(gen, 1)
    await no_more(gen)
    assert sleeps.delays == [1.0, 2.0, 4.0]
    assert [c for c in api.calls if c[0] == "watch"] == [("watch", "5")] * 4
    await gen.aclose()


async def test_a_stream_that_lasted_reconnects_at_once() -> None:
    api = FakeApi()
    api.lists.append(ListResult([], "5"))
    api.watches += [[], [Hang()]]
    sleeps = Sleeps()
    times = iter([0.0, 60.0, 60.0, 60.0])
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED, clock=lambda: next(times))
    await take(gen, 1)
    await no_more(gen)
    assert sleeps.delays == []
    assert len(api.calls) == 3
    await gen.aclose()


async def test_events_are_rederived_from_what_is_known() -> None:
    api = FakeApi()
    api.lists.append(ListResult([svc("a", "1")], "10"))
    api.watches.append(
        [
            ev("ADDED", svc("a", "11")),  # known, same content: nothing
            ev("ADDED", svc("a", "12", 81)),  # known, changed: MODIFIED
            ev("MODIFIED", svc("b", "13")),  # unknown: ADDED
            ev("DELETED", svc("z", "14")),  # unknown: nothing
            ev("DELETED", svc("b", "15")),
            {"type": "ADDED", "object": {"kind": "Service", "metadata": {}}},  # no name: skipped
            Hang(),
        ]
    )
    gen = list_watch(api, kind="Service", sleep=Sleeps(), backoff=FIXED)
    await take(gen, 2)
    events = await take(gen, 3)
    assert brief(events) == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "b")]
    await no_more(gen)
    await gen.aclose()


async def test_keep_and_normalize() -> None:
    def keep(obj: Mapping[str, Any]) -> bool:
        return obj["metadata"].get("labels", {}).get("keep") == "yes"

    def normalize(obj: Obj) -> Obj:
        obj = dict(obj)
        obj.pop("status", None)
        return obj

    def labelled(name: str, rv: str, keep: str, status: str = "") -> Obj:
        o = svc(name, rv)
        o["metadata"]["labels"] = {"keep": keep}
        o["status"] = {"s": status}
        return o

    api = FakeApi()
    api.lists.append(ListResult([labelled("a", "1", "yes"), labelled("b", "2", "no")], "10"))
    api.watches.append(
        [
            ev("MODIFIED", labelled("a", "11", "yes", status="new")),  # normalized away
            ev("MODIFIED", labelled("b", "12", "yes")),  # now kept: ADDED
            ev("MODIFIED", labelled("a", "13", "no")),  # no longer kept: DELETED
            Hang(),
        ]
    )
    gen = list_watch(
        api, kind="Service", sleep=Sleeps(), backoff=FIXED, keep=keep, normalize=normalize
    )
    assert brief(await take(gen, 2)) == [("ADDED", "a"), ("SYNCED", "")]
    events = await take(gen, 2)
    assert brief(events) == [("ADDED", "b"), ("DELETED", "a")]
    assert "status" not in events[0].object  # type: ignore[operator]
    await no_more(gen)
    await gen.aclose()


async def test_error_events_and_malformed_events_reconnect() -> None:
    api = FakeApi()
    api.lists.append(ListResult([], "10"))
    api.watches += [
        [ev("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError", "message": "x"})],
        [{"type": "ADDED"}],
        [Hang()],
    ]
    sleeps = Sleeps()
    gen = list_watch(api, kind="Service", sleep=sleeps, backoff=FIXED)
    events = await take(gen, 5)
    # Each reopened watch is a resumption, even if it fails again right after.
    assert brief(events) == [
        ("SYNCED", ""),
        ("ERROR", ""),
        ("RESUMED", ""),
        ("ERROR", ""),
        ("RESUMED", ""),
    ]
    assert events[1].error == "watch: HTTP 500: InternalError: x"
    assert "malformed" in events[3].error
    assert sleeps.delays == [1.0, 2.0]
    await gen.aclose()


async def test_closing_the_generator_closes_the_open_stream() -> None:
    api = FakeApi()
    api.lists.append(ListResult([], "10"))
    api.watches.append([Hang()])
    gen = list_watch(api, kind="Service", sleep=Sleeps(), backoff=FIXED)
    await take(gen, 1)
    task = asyncio.create_task(anext(gen))
    for _ in range(1000):
        if api.open_streams:
            break
        await asyncio.sleep(0)
    assert api.open_streams == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert api.closed_streams == 1
    await gen.aclose()


def test_backoff_delays() -> None:
    b = Backoff(initial=0.5, maximum=30.0, factor=2.0, jitter=0.2, random=lambda: 0.5)
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(10_000) == 30.0
    low = Backoff(initial=1.0, maximum=30.0, jitter=0.2, random=lambda: 0.0)
    high = Backoff(initial=1.0, maximum=30.0, jitter=0.2, random=lambda: 1.0)
    assert low.delay(1) == pytest.approx(0.8) and high.delay(1) == pytest.approx(1.2)
    assert high.delay(20) == 30.0  # jitter never goes past the cap


def test_describe_error_is_one_safe_line() -> None:
    assert describe_error(ApiError(401, "Unauthorized: no")) == "HTTP 401: Unauthorized: no"
    assert describe_error(TimeoutError()) == "timed out"
    assert describe_error(ConnectionRefusedError("nope")) == "ConnectionRefusedError: nope"
    assert describe_error(ValueError()) == "ValueError"
