"""The list+watch engine: one Kubernetes resource collection as a stream of real changes.

Usage::

    async for ev in list_watch(api, kind="Service", sleep=asyncio.sleep, backoff=Backoff()):
        ...   # ev.type: ADDED / MODIFIED / DELETED / SYNCED / ERROR / RESUMED

How it behaves (what client-go's reflector does, as an async generator):

- It lists (`api.list`), yields the differences against what it already knows
  (everything, the first time) and a SYNCED mark, then watches from the
  list's resourceVersion (the `ResourceApi` asks for bookmarks).
- Every event and BOOKMARK moves the resourceVersion on, so a watch that ends
  (server timeout, dropped connection) resumes where it was: nothing is lost,
  nothing is delivered twice.
- 410 Gone (an HTTP 410 answer or an ERROR event with code 410, "too old
  resource version") makes it relist; the relist is turned into a DIFF: an
  object that did not change yields nothing, one that changed yields MODIFIED,
  one that is gone yields DELETED. No spurious deletes, no event when nothing
  changed.
- Objects are compared without `metadata.resourceVersion` and
  `metadata.managedFields` (both removed from what it yields) and after the
  caller's `normalize`: an update that changes nothing the caller keeps is not
  reported. ADDED/MODIFIED are re-derived from what is known (an ADDED for a
  known object is a MODIFIED; a DELETED for an unknown one is dropped).
  `keep(obj)` False treats the object as absent (it is deleted if known).
- Errors (connection refused, timeouts, HTTP errors, malformed answers) yield an
  ERROR event with a message and a retry after `backoff.delay(n)` (exponential,
  jittered, capped) through the injected `sleep`; the first successful watch
  after errors yields RESUMED. A watch that closes cleanly is reopened at once
  when it was healthy (it delivered something or lasted `healthy_after`
  seconds), after a backoff delay otherwise (no hot loop against a server that
  closes every watch immediately). It never gives up; cancel the consumer.

`ResourceApi` is the I/O boundary (`xdsd.sources.kube.client.KubeResourceApi`
talks to a real server with kubernetes-asyncio; tests pass fakes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random as _random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
EventType = Literal["ADDED", "MODIFIED", "DELETED", "SYNCED", "ERROR", "RESUMED"]
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class ApiError(Exception):
    """A failed API request: HTTP status (0 when there is none) and a safe message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def expired(self) -> bool:
        return self.status == 410


@dataclass(frozen=True)
class ListResult:
    items: Sequence[Mapping[str, Any]]
    resource_version: str


class ResourceApi(Protocol):
    """List and watch one collection (one kind, one namespace or all)."""

    async def list(self, resource_version: str | None) -> ListResult:
        """All items (with apiVersion and kind set) and the list's resourceVersion.

        Raises ApiError (status 410 when `resource_version` is too old) or any
        transport exception.
        """
        ...

    def watch(
        self, resource_version: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Mapping[str, Any]]]:
        """Open a watch from `resource_version` with bookmarks.

        Entering performs the request (raises like `list`; an HTTP 410 raises
        ApiError(410)); the iterator yields the raw events (`{"type", "object"}`)
        and ends when the server closes the stream.
        """
        ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: initial * factor**(n-1), +-jitter, at most maximum."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        """The delay before retry number `attempt` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 64)
        base = min(self.maximum, self.initial * self.factor**exponent)
        jittered = base * (1.0 + self.jitter * (2.0 * self.random() - 1.0))
        return max(0.0, min(self.maximum, jittered))


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    kind: str
    namespace: str = ""
    name: str = ""
    # ADDED/MODIFIED: the object now; DELETED: its last known state.
    object: Mapping[str, Any] | None = None
    resource_version: str = ""
    error: str = ""  # ERROR: what went wrong (never object data)


