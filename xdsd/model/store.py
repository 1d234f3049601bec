"""The config store: parsed objects by (kind, namespace, name) and by source file.

Rules:
- Applying a file's new content replaces what that file held.
- Last good: when the document of an object that parsed fine before is now
  broken (or the file has a YAML syntax error), the previous version keeps
  being served and the error says so.
- Removing a file, or an object from a file, removes it.
- The same object in two files: the first source (sorted by name) wins, the
  other gets an error; if the winner goes away the other takes over.
- `generation` bumps only when the set of served objects really changes, so an
  edit that changes nothing (a comment, a touch) causes no push.

No I/O: sources deliver `ConfigChange` values (defined here so that model/
does not import sources/).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from xdsd.model.objects import ObjectKey, ParsedObject, key_of, object_label
from xdsd.model.parse import (
    DEFAULT_DOMAIN_SUFFIX,
    DEFAULT_NAMESPACE,
    ParseResult,
    parse_documents,
)
from xdsd.model.types import ConfigError

LAST_GOOD_NOTE = " (still serving the last good version)"


@dataclass(frozen=True)
class FileContent:
    """The new content of one source file; `result` None means the file is gone."""

    source: str
    result: ParseResult | None


@dataclass(frozen=True)
class ConfigChange:
    """One batch of file updates from a source (e.g. one poll of a folder)."""

    files: tuple[FileContent, ...]
    # Kinds the changed files held before or hold now (a hint for push scoping).
    kinds: frozenset[str] = frozenset()
    # True on the batch that completes the source's initial full load.
    synced: bool = False


@dataclass(frozen=True)
class _File:
    objects: dict[ObjectKey, ParsedObject]  # served, including kept last-good versions
    errors: tuple[ConfigError, ...]


class ConfigStore:
    def __init__(
        self,
        *,
        default_namespace: str = DEFAULT_NAMESPACE,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
    ) -> None:
        self._default_namespace = default_namespace
        self._domain_suffix = domain_suffix
        self._files: dict[str, _File] = {}
        self._owners: dict[ObjectKey, set[str]] = {}
        self._keys_by_kind: dict[str, set[ObjectKey]] = {}
        self._served: dict[ObjectKey, ParsedObject] = {}  # the winner of each key
        # Each kind's keys in order, kept sorted as keys come and go (`_reorder`).
        self._sorted_keys: dict[str, list[ObjectKey]] = {}
        self._duplicates: set[ObjectKey] = set()  # keys held by more than one file
        self._generation = 0
        # Answers of objects()/errors(), kept until a change touches them: every
        # snapshot build asks for them, and most changes touch one file of one or two
        # kinds, so `objects(kind)` of the other kinds stays the same tuple (the
        # snapshot builder reuses its work for a tuple it has seen).
        self._objects_memo: dict[str | None, tuple[ParsedObject, ...]] = {}
        self._errors_memo: tuple[ConfigError, ...] | None = None

    @property
    def generation(self) -> int:
        """Bumps each time the served objects change."""
        return self._generation

    # -- updates ------------------------------------------------------------------------

    def apply(self, change: ConfigChange) -> frozenset[ObjectKey]:
        """Apply a batch; return the keys whose served object changed (bumps once)."""
        changed: set[ObjectKey] = set()
        for content in change.files:
            changed |= self._apply(content.source, content.result)
        if changed:
            self._generation += 1
        return frozenset(changed)

    def apply_file(
        self, source: str, content: ParseResult | Iterable[object]
    ) -> frozenset[ObjectKey]:
        """Replace one file's objects with a parse result or raw YAML documents."""
        if not isinstance(content, ParseResult):
            content = parse_documents(
                content,
                source,
                default_namespace=self._default_namespace,
                domain_suffix=self._domain_suffix,
            )
        return self.apply(ConfigChange((FileContent(source, content),)))

    def remove_file(self, source: str) -> frozenset[ObjectKey]:
        return self.apply(ConfigChange((FileContent(source, None),)))

    def _apply(self, source: str, result: ParseResult | None) -> set[ObjectKey]:
        prev = self._files.get(source)
        old_keys = set(prev.objects) if prev else set()
        touched = {k[0] for k in old_keys}
        if result is not None:
            touched.update(o.ref.kind for o in result.objects)
        if prev is not None or result is not None:
            self._errors_memo = None
            self._objects_memo.pop(None, None)
            for kind in touched:
                self._objects_memo.pop(kind, None)
        before = {k: self.get(*k) for k in old_keys}
        came: list[ObjectKey] = []  # keys served from now on
        gone: list[ObjectKey] = []  # keys no longer served
        if result is None:
            self._files.pop(source, None)
            new_keys: set[ObjectKey] = set()
        else:
            entry = self._merge(source, prev, result)
            self._files[source] = entry
            new_keys = set(entry.objects)
            before.update({k: self.get(*k) for k in new_keys - old_keys})
        for key in old_keys - new_keys:
            owners = self._owners.get(key, set())
            owners.discard(source)
            if len(owners) < 2:
                self._duplicates.discard(key)
            if not owners:
                self._owners.pop(key, None)
                same_kind = self._keys_by_kind[key[0]]
                same_kind.discard(key)
                if not same_kind:
                    del self._keys_by_kind[key[0]]
                gone.append(key)
        for key in new_keys - old_keys:
            owners = self._owners.setdefault(key, set())
            owners.add(source)
            if len(owners) > 1:
                self._duplicates.add(key)
            else:
                came.append(key)
            self._keys_by_kind.setdefault(key[0], set()).add(key)
        self._reorder(came, gone)
        changed = set()
        for key, old in before.items():
            obj = self.get(*key)
            if obj is None:
                self._served.pop(key, None)
            else:
                self._served[key] = obj
            if obj != old:
                changed.add(key)
        return changed

    def _merge(self, source: str, prev: _File | None, result: ParseResult) -> _File:
        objects: dict[ObjectKey, ParsedObject] = {}
        errors = list(result.errors)
        for obj in result.objects:
            key = key_of(obj.ref)
            if key in objects:
                first = objects[key].ref.source
                errors.append(
                    ConfigError(
                        obj.ref.source,
                        object_label(key),
                        "metadata.name",
                        f"duplicate of the object in {first}; ignored",
                    )
                )
                continue
            objects[key] = obj
        kept: set[ObjectKey] = set()
        if prev is not None:
            keep = set(result.failed)
            if not result.complete:
                keep |= set(prev.objects)  # unread: not removed
            for key in sorted(keep - objects.keys()):
                if key in prev.objects:
                    objects[key] = prev.objects[key]
                    kept.add(key)
        for fallback in result.fallbacks:
            objects.setdefault(key_of(fallback.ref), fallback)
        if kept:
            labels = {object_label(k) for k in kept}
            errors = [
                _with_note(e) if e.object in labels and e.severity == "error" else e for e in errors
            ]
            if not result.complete:
                errors.append(
                    ConfigError(
                        source,
                        "",
                        "",
                        f"the file could not be read completely; kept {len(kept)} "
                        "objects from its last good version",
                        "warning",
                    )
                )
        return _File(objects, tuple(errors))

    # -- queries ------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> ParsedObject | None:
        key = (kind, namespace, name)
        owners = self._owners.get(key)
        if not owners:
            return None
        return self._files[min(owners)].objects[key]

    def objects(self, kind: str | None = None) -> tuple[ParsedObject, ...]:
        """Served objects (duplicates resolved), sorted by (kind, namespace, name).

        The same tuple is returned until a change touches objects of `kind`.
        """
        memo = self._objects_memo.get(kind)
        if memo is not None:
            return memo
        if kind is None:
            memo = tuple(o for k in self.kinds() for o in self.objects(k))
        else:
            memo = tuple(map(self._served.__getitem__, self._sorted_keys.get(kind, ())))
        self._objects_memo[kind] = memo
        return memo

    def _reorder(self, came: list[ObjectKey], gone: list[ObjectKey]) -> None:
        """Keep each kind's key list sorted: a few keys by bisection, many (a whole
        file, the initial load) by one filter and one sort."""
        by_kind: dict[str, tuple[list[ObjectKey], list[ObjectKey]]] = {}
        for key in came:
            by_kind.setdefault(key[0], ([], []))[0].append(key)
        for key in gone:
            by_kind.setdefault(key[0], ([], []))[1].append(key)
        for kind, (added, removed) in by_kind.items():
            keys = self._sorted_keys.setdefault(kind, [])
            if len(added) + len(removed) > 16:
                dropped = set(removed)
                keys[:] = [k for k in keys if k not in dropped]
                keys.extend(added)
                keys.sort()
            else:
                for key in removed:
                    i = bisect.bisect_left(keys, key)
                    if i < len(keys) and keys[i] == key:
                        del keys[i]
                for key in added:
                    bisect.insort(keys, key)
            if not keys:
                del self._sorted_keys[kind]

    def kinds(self) -> tuple[str, ...]:
        """The kinds of the served objects, sorted."""
        return tuple(sorted(self._keys_by_kind))

    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._files))

    def replay(self) -> tuple[FileContent, ...]:
        """The store's state as file contents: applied to an empty store, they make an
        equal store (kept last-good versions and their errors included), on which later
        changes then apply exactly as here. (A worker process starts from this.)"""
        return tuple(
            FileContent(source, ParseResult(tuple(f.objects.values()), f.errors))
            for source, f in sorted(self._files.items())
        )

    def errors(self) -> tuple[ConfigError, ...]:
        """Parse errors by file (sorted), then duplicates across files."""
        if self._errors_memo is None:
            self._errors_memo = self._errors()
        return self._errors_memo

    def _errors(self) -> tuple[ConfigError, ...]:
        out: list[ConfigError] = []
        for source in sorted(self._files):
            out.extend(self._files[source].errors)
        for key in sorted(self._duplicates):
            owners = sorted(self._owners[key])
            winner = self._files[owners[0]].objects[key].ref.source
            for loser in owners[1:]:
                obj = self._files[loser].objects[key]
                out.append(
                    ConfigError(
                        obj.ref.source,
                        object_label(key),
                        "metadata.name",
                        f"duplicate of the object in {winner}; ignored",
                    )
                )
        return tuple(out)

    def __len__(self) -> int:
        return len(self._owners)


def _with_note(error: ConfigError) -> ConfigError:
    if error.message.endswith(LAST_GOOD_NOTE):
        return error
    return ConfigError(
        error.source, error.object, error.path, error.message + LAST_GOOD_NOTE, error.severity
    )
