"""Parsed config objects that are not yet mesh values.

`xdsd.model.parse` turns each YAML document into one of `ParsedObject`; the
store keeps them by `ObjectKey`; `xdsd.model.build` joins them (Services with
EndpointSlices and Pods, ServiceEntries with WorkloadEntries) into a snapshot.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from xdsd.model.types import ConfigObject, Locality, ObjectRef, Service, Workload

# (kind, namespace, name); cluster-scoped kinds (Namespace) have namespace "".
ObjectKey = tuple[str, str, str]


def key_of(ref: ObjectRef) -> ObjectKey:
    return (ref.kind, ref.namespace, ref.name)


def object_label(key: ObjectKey) -> str:
    """How errors name an object: `Kind ns/name` (`Kind name` when cluster-scoped)."""
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """A port of an EndpointSlice / Endpoints subset (named like the service port)."""

    name: str
    port: int
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    addresses: tuple[str, ...]
    ready: bool = True
    # The Pod behind the address, when the controller recorded it.
    target_ref: ObjectRef | None = None
    zone: str = ""
    node_name: str = ""
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[EndpointAddress, ...]


@dataclass(frozen=True)
class EndpointSet:
    """An EndpointSlice (one subset) or a legacy Endpoints object (its subsets)."""

    ref: ObjectRef
    service_name: str
    subsets: tuple[EndpointSubset, ...]
    # The Kubernetes cluster the object was read from (parse option `cluster_id`).
    cluster_id: str = "Kubernetes"


@dataclass(frozen=True)
class ServiceEntryConfig:
    """A ServiceEntry: one Service per host, plus its inline endpoints as Workloads."""

    ref: ObjectRef
    services: tuple[Service, ...]
    endpoints: tuple[Workload, ...] = ()
    # IP auto-allocation (xdsd.model.autoalloc): whether its hosts take part, the
    # addresses istiod's allocator wrote into status.addresses (host -> IPs), and the
    # creation time (older entries keep their addresses when new ones collide).
    auto_allocate: bool = False
    allocated: tuple[tuple[str, tuple[str, ...]], ...] = ()
    created: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """A Kubernetes Node, kept only for what endpoints need: its topology labels.

    Nodes change often (status, heartbeats); keeping just the locality means
    those updates compare equal in the store and cause no push.
    """

    ref: ObjectRef
    locality: Locality
    cluster_id: str = "Kubernetes"


ParsedObject = Service | Workload | ConfigObject | EndpointSet | ServiceEntryConfig | NodeInfo


class SecretData(Mapping[str, str]):
    """Read-only Secret data (base64 strings) whose repr never shows the values."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretData):
            return self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"SecretData(keys={sorted(self._data)!r})"

    def decoded(self, key: str) -> bytes:
        """The value of `key`, base64-decoded (raises KeyError / binascii.Error)."""
        return base64.b64decode(self._data[key], validate=True)
