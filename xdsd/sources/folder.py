"""Watch a folder of Kubernetes / Istio YAML by polling.

Usage::

    source = FolderSource("config/", poll_interval=0.5)
    async for change in source.changes():   # ConfigChange batches
        store.apply(change)

- `changes()` first yields one ConfigChange holding every file (`synced=True`,
  even for an empty or missing folder), then one per poll that found files
  added, changed or removed. It never ends on its own; cancel the task.
- `synced` is an `asyncio.Event` set just before the initial change is yielded;
  `bool(source.synced)` tells whether it is set.
- `poll()` runs one scan and returns its ConfigChange (None when nothing
  changed); tests drive it directly instead of sleeping.

Files: every `*.yaml` / `*.yml` below the folder, recursively, in sorted order;
names starting with "." are skipped (editor temp files, the `..data` links of a
mounted ConfigMap). Each file is multi-document; `kind: List` is expanded.
A file is re-read when its (mtime_ns, ctime_ns, size, inode) changes and
re-parsed only when its bytes changed. A YAML syntax error names the file and
line; the documents before it still load and the file's other objects stay as
they were. Stat, read and parse run in a worker thread (`asyncio.to_thread`).
Objects are named `<folder>/<relative path>#<document index>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from xdsd.model.parse import (
    DEFAULT_DOMAIN_SUFFIX,
    DEFAULT_NAMESPACE,
    ParseResult,
    parse_documents,
)
from xdsd.model.types import ConfigError
from xdsd.sources.events import ConfigChange, FileContent

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml")

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


@dataclass(frozen=True)
class _Options:
    default_namespace: str
    domain_suffix: str


def load_yaml(
    data: bytes | str,
    source: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
) -> ParseResult:
    """Parse the YAML text of one file; never raises.

    On a syntax error the documents before it are kept and the result is
    marked incomplete (so the store keeps the file's other objects).
    """
    docs: list[object] = []
    syntax: list[ConfigError] = []
    try:
        for doc in yaml.safe_load_all(data):
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
    try:
        data = path.read_bytes()
    except OSError as e:
        error = ConfigError(source, "", "", f"cannot read the file: {e.strerror or e}")
        state = _FileState(signature, b"", old.kinds if old else frozenset())
        return state, FileContent(source, ParseResult(errors=(error,), complete=False)), frozenset()
    digest = hashlib.sha256(data).digest()
    if old is not None and old.digest == digest:
        return replace(old, signature=signature), None, frozenset()
    result = load_yaml(
        data,
        source,
        default_namespace=opts.default_namespace,
        domain_suffix=opts.domain_suffix,
    )
    # An incomplete read keeps the old objects, so keep their kinds too.
    file_kinds = result.kinds | (old.kinds if old and not result.complete else frozenset())
    touched = file_kinds | (old.kinds if old else frozenset())
    return _FileState(signature, digest, file_kinds), FileContent(source, result), touched


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


class FolderSource:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        default_namespace: str = DEFAULT_NAMESPACE,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.synced = SyncedEvent()
        self._opts = _Options(default_namespace, domain_suffix)
        self._sleep = sleep
        self._states: dict[str, _FileState] = {}
        self._loaded = False
        self._lock = asyncio.Lock()

    async def poll(self) -> ConfigChange | None:
        """Scan once. The first call always returns the full initial state."""
        async with self._lock:
            states, contents, kinds = await asyncio.to_thread(
                _scan, self.path, dict(self._states), self._opts
            )
            self._states = states
            initial = not self._loaded
            self._loaded = True
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
        """The initial full load, then every change found by polling (forever)."""
        if not await asyncio.to_thread(self.path.is_dir):
            log.warning("config folder %s does not exist (yet); polling for it", self.path)
        first = await self.poll()
        if first is None:  # someone polled before us: the initial load is delivered
            first = ConfigChange((), frozenset(), synced=True)
        self.synced.set()
        yield first
        while True:
            await self._sleep(self.poll_interval)
            change = await self.poll()
            if change is not None:
                yield change