def describe_error(exc: BaseException) -> str:
    """A one-line description of a failure that carries no object data or credentials."""
    if isinstance(exc, ApiError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON from the API server (line {exc.lineno}, column {exc.colno})"
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def strip_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy without metadata.resourceVersion and metadata.managedFields."""
    out = dict(obj)
    meta = out.get("metadata")
    if isinstance(meta, Mapping):
        meta = {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")}
        out["metadata"] = meta
    return out


def object_key(obj: Mapping[str, Any]) -> ObjectKey | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    namespace = meta.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return (namespace, name)


def resource_version_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        rv = meta.get("resourceVersion")
        if isinstance(rv, str):
            return rv
    return ""


class _Expired(Exception):
    """The watch's resourceVersion is too old: relist."""


@dataclass
class _State:
    kind: str
    keep: Callable[[Mapping[str, Any]], bool] | None
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None
    known: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)

    def prepare(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object as stored and compared, or None when it is to be treated as absent."""
        if self.keep is not None and not self.keep(obj):
            return None
        out = strip_object(obj)
        if self.normalize is not None:
            out = self.normalize(out)
        return out

    def upsert(self, key: ObjectKey, obj: Mapping[str, Any], rv: str) -> WatchEvent | None:
        new = self.prepare(obj)
        if new is None:
            return self.remove(key, rv)
        old = self.known.get(key)
        if old == new:
            return None
        self.known[key] = new
        kind: EventType = "ADDED" if old is None else "MODIFIED"
        return WatchEvent(kind, self.kind, key[0], key[1], new, rv)

    def remove(self, key: ObjectKey, rv: str) -> WatchEvent | None:
        old = self.known.pop(key, None)
        if old is None:
            return None
        return WatchEvent("DELETED", self.kind, key[0], key[1], old, rv)

    def diff(self, items: Sequence[Mapping[str, Any]], rv: str) -> list[WatchEvent]:
        """Apply a full list: events for what really changed (sorted by key)."""
        seen: dict[ObjectKey, Mapping[str, Any]] = {}
        for item in items:
            key = object_key(item)
            if key is None:
                log.warning("%s: a listed object has no name; skipped", self.kind)
                continue
            seen[key] = item
        events: list[WatchEvent] = []
        for key in sorted(self.known.keys() - seen.keys()):
            ev = self.remove(key, rv)
            if ev is not None:
                events.append(ev)
        for key in sorted(seen):
            ev = self.upsert(key, seen[key], rv)
            if ev is not None:
                events.append(ev)
        return events


async def list_watch(
    api: ResourceApi,
    *,
    kind: str,
    resource_version_hint: str | None = None,
    sleep: Sleep = asyncio.sleep,
    backoff: Backoff = DEFAULT_BACKOFF,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    healthy_after: float = 10.0,
) -> AsyncGenerator[WatchEvent, None]:
    """List, then watch, forever; see the module docstring.

    `resource_version_hint` is the resourceVersion of the first list (e.g. "0":
    any version the server has cached); relists after 410 always read the
    latest state.
    """
    state = _State(kind, keep, normalize)
    rv: str | None = None  # None: (re)list first
    first_list = True
    failures = 0  # consecutive failed or unhealthy attempts (backoff exponent)
    expired_streak = 0  # consecutive 410s without progress
    failing = False  # an ERROR was reported and nothing succeeded since

    while True:
        if rv is None:
            if expired_streak > 1:
                await sleep(backoff.delay(expired_streak - 1))
            try:
                result = await api.list(resource_version_hint if first_list else None)
            except Exception as e:
                failures += 1
                failing = True
                yield WatchEvent("ERROR", kind, error=f"list: {describe_error(e)}")
                await sleep(backoff.delay(failures))
                continue
            for ev in state.diff(result.items, result.resource_version):
                yield ev
            rv = result.resource_version
            first_list = False
            failures = 0
            failing = False
            yield WatchEvent("SYNCED", kind, resource_version=rv)

        started = clock()
        progressed = False
        try:
            async with api.watch(rv) as stream:
                if failing:
                    failing = False
                    yield WatchEvent("RESUMED", kind, resource_version=rv)
                async for raw in stream:
                    etype, obj = _event_parts(raw)
                    if etype == "ERROR":
                        code = obj.get("code")
                        if code == 410:
                            raise _Expired()
                        reason = obj.get("reason") or "Error"
                        message = obj.get("message") or ""
                        raise ApiError(code if isinstance(code, int) else 0, f"{reason}: {message}")
                    new_rv = resource_version_of(obj)
                    if etype == "BOOKMARK":
                        if new_rv:
                            rv = new_rv
                        progressed = True
                        continue
                    if etype not in ("ADDED", "MODIFIED", "DELETED"):
                        log.debug("%s: watch event of type %r ignored", kind, etype)
                        continue
                    key = object_key(obj)
                    if key is None:
                        log.warning("%s: a watch event without a name; skipped", kind)
                        continue
                    if new_rv:
                        rv = new_rv
                    progressed = True
                    expired_streak = 0
                    out = (
                        state.remove(key, rv) if etype == "DELETED" else state.upsert(key, obj, rv)
                    )
                    if out is not None:
                        yield out
        except _Expired:
            expired_streak += 1
            log.info("%s: resourceVersion %s expired; relisting", kind, rv)
            rv = None
            continue
        except Exception as e:
            if isinstance(e, ApiError) and e.expired:
                expired_streak += 1
                log.info("%s: resourceVersion %s expired; relisting", kind, rv)
                rv = None
                continue
            failures = 0 if progressed else failures + 1
            failing = True
            yield WatchEvent(
                "ERROR", kind, resource_version=rv, error=f"watch: {describe_error(e)}"
            )
            await sleep(backoff.delay(max(failures, 1)))
            continue
        # The server closed the stream cleanly.
        if progressed or clock() - started >= healthy_after:
            failures = 0
            expired_streak = 0
        else:
            failures += 1
            await sleep(backoff.delay(failures))


def _event_parts(raw: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    etype = raw.get("type")
    obj = raw.get("object")
    if not isinstance(etype, str) or not isinstance(obj, Mapping):
        raise ApiError(0, "malformed watch event (no type or object)")
    return etype, obj
