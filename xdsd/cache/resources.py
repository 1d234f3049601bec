"""Serialized resources, versioned by a hash of their bytes."""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from xdsd.cache import wire

_TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# Istio's DNS name table, asked for by pilot-agent (not Envoy) on the same stream.
NAME_TABLE = _TYPE_PREFIX + "istio.networking.nds.v1.NameTable"

# The order a push sends types in on one stream (Envoy's make-before-break:
# clusters and their endpoints before the listeners and routes that use them).
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# Types whose SotW responses must carry every resource (the others are sent by name).
# Istio's own types are wildcard too (istiod IsWildcardTypeURL): NDS names nothing.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, NAME_TABLE})

SHORT_NAMES = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
    SECRET: "sds",
    NAME_TABLE: "nds",
}


def short_type(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource, serialized once, with the framing both protocols need.

    The payload is held once; a response is the concatenation of each
    resource's small prefix (and suffix), its payload, and a few fields.
    """

    name: str
    type_url: str
    payload: bytes  # the serialized resource message
    version: str  # hash of payload
    sotw_prefix: bytes  # DiscoveryResponse.resources tag+length, Any type_url, value tag+length
    delta_prefix: bytes  # DeltaDiscoveryResponse.resources tag+length, version, Any framing
    delta_suffix: bytes  # Resource.name (field 3 comes after the Any in field order)

    @classmethod
    def from_bytes(cls, name: str, type_url: str, payload: bytes) -> Resource:
        version = content_hash(payload)
        any_head = wire.field_str(wire.ANY_TYPE_URL, type_url) + wire.field_head(
            wire.ANY_VALUE, len(payload)
        )
        any_len = len(any_head) + len(payload)
        version_field = wire.field_str(wire.RESOURCE_VERSION, version)
        name_field = wire.field_str(wire.RESOURCE_NAME, name)
        body_head = wire.field_head(wire.RESOURCE_BODY, any_len)
        delta_len = len(version_field) + len(body_head) + any_len + len(name_field)
        return cls(
            name=name,
            type_url=type_url,
            payload=payload,
            version=version,
            sotw_prefix=wire.field_head(wire.SOTW_RESOURCES, any_len) + any_head,
            delta_prefix=wire.field_head(wire.DELTA_RESOURCES, delta_len)
            + version_field
            + body_head
            + any_head,
            delta_suffix=name_field,
        )

    @classmethod
    def from_message(cls, name: str, type_url: str, message: Message) -> Resource:
        # Deterministic so equal content always hashes to the same version.
        return cls.from_bytes(name, type_url, message.SerializeToString(deterministic=True))

    @property
    def sotw_field(self) -> bytes:
        """The encoded DiscoveryResponse.resources entry (an Any), tag included."""
        return self.sotw_prefix + self.payload

    @property
    def delta_field(self) -> bytes:
        """The encoded DeltaDiscoveryResponse.resources entry, tag included."""
        return self.delta_prefix + self.payload + self.delta_suffix


def sotw_chunks(resources: Iterable[Resource]) -> list[bytes]:
    """Byte chunks of the resources field entries, without copying payloads."""
    out: list[bytes] = []
    for r in resources:
        out.append(r.sotw_prefix)
        out.append(r.payload)
    return out


def delta_chunks(resources: Iterable[Resource]) -> list[bytes]:
    out: list[bytes] = []
    for r in resources:
        out.append(r.delta_prefix)
        out.append(r.payload)
        out.append(r.delta_suffix)
    return out


@dataclass(frozen=True)
class ResourceSet:
    """All resources of one type for one proxy group, by name.

    A set made by `patched` remembers the set it was made from (`base`) and the
    names that differ (`changed`: updated, added or removed), so a stream that
    was in sync with `base` only needs to look at those names.
    """

    type_url: str
    items: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))
    version: str = ""  # hash over (name, version) pairs; "" for the empty set
    # Weak: a chain of sets must not keep every earlier generation alive.
    _base: weakref.ref[ResourceSet] | None = field(default=None, compare=False, repr=False)
    changed: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def base(self) -> ResourceSet | None:
        return self._base() if self._base is not None else None

    @classmethod
    def of(cls, type_url: str, resources: Iterable[Resource]) -> ResourceSet:
        return cls._make(type_url, {r.name: r for r in resources})

    @classmethod
    def _make(
        cls,
        type_url: str,
        items: dict[str, Resource],
        base: ResourceSet | None = None,
        changed: frozenset[str] = frozenset(),
    ) -> ResourceSet:
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(items):
            h.update(name.encode())
            h.update(b"\0")
            h.update(items[name].version.encode())
            h.update(b"\n")
        version = h.hexdigest() if items else "empty"
        ref = weakref.ref(base) if base is not None else None
        return cls(type_url, MappingProxyType(items), version, ref, changed)

    def patched(self, updated: Iterable[Resource], removed: Iterable[str] = ()) -> ResourceSet:
        """This set with some resources replaced, added or removed (itself if none differ)."""
        items = dict(self.items)
        changed: set[str] = set()
        for r in updated:
            if items.get(r.name) is not r:
                items[r.name] = r
                changed.add(r.name)
        for name in removed:
            if items.pop(name, None) is not None:
                changed.add(name)
        if not changed:
            return self
        return self._make(self.type_url, items, self, frozenset(changed))

    @staticmethod
    def merged(type_url: str, parts: Sequence[ResourceSet]) -> ResourceSet:
        """One set of several disjoint ones (e.g. a group's outbound and inbound clusters)."""
        if len(parts) == 1:
            return parts[0]
        items: dict[str, Resource] = {}
        for part in parts:
            items.update(part.items)
        return ResourceSet._make(type_url, items)

    @functools.cached_property
    def versions(self) -> Mapping[str, str]:
        """name -> version, shared by every stream that holds exactly this set."""
        return MappingProxyType({name: r.version for name, r in self.items.items()})

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.items.values())

    def get(self, name: str) -> Resource | None:
        return self.items.get(name)

    @property
    def size_bytes(self) -> int:
        return sum(len(r.payload) for r in self.items.values())
