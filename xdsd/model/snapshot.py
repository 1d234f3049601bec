"""An immutable view of the whole mesh at one moment (istiod's PushContext).

Built from the store by `xdsd.model.build.build_snapshot`; translators read it,
never the store, so one push sees one consistent world.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from xdsd.model.types import ConfigError, ConfigObject, Endpoint, Service, Workload

# (hostname, namespace): Istio lets several namespaces define the same host
# (ServiceEntries); Kubernetes hostnames are unique by construction.
ServiceKey = tuple[str, str]
T = TypeVar("T")


def _empty() -> Mapping[object, object]:
    return MappingProxyType({})


@dataclass(frozen=True)
class MeshSnapshot:
    # Monotonic build counter; not an xDS version (those are content hashes).
    generation: int = 0
    # All services, sorted by (hostname, namespace) so generated output is stable.
    services: tuple[Service, ...] = ()
    # Endpoints per service and service port number, sorted by (address, port).
    endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]] = field(
        default_factory=_empty  # type: ignore[arg-type]
    )
    # Pods and WorkloadEntries, for finding a proxy's own workload by IP.
    workloads: tuple[Workload, ...] = ()
    # Istio kinds not turned into services (VirtualService, DestinationRule, ...),
    # keyed by kind, oldest first (creationTimestamp, then name, namespace) where they
    # have timestamps, else by (namespace, name); see SnapshotBuilder._istio_order.
    configs: Mapping[str, tuple[ConfigObject, ...]] = field(
        default_factory=_empty  # type: ignore[arg-type]
    )
    # Problems found while loading/building, for status and debug output.
    errors: tuple[ConfigError, ...] = ()
    # Root namespace of the mesh (mesh-wide Sidecar, DestinationRule defaults).
    root_namespace: str = "istio-system"
    domain_suffix: str = "cluster.local"
    # Kubernetes clusters whose last known objects are served while unreachable.
    stale_clusters: frozenset[str] = frozenset()
    # The trust domain xdsd's CA issues identities in (`--trust-domain`); MeshConfig
    # trustDomain, where set, names the mesh's (xdsd.translate.trust_domain).
    trust_domain: str = "cluster.local"

    # Per-snapshot memo for indexes later stages derive (see `derived`).
    _memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # `workloads` by address, when the builder has it already (else made on first use).
    workload_ips: Mapping[str, tuple[Workload, ...]] | None = field(
        default=None, compare=False, repr=False
    )

    def derived(self, key: str, build: Callable[[MeshSnapshot], T]) -> T:
        """`build(self)`, computed once per snapshot (e.g. a host -> VirtualService index).

        Snapshots are immutable, so anything computed from one can be kept
        with it; `key` names the index (use the building module's name).
        """
        try:
            return cast(T, self._memo[key])
        except KeyError:
            value = self._memo[key] = build(self)
            return value

    def endpoints_for(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        return self.endpoints.get(((service.hostname, service.namespace), port), ())

    def workloads_by_ip(self, ip: str) -> tuple[Workload, ...]:
        return self._workload_index.get(ip, ())

    @functools.cached_property
    def _workload_index(self) -> Mapping[str, tuple[Workload, ...]]:
        # Built once per snapshot, on first use: every proxy looks itself up.
        if self.workload_ips is not None:
            return self.workload_ips
        return index_workloads(self.workloads)

    def configs_of(self, kind: str) -> tuple[ConfigObject, ...]:
        return self.configs.get(kind, ())


def index_workloads(workloads: tuple[Workload, ...]) -> Mapping[str, tuple[Workload, ...]]:
    """Workloads by address, each address's in `workloads` order."""
    index: dict[str, list[Workload]] = {}
    for w in workloads:
        index.setdefault(w.address, []).append(w)
    return MappingProxyType({ip: tuple(ws) for ip, ws in index.items()})
