"""Resources per proxy group for the current snapshot, generated lazily, serialized once.

Proxies whose generation inputs are equal (the translate stage's group key)
share one ResourceSet per type: a push to a thousand sidecars of one namespace
generates and serializes once. Resources with the same bytes are interned so
groups share memory too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from google.protobuf.message import Message

from xdsd.cache.resources import Resource, ResourceSet

Build = Callable[[], Iterable[tuple[str, Message]]]


class GroupCache:
    def __init__(self) -> None:
        self.generation = -1
        self._sets: dict[tuple[Hashable, str], ResourceSet] = {}
        # (type_url, name, payload) -> Resource, across groups of a generation.
        self._interned: dict[tuple[str, str, bytes], Resource] = {}
        # The previous generation's table: an unchanged resource keeps its object.
        self._previous: dict[tuple[str, str, bytes], Resource] = {}
        self.builds = 0

    def reset(self, generation: int) -> None:
        """Start a new snapshot generation; resources are rebuilt on demand."""
        if generation != self.generation:
            self.generation = generation
            self._sets.clear()
            self._previous, self._interned = self._interned, {}

    def get(self, key: Hashable, type_url: str, build: Build) -> ResourceSet:
        cached = self._sets.get((key, type_url))
        if cached is not None:
            return cached
        resources = [self._intern(type_url, name, msg) for name, msg in build()]
        rset = ResourceSet.of(type_url, resources)
        self._sets[(key, type_url)] = rset
        self.builds += 1
        return rset

    def _intern(self, type_url: str, name: str, message: Message) -> Resource:
        payload = message.SerializeToString(deterministic=True)
        k = (type_url, name, payload)
        res = self._interned.get(k)
        if res is None:
            res = self._previous.get(k) or Resource.from_bytes(name, type_url, payload)
            self._interned[k] = res
        return res

    def sets(self) -> dict[tuple[Hashable, str], ResourceSet]:
        return dict(self._sets)
