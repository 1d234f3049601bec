"""Watch a folder of Kubernetes / Istio YAML: file events where the OS has them, else polling.

Usage::

    source = FolderSource("config/", poll_interval=0.5)
    async for change in source.changes():   # ConfigChange batches
        store.apply(change)

- `changes()` first yields one ConfigChange holding every file (`synced=True`,
  even for an empty or missing folder), then one per batch of files added,
  changed or removed. It never ends on its own; cancel the task (or `aclose()`).
- Changes are found by file events (the `watchfiles` library: inotify on Linux,
  FSEvents on macOS), so an idle folder costs nothing however many files it
  holds. An event on a YAML file re-reads just that file. An event on a
  directory (a new folder's files may predate its watch), or on a hidden name
  while a file is a symlink (a mounted ConfigMap swapping its `..data` link),
  re-scans the whole folder once; other hidden names are not looked at (an
  atomic write's dot-file renamed in names the file too). Events a few ms
  apart make one batch (at most `min(poll_interval, 0.1 s)`). A full scan
  every `rescan_interval` (default `max(30 s, poll_interval)`), with a fresh
  watch, catches events the OS dropped (watchfiles does not report an inotify
  queue overflow), changes to a file that is a symlink to one outside the
  folder, and the folder's path switched to another folder (a link to it
  re-pointed): no event here names those.
- Polling, a full scan every `poll_interval`, is the fallback: with
  `watch=False`, while the folder does not exist (events start once it does),
  when watchfiles is missing or would only poll itself (WSL,
  `WATCHFILES_FORCE_POLLING`), or when the watch cannot be set up or fails
  (e.g. out of inotify watches; retried every `rescan_interval`). The reason
  is logged once.
- `synced` is an `asyncio.Event` set just before the initial change is yielded;
  `bool(source.synced)` tells whether it is set. `watching` tells whether file
  events are in use right now.
- `poll()` runs one full scan and returns its ConfigChange (None when nothing
  changed); tests drive it directly instead of sleeping.

Files: every `*.yaml` / `*.yml` below the folder, recursively, in sorted order;
names starting with "." are skipped (editor temp files, the `..data` links of a
mounted ConfigMap), and so are linked folders. Each file is multi-document;
`kind: List` is expanded. A file is re-read when its (mtime_ns, ctime_ns, size,
inode) changes and re-parsed only when its bytes changed. A YAML syntax error
names the file and line; the documents before it still load and the file's
other objects stay as they were. Stat, read and parse run in a worker thread
(`asyncio.to_thread`); the watch has a thread of its own.
Objects are named `<folder>/<relative path>#<document index>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import platform
import stat
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from xdsd.model.parse import (
    DEFAULT_DOMAIN_SUFFIX,
    DEFAULT_NAMESPACE,
    ParseResult,
    parse_documents,
)
from xdsd.model.types import ConfigError
from xdsd.sources.events import ConfigChange, FileContent

try:
    # watchfiles' Rust backend, used directly (its documented "Rust backend direct
    # usage"), so that the watch is set up and waited on in a thread of our own.
    from watchfiles._rust_notify import RustNotify

    _NO_WATCHFILES = ""
except ImportError as e:  # pragma: no cover - watchfiles is a dependency
    RustNotify = None  # type: ignore[assignment,misc]
    _NO_WATCHFILES = f"watchfiles is not available ({e})"

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml")
# libyaml's parser when PyYAML was built with it (the wheels are): the same safe
# constructors, about ten times faster than the pure-Python one.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# How watchfiles batches events: it looks for new ones every step and hands a
# batch over once a step brought none, or after the debounce at the latest.
_STEP_MS = 10
_MAX_DEBOUNCE = 0.1  # seconds; the app's own push debounce waits 100 ms of quiet anyway

Sleep = Callable[[float], Awaitable[None]]


class SyncedEvent(asyncio.Event):
    """An asyncio.Event that is also truthy once set."""

    def __bool__(self) -> bool:
        return self.is_set()


@dataclass(frozen=True)
class _FileState:
    signature: tuple[int, int, int, int]
    digest: bytes  # b"" when the last read failed
    kinds: frozenset[str]
    linked: bool = False  # the name is a symlink (seen when the file was last read)


@dataclass(frozen=True)
class _Options:
    default_namespace: str
    domain_suffix: str
    revision: str | None = None


def load_yaml(
    data: bytes | str,
    source: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
    revision: str | None = None,
) -> ParseResult:
    """Parse the YAML text of one file; never raises.

    On a syntax error the documents before it are kept and the result is
    marked incomplete (so the store keeps the file's other objects).
    """
    docs: list[object] = []
    syntax: list[ConfigError] = []
    try:
        for doc in yaml.load_all(data, Loader=_SAFE_LOADER):
            docs.append(doc)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = e.problem or e.context or "invalid YAML"
        syntax.append(
            ConfigError(f"{source}#{len(docs)}", "", "", f"YAML error at {where}: {problem}")
        )
    except yaml.YAMLError as e:
        syntax.append(ConfigError(f"{source}#{len(docs)}", "", "", f"YAML error: {e}"))
    except RecursionError:
        syntax.append(ConfigError(f"{source}#{len(docs)}", "", "", "YAML error: nested too deeply"))
    except (ValueError, TypeError, OverflowError) as e:
        # Constructors can fail on well-formed input (an invalid !!timestamp).
        syntax.append(ConfigError(f"{source}#{len(docs)}", "", "", f"YAML error: {e}"))
    result = parse_documents(
        docs,
        source,
        default_namespace=default_namespace,
        domain_suffix=domain_suffix,
        complete=not syntax,
        revision=revision,
    )
    if not syntax:
        return result
    return replace(result, errors=tuple(syntax) + result.errors)


def _list_files(root: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not name.endswith(_SUFFIXES):
                continue
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            found.append((f"{root.as_posix().rstrip('/')}/{rel}", path))
    found.sort()
    return found


def _refresh(
    source: str, path: Path, st: os.stat_result, old: _FileState | None, opts: _Options
) -> tuple[_FileState, FileContent | None, frozenset[str]]:
    """One existing file: its new state, what to report (None: nothing) and the kinds touched.

    Blocking: runs in a worker thread.
    """
    signature = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    if old is not None and old.signature == signature:
        return old, None, frozenset()
    linked = path.is_symlink()
    try:
        data = path.read_bytes()
    except OSError as e:
        error = ConfigError(source, "", "", f"cannot read the file: {e.strerror or e}")
        state = _FileState(signature, b"", old.kinds if old else frozenset(), linked)
        return state, FileContent(source, ParseResult(errors=(error,), complete=False)), frozenset()
    digest = hashlib.sha256(data).digest()
    if old is not None and old.digest == digest:
        return replace(old, signature=signature, linked=linked), None, frozenset()
    result = load_yaml(
        data,
        source,
        default_namespace=opts.default_namespace,
        domain_suffix=opts.domain_suffix,
        revision=opts.revision,
    )
    # An incomplete read keeps the old objects, so keep their kinds too.
    file_kinds = result.kinds | (old.kinds if old and not result.complete else frozenset())
    touched = file_kinds | (old.kinds if old else frozenset())
    return _FileState(signature, digest, file_kinds, linked), FileContent(source, result), touched


def _scan(
    root: Path, previous: Mapping[str, _FileState], opts: _Options
) -> tuple[dict[str, _FileState], list[FileContent], frozenset[str]]:
    """One pass over the folder (blocking: runs in a worker thread)."""
    states: dict[str, _FileState] = {}
    contents: list[FileContent] = []
    kinds: set[str] = set()
    for source, path in _list_files(root):
        try:
            st = path.stat()
        except OSError:
            continue  # gone (or a dangling link) since listing: treat as absent
        state, content, touched = _refresh(source, path, st, previous.get(source), opts)
        states[source] = state
        if content is not None:
            contents.append(content)
        kinds |= touched
    for source in sorted(previous.keys() - states.keys()):
        contents.append(FileContent(source, None))
        kinds |= previous[source].kinds
    return states, contents, frozenset(kinds)


# -- file events ------------------------------------------------------------------------


def _watch_roots(root: Path) -> tuple[str, ...] | None:
    """The forms of the folder's path that event paths start with; None if not a folder.

    Blocking: runs in a worker thread. The first one is the path to watch.
    """
    if not root.is_dir():
        return None
    return tuple(dict.fromkeys((os.path.abspath(root), os.path.realpath(root))))


def _relative(roots: Iterable[str], changed: str) -> str | None:
    """`changed` relative to the folder, with "/" ("" for the folder itself; None: outside)."""
    for root in roots:
        if changed == root:
            return ""
        base = root.rstrip(os.sep) + os.sep
        if changed.startswith(base):
            return changed[len(base) :].replace(os.sep, "/")
    return None


def _folders(root: Path, states: Iterable[str]) -> set[str]:
    """The folders (as sources: `<folder>/<relative path>`) that hold known files."""
    base = root.as_posix().rstrip("/")
    folders: set[str] = set()
    for source in states:
        parent = source.rpartition("/")[0]
        while len(parent) > len(base) and parent not in folders:
            folders.add(parent)
            parent = parent.rpartition("/")[0]
    return folders


def _event_files(
    root: Path, roots: tuple[str, ...], previous: Mapping[str, _FileState], changed: Iterable[str]
) -> list[tuple[str, Path, os.stat_result | None]] | None:
    """The YAML files that events name, with their stat (None: absent), in order.

    None when the events call for a full scan: the folder itself, a directory, a
    folder with known files gone, a path not below the folder, a hidden name while
    a known file is a symlink. Other files are left out; the known symlinks are
    added (their target may be what an event named).
    Blocking: runs in a worker thread.
    """
    base = root.as_posix().rstrip("/")
    found: dict[str, tuple[Path, os.stat_result | None]] = {}
    folders: set[str] | None = None  # built when first needed
    linked = [source for source, state in previous.items() if state.linked]
    for name in changed:
        rel = _relative(roots, name)
        if not rel:
            return None
        parts = rel.split("/")
        if any(part.startswith(".") for part in parts):
            # Hidden names are never read themselves (an atomic write's dot-file
            # renamed in also names the file). They matter through a symlink: a
            # mounted ConfigMap's `x.yaml -> ..data/x.yaml`, its `..data` swapped.
            if linked:
                return None
            continue
        source = f"{base}/{rel}"
        path = root.joinpath(*parts)
        try:
            st: os.stat_result | None = path.stat()
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            return None  # its files may have been written before it was watched
        if st is None and source not in previous:
            if folders is None:
                folders = _folders(root, previous)
            if source in folders:
                return None  # a folder with known files went away
        if not parts[-1].endswith(_SUFFIXES):
            continue
        # os.walk does not enter linked folders; watchfiles does.
        if any(root.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
            continue
        found[source] = (path, st)
    for source in linked:
        if source not in found:
            path = root.joinpath(*source[len(base) + 1 :].split("/"))
            try:
                found[source] = (path, path.stat())
            except OSError:
                found[source] = (path, None)
    return [(source, path, st) for source, (path, st) in sorted(found.items())]


def _update(
    root: Path,
    roots: tuple[str, ...],
    previous: Mapping[str, _FileState],
    changed: Iterable[str],
    opts: _Options,
) -> tuple[dict[str, _FileState], list[FileContent], frozenset[str], bool]:
    """Apply a batch of events: re-read the files they name, or scan the folder (True).

    Blocking: runs in a worker thread.
    """
    files = _event_files(root, roots, previous, changed)
    if files is None:
        return (*_scan(root, previous, opts), True)
    states = dict(previous)
    contents: list[FileContent] = []
    kinds: set[str] = set()
    for source, path, st in files:
        old = previous.get(source)
        if st is None:
            if old is not None:
                del states[source]
                contents.append(FileContent(source, None))
                kinds |= old.kinds
            continue
        state, content, touched = _refresh(source, path, st, old, opts)
        states[source] = state
        if content is not None:
            contents.append(content)
        kinds |= touched
    return states, contents, frozenset(kinds), False


def _forced_polling() -> str:
    """Why watchfiles would only poll here ("" when it would not): then we poll ourselves.

    The same rules as watchfiles' `force_polling=None` default.
    """
    env = os.getenv("WATCHFILES_FORCE_POLLING")
    if env:
        if env.lower() not in {"false", "disable", "disabled"}:
            return "WATCHFILES_FORCE_POLLING is set"
        return ""
    uname = platform.uname()
    if "microsoft-standard" in uname.release.lower() and uname.system.lower() == "linux":
        return "file events are unreliable on WSL"
    return ""


class _WatchFailed(Exception):
    pass


class _Watcher:
    """watchfiles' watch of one folder, run in a thread of our own.

    The thread sets the watch up (`start()` raises its error), then waits for
    batches of changed paths and hands each to the loop. `close()` sets the
    stop event that the Rust side checks every step and waits for the thread
    to end, so a cancelled `changes()` leaves no thread behind.
    """

    def __init__(self, path: str, *, step_ms: int, debounce_ms: int) -> None:
        self.path = path
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._ended = asyncio.Event()
        self._batches: asyncio.Queue[set[str] | BaseException] = asyncio.Queue()
        self._thread = threading.Thread(
            target=self._run, name=f"xdsd-folder-watch {path}", daemon=True
        )

    async def start(self) -> None:
        self._thread.start()
        try:
            await self._ready
        except BaseException:
            await self.close()
            raise

    async def next(self, deadline: float) -> set[str] | None:
        """Every path changed since the last call; None at `deadline` (time.monotonic())."""
        if self._batches.empty():
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    first = await self._batches.get()
            except TimeoutError:
                return None
            items = [first]
        else:
            items = []
        while not self._batches.empty():
            items.append(self._batches.get_nowait())
        changed: set[str] = set()
        for item in items:
            if isinstance(item, BaseException):
                raise _WatchFailed(str(item) or type(item).__name__) from item
            changed |= item
        return changed

    async def close(self) -> None:
        self._stop.set()
        if not self._thread.ident:
            return  # never started
        try:
            async with asyncio.timeout(5.0):
                await self._ended.wait()
        except TimeoutError:
            log.warning("the watch of %s did not stop in time", self.path)

    # -- in the watch thread -------------------------------------------------------------

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self._stop.set()

    def _settle(self, error: BaseException | None) -> None:
        if self._ready.done():
            return
        if error is None:
            self._ready.set_result(None)
        else:
            self._ready.set_exception(error)

    def _run(self) -> None:
        try:
            try:
                # paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied
                notify = RustNotify([self.path], False, False, 300, True, False)
            except Exception as e:
                self._post(self._settle, e)
                return
            self._post(self._settle, None)
            with notify:
                while not self._stop.is_set():
                    # No timeout (0): the stop event is checked every step.
                    raw = notify.watch(self._debounce_ms, self._step_ms, 0, self._stop)
                    if isinstance(raw, set):
                        self._post(self._batches.put_nowait, {path for _, path in raw})
        except Exception as e:
            self._post(self._batches.put_nowait, e)
        finally:
            self._post(self._ended.set)


class FolderSource:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        default_namespace: str = DEFAULT_NAMESPACE,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
        sleep: Sleep = asyncio.sleep,
        watch: bool = True,
        rescan_interval: float | None = None,
        revision: str | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if rescan_interval is not None and rescan_interval <= 0:
            raise ValueError("rescan_interval must be positive")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.watch = watch  # use file events when possible (False: always poll)
        self.rescan_interval = (
            max(30.0, poll_interval) if rescan_interval is None else rescan_interval
        )
        self.synced = SyncedEvent()
        self.watching = False  # file events are in use right now
        self._opts = _Options(default_namespace, domain_suffix, revision)
        self._sleep = sleep
        self._states: dict[str, _FileState] = {}
        self._loaded = False
        self._lock = asyncio.Lock()
        self._scanned_at = 0.0  # time.monotonic() of the last full scan
        self._roots: tuple[str, ...] = ()  # the watched folder's path, as events name it
        self._retry_at: float | None = None  # when to try events again while polling
        self._polling_why = ""  # the reason last logged
        self._watched = False  # a watch was started once

    async def poll(self) -> ConfigChange | None:
        """Scan once. The first call always returns the full initial state."""
        async with self._lock:
            states, contents, kinds = await asyncio.to_thread(
                _scan, self.path, dict(self._states), self._opts
            )
            self._states = states
            self._scanned_at = time.monotonic()
            initial = not self._loaded
            self._loaded = True
        return self._report(contents, kinds, initial)

    async def _apply_events(self, changed: set[str]) -> ConfigChange | None:
        """Re-read what a batch of events names (a full scan if it names more than files)."""
        async with self._lock:
            states, contents, kinds, full = await asyncio.to_thread(
                _update, self.path, self._roots, self._states, changed, self._opts
            )
            self._states = states
            if full:
                self._scanned_at = time.monotonic()
        log.debug("%d paths changed below %s (full scan: %s)", len(changed), self.path, full)
        return self._report(contents, kinds, False)

    def _report(
        self, contents: list[FileContent], kinds: frozenset[str], initial: bool
    ) -> ConfigChange | None:
        if not contents and not initial:
            return None
        for content in contents:
            if content.result is None:
                log.info("config file removed: %s", content.source)
            else:
                log.debug(
                    "config file read: %s (%d objects, %d problems)",
                    content.source,
                    len(content.result.objects),
                    len(content.result.errors),
                )
        return ConfigChange(tuple(contents), kinds, synced=initial)

    async def changes(self) -> AsyncGenerator[ConfigChange, None]:
        """The initial full load, then every change found by file events or polling (forever)."""
        # The watch starts before the first scan, so no change falls in between.
        watcher = await self._start_watch()
        try:
            first = await self.poll()
            if first is None:  # someone polled before us: the initial load is delivered
                first = ConfigChange((), frozenset(), synced=True)
            self.synced.set()
            yield first
            while True:
                if watcher is None:
                    await self._sleep(self.poll_interval)
                    change = await self.poll()
                    if change is not None:
                        yield change
                    if self._retry_at is None or time.monotonic() < self._retry_at:
                        continue
                    watcher = await self._start_watch()
                    if watcher is None:
                        continue
                    change = await self.poll()  # what changed since that last poll
                else:
                    try:
                        changed = await watcher.next(self._scanned_at + self.rescan_interval)
                    except _WatchFailed as e:
                        await watcher.close()
                        watcher = None
                        log.warning("config folder %s: the watch failed: %s", self.path, e)
                        self._fall_back("the watch failed")
                        self._retry_at = time.monotonic() + self.rescan_interval
                        change = await self.poll()
                    else:
                        if changed is not None and not (changed & set(self._roots)):
                            change = await self._apply_events(changed)
                        else:
                            # The safety-net scan is due, or the folder itself was
                            # removed or moved (its watch would follow it). Watch
                            # afresh (a lost event may be a new folder's, which then
                            # has no watch), then scan.
                            await watcher.close()
                            watcher = None
                            watcher = await self._start_watch()
                            change = await self.poll()
                if change is not None:
                    yield change
        finally:
            self.watching = False
            if watcher is not None:
                await watcher.close()

    async def _start_watch(self) -> _Watcher | None:
        """A running watch of the folder, or None: poll (the reason logged once)."""
        self.watching = False
        self._retry_at = None
        roots = await asyncio.to_thread(_watch_roots, self.path)
        if roots is None:
            self._fall_back("it does not exist (yet)", logging.WARNING)
            if self.watch:
                self._retry_at = 0.0  # as soon as it exists
            return None
        if not self.watch:
            self._fall_back("file events are turned off")
            return None
        why = _NO_WATCHFILES or _forced_polling()
        if why:
            self._fall_back(why)
            return None
        debounce_ms = round(min(self.poll_interval, _MAX_DEBOUNCE) * 1000)
        watcher = _Watcher(roots[0], step_ms=_STEP_MS, debounce_ms=max(_STEP_MS, debounce_ms))
        try:
            await watcher.start()
        except Exception as e:  # OSError (e.g. out of inotify watches), watchfiles' errors
            self._fall_back(f"cannot watch it ({e})")
            self._retry_at = time.monotonic() + self.rescan_interval
            return None
        self._roots = roots
        self.watching = True
        if self._polling_why or not self._watched:
            log.info("config folder %s: watching for file events", self.path)
        self._polling_why = ""
        self._watched = True
        return watcher

    def _fall_back(self, why: str, level: int = logging.INFO) -> None:
        """Log (once per reason) why the folder is polled."""
        if why != self._polling_why:
            log.log(
                level, "config folder %s: %s; polling every %gs", self.path, why, self.poll_interval
            )
            self._polling_why = why
