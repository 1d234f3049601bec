"""Resources per proxy group, generated lazily, serialized once, reused across pushes.

A type's resources for a proxy are made of parts (`xdsd.translate.generate.parts`):
the outbound side, shared by every app of a namespace, and the inbound side of
one app. Each part is generated once per key and snapshot; a group's set is
the union of its parts. Resources with the same bytes are interned, so groups
and generations share memory too.

Across snapshots (`reset` with the `Change` that led to the new one):

* a part whose output cannot depend on the changed kinds is kept as it is;
* on an endpoint-only change, every part is kept, except endpoints, which are
  patched: only the assignments of the services whose endpoints changed are
  generated again;
* anything else is generated again on demand.

A set built again for the same key remembers the previous one and which names
differ (`ResourceSet.base`/`changed`), so streams compare only those names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from xdsd.cache.resources import Resource, ResourceSet
from xdsd.model.snapshot import MeshSnapshot, ServiceKey
from xdsd.translate.generate import Part, ProxyContext, parts

Build = Callable[[], Iterable[tuple[str, Message]]]


@dataclass(frozen=True)
class Change:
    """What changed between two snapshots, as far as reuse is concerned."""

    # Config kinds of the changed objects; empty means unknown (nothing is reused).
    kinds: frozenset[str] = frozenset()
    # Set when only endpoints changed: the services whose endpoints differ.
    endpoint_services: frozenset[ServiceKey] | None = None


@dataclass(frozen=True)
class _Entry:
    part: Part
    ctx: ProxyContext  # the context it was generated from (to patch it later)
    rset: ResourceSet


class GroupCache:
    def __init__(self) -> None:
        self.generation = -1
        self._snapshot: MeshSnapshot | None = None
        # (part key, type URL, part name) -> the part's resources for this snapshot.
        self._parts: dict[tuple[Hashable, str, str], _Entry] = {}
        self._old_parts: dict[tuple[Hashable, str, str], _Entry] = {}
        # (group key, type URL) -> the group's set and the part sets it was made of.
        self._sets: dict[tuple[Hashable, str], tuple[ResourceSet, tuple[ResourceSet, ...]]] = {}
        self._old_sets: dict[tuple[Hashable, str], tuple[ResourceSet, tuple[ResourceSet, ...]]] = {}
        # (type_url, name, payload) -> Resource, across groups of a generation.
        self._interned: dict[tuple[str, str, bytes], Resource] = {}
        # The previous generation's table: an unchanged resource keeps its object.
        self._previous: dict[tuple[str, str, bytes], Resource] = {}
        self.builds = 0  # parts generated in full
        self.patches = 0  # endpoint parts patched by service
        self.kept = 0  # parts kept from the previous snapshot

    def reset(
        self, generation: int, snapshot: MeshSnapshot | None = None, change: Change | None = None
    ) -> None:
        """Start a new snapshot generation: keep what `change` cannot have altered."""
        if generation == self.generation:
            return
        self.generation = generation
        old_snapshot, self._snapshot = self._snapshot, snapshot
        change = change or Change()
        self._previous, self._interned = self._interned, {}
        old_parts, self._parts = self._parts, {}
        self._old_parts = old_parts
        self._old_sets, self._sets = self._sets, {}
        if snapshot is None or old_snapshot is None:
            return
        for key, entry in old_parts.items():
            kept = self._carry(entry, key[1], change, old_snapshot, snapshot)
            if kept is not None:
                self._parts[key] = kept
        # A group's set stays when all of its parts stayed (ids: the old sets are alive).
        current = {id(e.rset) for e in self._parts.values()}
        for gkey, (rset, part_sets) in self._old_sets.items():
            if all(id(ps) in current for ps in part_sets):
                self._sets[gkey] = (rset, part_sets)

    def _carry(
        self,
        entry: _Entry,
        type_url: str,
        change: Change,
        old: MeshSnapshot,
        new: MeshSnapshot,
    ) -> _Entry | None:
        # A kept entry keeps its context: the part does not depend on what changed, and a
        # patch below always reads endpoints from the snapshot it patches for.
        services = change.endpoint_services
        if services is not None:
            if entry.part.by_service is None or not services:
                self.kept += 1
                return entry
            ctx = dataclasses.replace(entry.ctx, snapshot=new)
            fresh = [self._intern(type_url, n, m) for n, m in entry.part.by_service(ctx, services)]
            self.patches += 1
            return _Entry(entry.part, ctx, entry.rset.patched(fresh))
        if entry.part.unaffected(change.kinds, old, new):
            self.kept += 1
            return entry
        return None

    def get(self, ctx: ProxyContext, key: Hashable, type_url: str) -> ResourceSet:
        """The group's resources of a type (`key`: the group key of `ctx`)."""
        cached = self._sets.get((key, type_url))
        if cached is not None:
            return cached[0]
        part_sets = tuple(self._part(ctx, part, type_url) for part in parts(ctx, type_url))
        old = self._old_sets.get((key, type_url))
        rset = self._merge(type_url, part_sets, old)
        self._sets[(key, type_url)] = (rset, part_sets)
        return rset

    def _part(self, ctx: ProxyContext, part: Part, type_url: str) -> ResourceSet:
        pkey = (part.key(ctx), type_url, part.name)
        entry = self._parts.get(pkey)
        if entry is None:
            resources = [self._intern(type_url, name, msg) for name, msg in part.generate(ctx)]
            self.builds += 1
            old = self._old_parts.get(pkey)
            rset = _diffed(type_url, resources, old.rset if old is not None else None)
            entry = self._parts[pkey] = _Entry(part, ctx, rset)
        return entry.rset

    def _intern(self, type_url: str, name: str, message: Message) -> Resource:
        payload = message.SerializeToString(deterministic=True)
        k = (type_url, name, payload)
        res = self._interned.get(k)
        if res is None:
            res = self._previous.get(k) or Resource.from_bytes(name, type_url, payload)
            self._interned[k] = res
        return res

    def _merge(
        self,
        type_url: str,
        part_sets: tuple[ResourceSet, ...],
        old: tuple[ResourceSet, tuple[ResourceSet, ...]] | None,
    ) -> ResourceSet:
        if len(part_sets) == 1:
            return part_sets[0]
        if old is not None and len(old[1]) == len(part_sets):
            # Patch the group's previous set with what its parts changed, when known.
            old_set, old_parts = old
            updated: list[Resource] = []
            removed: list[str] = []
            for new_p, old_p in zip(part_sets, old_parts, strict=True):
                if new_p is old_p:
                    continue
                if new_p.base is not old_p:
                    break
                for name in new_p.changed:
                    res = new_p.get(name)
                    if res is None:
                        removed.append(name)
                    else:
                        updated.append(res)
            else:
                return old_set.patched(updated, removed)
        merged = ResourceSet.merged(type_url, part_sets)
        return _diffed(type_url, merged, old[0] if old is not None else None)

    def sets(self) -> dict[tuple[Hashable, str], ResourceSet]:
        return {k: v[0] for k, v in self._sets.items()}


def _diffed(
    type_url: str, resources: Iterable[Resource] | ResourceSet, old: ResourceSet | None
) -> ResourceSet:
    """A new set, linked to `old` (the same key's previous set) by what differs."""
    if old is None:
        return (
            resources if isinstance(resources, ResourceSet) else ResourceSet.of(type_url, resources)
        )
    items = (
        resources.items if isinstance(resources, ResourceSet) else {r.name: r for r in resources}
    )
    removed = [name for name in old.items if name not in items]
    updated = [r for name, r in items.items() if old.items.get(name) is not r]
    return old.patched(updated, removed)
