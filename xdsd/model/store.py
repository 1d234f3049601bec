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
        self._generation = 0
        # Answers of objects()/errors(), kept until the next change: every snapshot
        # build asks for them, most changes touch one file.
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
        self._objects_memo.clear()
        self._errors_memo = None
        prev = self._files.get(source)
        old_keys = set(prev.objects) if prev else set()
        before = {k: self.get(*k) for k in old_keys}
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
            if not owners:
                self._owners.pop(key, None)
        for key in new_keys - old_keys:
            self._owners.setdefault(key, set()).add(source)
        return {k for k, old in before.items() if self.get(*k) != old}

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
        """Served objects (duplicates resolved), sorted by (kind, namespace, name)."""
        memo = self._objects_memo.get(kind)
        if memo is not None:
            return memo
        keys = sorted(k for k in self._owners if kind is None or k[0] == kind)
        out: list[ParsedObject] = []
        for key in keys:
            obj = self.get(*key)
            if obj is not None:
                out.append(obj)
        memo = self._objects_memo[kind] = tuple(out)
        return memo

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
        for key in sorted(self._owners):
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
