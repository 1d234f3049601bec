"""Build an immutable MeshSnapshot from the store (pure, deterministic).

Endpoints of a Kubernetes Service come from its EndpointSlices (or, when it has
none, its legacy Endpoints), enriched from the Pod each address belongs to.
A Service with a selector but neither gets endpoints from its ready Pods, as
the EndpointSlice controller would make them, so a folder of Services and Pods
works. WorkloadEntries matching a Service's selector are added too (istiod
does this by default). ServiceEntry endpoints are its inline endpoints, else
the WorkloadEntries and Pods its workloadSelector picks in its namespace, else
(DNS resolution) its hosts.

Several Kubernetes clusters (one store each): Istio config comes from the
config cluster; Services merge by hostname; each endpoint carries its
cluster's id, its network (Pod label, else its Namespace's, else the root
namespace's) and its locality (Pod labels, else its Node's topology labels,
else the slice's zone). A Pod resolves Nodes of its own cluster only.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from xdsd.model.objects import (
    EndpointAddress,
    EndpointSet,
    EndpointSubset,
    NodeInfo,
    ServiceEntryConfig,
)
from xdsd.model.parse import DEFAULT_CLUSTER_ID, NETWORK_LABEL
from xdsd.model.snapshot import MeshSnapshot, ServiceKey
from xdsd.model.store import ConfigStore
from xdsd.model.types import (
    ConfigError,
    ConfigObject,
    Endpoint,
    Locality,
    Resolution,
    Service,
    ServicePort,
    Workload,
)

_EndpointMap = dict[tuple[ServiceKey, int], list[Endpoint]]
_NO_LOCALITY = Locality()


@dataclass
class _Cluster:
    """The Kubernetes objects of one cluster's store, indexed for the build."""

    cluster_id: str
    services: list[Service] = field(default_factory=list)
    pods: list[Workload] = field(default_factory=list)
    slices: dict[tuple[str, str], list[EndpointSet]] = field(
        default_factory=lambda: defaultdict(list)
    )
    legacy: dict[tuple[str, str], list[EndpointSet]] = field(
        default_factory=lambda: defaultdict(list)
    )
    nodes: dict[str, Locality] = field(default_factory=dict)
    pods_by_name: dict[tuple[str, str], Workload] = field(default_factory=dict)
    pods_by_ip: dict[str, list[Workload]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class _Config:
    """What only the config cluster provides: Istio config."""

    entries: list[ServiceEntryConfig] = field(default_factory=list)
    workload_entries: list[Workload] = field(default_factory=list)
    configs: dict[str, list[ConfigObject]] = field(default_factory=lambda: defaultdict(list))


def build_snapshot(
    store: ConfigStore,
    *,
    generation: int,
    root_namespace: str = "istio-system",
    domain_suffix: str = "cluster.local",
    remotes: Mapping[str, ConfigStore] = MappingProxyType({}),
    config_cluster_id: str = DEFAULT_CLUSTER_ID,
    stale: frozenset[str] = frozenset(),
) -> MeshSnapshot:
    """The snapshot of the config cluster's `store` plus the `remotes` stores by cluster id.

    Istio kinds come from `store` only; Kubernetes Services, Pods, EndpointSlices
    and Nodes come from every cluster. A Service defined in several clusters is
    one service (ports unioned, the config cluster's definition first); its
    endpoints come from each cluster that has it, carrying that cluster's id,
    their network and their Node's locality. `stale` names clusters whose last
    known state is served while they are unreachable (recorded in the snapshot).
    """
    config = _Config()
    clusters = [_collect(store, config_cluster_id, domain_suffix, root_namespace, config)]
    for cluster_id in sorted(remotes):
        if cluster_id != config_cluster_id:
            clusters.append(
                _collect(remotes[cluster_id], cluster_id, domain_suffix, root_namespace, None)
            )
    errors: list[ConfigError] = []

    # One service per hostname across clusters (config cluster first, then by id).
    kube: dict[ServiceKey, Service] = {}
    members: dict[ServiceKey, list[tuple[_Cluster, Service]]] = defaultdict(list)
    for cl in clusters:
        for svc in cl.services:
            key = (svc.hostname, svc.namespace)
            members[key].append((cl, svc))
            have = kube.get(key)
            kube[key] = svc if have is None else _merge(have, members[key][0][0], svc, cl, errors)

    pods = [p for cl in clusters for p in cl.pods]
    workload_entries = config.workload_entries
    # Kubernetes Services first, then ServiceEntry hosts: on a (host, namespace)
    # clash the first wins and the other is reported and left out entirely.
    entry_of = {e.ref: e for e in config.entries}
    candidates = list(kube.values()) + sorted(
        (s for e in config.entries for s in e.services),
        key=lambda s: (s.namespace, s.name, s.hostname),
    )
    services: dict[ServiceKey, Service] = {}
    for svc in candidates:
        first = services.setdefault((svc.hostname, svc.namespace), svc)
        if first is not svc:
            errors.append(
                ConfigError(
                    svc.ref.source,
                    f"{svc.ref.kind} {svc.namespace}/{svc.name}",
                    "",
                    f"host {svc.hostname} is already defined by {first.ref}; ignored",
                    "warning",
                )
            )

    endpoints: _EndpointMap = defaultdict(list)
    for svc in services.values():
        entry = entry_of.get(svc.ref)
        if entry is not None:
            _entry_endpoints(svc, entry, workload_entries, pods, endpoints)
            continue
        key = (svc.hostname, svc.namespace)
        for cl, own in members.get(key, ()):
            _cluster_endpoints(own, cl, endpoints)
        for we in _selected(workload_entries, svc.namespace, svc.selector or {}):
            for port in svc.ports:
                number = _entry_port(we, port)
                if number is not None and svc.selector:
                    endpoints[(key, port.port)].append(_endpoint(we, number, port.port))

    store_errors = store.errors() + tuple(
        e for cl in clusters[1:] for e in remotes[cl.cluster_id].errors()
    )
    return MeshSnapshot(
        generation=generation,
        services=tuple(services[k] for k in sorted(services)),
        endpoints=MappingProxyType(
            {k: _sorted_unique(v) for k, v in sorted(endpoints.items()) if v}
        ),
        workloads=tuple(
            sorted(
                (w for w in pods + workload_entries if w.address),
                key=lambda w: (w.namespace, w.name, w.ref.kind, w.cluster_id),
            )
        ),
        configs=MappingProxyType(
            {
                kind: tuple(sorted(objs, key=lambda c: (c.namespace, c.name)))
                for kind, objs in sorted(config.configs.items())
            }
        ),
        errors=store_errors + tuple(errors),
        root_namespace=root_namespace,
        domain_suffix=domain_suffix,
        stale_clusters=stale,
    )


def _collect(
    store: ConfigStore,
    cluster_id: str,
    domain_suffix: str,
    root_namespace: str,
    config: _Config | None,
) -> _Cluster:
    """Index one cluster's objects; Istio kinds go to `config` (None: not the config cluster)."""
    cl = _Cluster(cluster_id)
    raw_pods: list[Workload] = []
    networks: dict[str, str] = {}
    for obj in store.objects():
        if isinstance(obj, Service):
            cl.services.append(_with_suffix(obj, domain_suffix))
        elif isinstance(obj, Workload):
            if obj.ref.kind == "Pod":
                raw_pods.append(obj)
            elif config is not None:
                config.workload_entries.append(obj)
        elif isinstance(obj, EndpointSet):
            index = cl.slices if obj.ref.kind == "EndpointSlice" else cl.legacy
            index[(obj.ref.namespace, obj.service_name)].append(obj)
        elif isinstance(obj, NodeInfo):
            cl.nodes[obj.ref.name] = obj.locality
        elif isinstance(obj, ServiceEntryConfig):
            if config is not None:
                config.entries.append(obj)
        else:
            if obj.kind == "Namespace" and obj.labels.get(NETWORK_LABEL):
                networks[obj.name] = obj.labels[NETWORK_LABEL]
            if config is not None:
                config.configs[obj.kind].append(obj)
    default_network = networks.get(root_namespace, "")
    for raw in raw_pods:
        pod = _resolve(raw, cl, networks.get(raw.namespace, default_network))
        cl.pods.append(pod)
        cl.pods_by_name[(pod.namespace, pod.name)] = pod
        if pod.address:
            cl.pods_by_ip[pod.address].append(pod)
    return cl


def _resolve(pod: Workload, cl: _Cluster, network: str) -> Workload:
    """A Pod as the mesh sees it: its cluster, its network, its Node's locality."""
    changes: dict[str, Any] = {}
    if pod.cluster_id != cl.cluster_id:
        changes["cluster_id"] = cl.cluster_id
    if not pod.network and network:
        changes["network"] = network
    if pod.locality == _NO_LOCALITY and pod.node_name:
        locality = cl.nodes.get(pod.node_name, _NO_LOCALITY)
        if locality != _NO_LOCALITY:
            changes["locality"] = locality
    return dataclasses.replace(pod, **changes) if changes else pod


def _merge(
    have: Service, first: _Cluster, svc: Service, cl: _Cluster, errors: list[ConfigError]
) -> Service:
    """`svc` (from cluster `cl`) joins the service already known by its hostname."""
    numbers = {p.port for p in have.ports}
    names = {p.name for p in have.ports}
    ports = list(have.ports)
    for p in svc.ports:
        if p.port in numbers:
            continue
        if p.name in names:
            errors.append(
                ConfigError(
                    svc.ref.source,
                    f"Service {svc.namespace}/{svc.name}",
                    "spec.ports",
                    f"port {p.name!r} ({p.port}) in cluster {cl.cluster_id} conflicts with "
                    f"the same name on another port in {have.ref}; ignored",
                    "warning",
                )
            )
            continue
        ports.append(p)
        numbers.add(p.port)
        names.add(p.name)
    clusters = dict.fromkeys(have.clusters or (first.cluster_id,))
    clusters.update(dict.fromkeys(svc.clusters or (cl.cluster_id,)))
    return dataclasses.replace(
        have, ports=tuple(sorted(ports, key=lambda p: p.port)), clusters=tuple(clusters)
    )


def _cluster_endpoints(svc: Service, cl: _Cluster, endpoints: _EndpointMap) -> None:
    """Endpoints of a Kubernetes Service from one cluster (`svc` as that cluster defines it)."""
    key = (svc.hostname, svc.namespace)
    ns_name = (svc.namespace, svc.name)
    sets = cl.slices.get(ns_name) or cl.legacy.get(ns_name)
    if svc.external_name:
        for port in svc.ports:
            endpoints[(key, port.port)].append(
                Endpoint(
                    svc.external_name,
                    port.port,
                    port.port,
                    namespace=svc.namespace,
                    cluster_id=cl.cluster_id,
                )
            )
        return
    if sets:
        for eps in sets:
            for subset in eps.subsets:
                _from_subset(svc, subset, cl, endpoints)
    elif svc.selector:
        for pod in _selected(cl.pods, svc.namespace, svc.selector):
            for port in svc.ports:
                number = _pod_port(pod, port)
                if number is not None and pod.ready:
                    endpoints[(key, port.port)].append(_endpoint(pod, number, port.port))


def _with_suffix(svc: Service, domain_suffix: str) -> Service:
    hostname = f"{svc.name}.{svc.namespace}.svc.{domain_suffix}"
    return svc if svc.hostname == hostname else dataclasses.replace(svc, hostname=hostname)


def _selected(
    workloads: Iterable[Workload], namespace: str, selector: Mapping[str, str]
) -> list[Workload]:
    return [
        w
        for w in workloads
        if w.namespace == namespace
        and w.address
        and all(w.labels.get(k) == v for k, v in selector.items())
    ]


def _pod_port(pod: Workload, port: ServicePort) -> int | None:
    """The container port a service port targets (None: the pod has no such named port)."""
    target = port.target_port
    if target is None:
        return port.port
    if isinstance(target, int):
        return target
    return pod.named_ports.get(target)


def _entry_port(entry: Workload, port: ServicePort) -> int | None:
    """WorkloadEntry / inline endpoint port: its `ports` map by port name wins."""
    override = entry.port_overrides.get(port.name)
    if override is not None:
        return override
    target = port.target_port
    if isinstance(target, str):
        return entry.port_overrides.get(target)
    return target or port.port


def _endpoint(
    w: Workload,
    port: int,
    service_port: int,
    *,
    healthy: bool | None = None,
    address: str | None = None,
    locality: Locality | None = None,
) -> Endpoint:
    return Endpoint(
        address=w.address if address is None else address,
        port=port,
        service_port=service_port,
        labels=w.labels,
        service_account=w.service_account,
        namespace=w.namespace,
        workload_name=w.workload_name or w.name,
        cluster_id=w.cluster_id,
        network=w.network,
        locality=w.locality if locality is None else locality,
        healthy=w.ready if healthy is None else healthy,
        weight=w.weight,
    )


def _pod_for(
    addr: EndpointAddress,
    ip: str,
    namespace: str,
    by_name: Mapping[tuple[str, str], Workload],
    by_ip: Mapping[str, Sequence[Workload]],
) -> Workload | None:
    ref = addr.target_ref
    if ref is not None and ref.kind == "Pod":
        pod = by_name.get((ref.namespace, ref.name))
        if pod is not None:
            return pod
    candidates = by_ip.get(ip, ())
    # Several pods can share an IP (hostNetwork); prefer the service's namespace.
    for pod in candidates:
        if pod.namespace == namespace:
            return pod
    return candidates[0] if candidates else None


def _from_subset(svc: Service, subset: EndpointSubset, cl: _Cluster, out: _EndpointMap) -> None:
    key = (svc.hostname, svc.namespace)
    for port in svc.ports:
        # The EndpointSlice controller names slice ports after the service ports.
        target = next((p for p in subset.ports if p.name == port.name), None)
        if target is None:
            continue
        for addr in subset.endpoints:
            node = cl.nodes.get(addr.node_name, _NO_LOCALITY) if addr.node_name else _NO_LOCALITY
            for ip in addr.addresses:
                pod = _pod_for(addr, ip, svc.namespace, cl.pods_by_name, cl.pods_by_ip)
                if pod is not None:
                    # The slice's address wins; so does the pod's own locality, else the
                    # Node's, else the slice's zone.
                    locality = pod.locality
                    if locality == _NO_LOCALITY and (node != _NO_LOCALITY or addr.zone):
                        locality = node if node != _NO_LOCALITY else Locality(zone=addr.zone)
                    ep = _endpoint(
                        pod,
                        target.port,
                        port.port,
                        healthy=addr.ready,
                        address=ip,
                        locality=locality,
                    )
                else:
                    ep = Endpoint(
                        address=ip,
                        port=target.port,
                        service_port=port.port,
                        namespace=svc.namespace,
                        cluster_id=cl.cluster_id,
                        locality=node if node != _NO_LOCALITY else Locality(zone=addr.zone),
                        healthy=addr.ready,
                    )
                out[(key, port.port)].append(ep)


def _entry_endpoints(
    svc: Service,
    entry: ServiceEntryConfig,
    workload_entries: Sequence[Workload],
    pods: Sequence[Workload],
    out: _EndpointMap,
) -> None:
    key = (svc.hostname, svc.namespace)
    if entry.endpoints:
        for w in entry.endpoints:
            for port in svc.ports:
                number = _entry_port(w, port)
                if number is not None:
                    out[(key, port.port)].append(_endpoint(w, number, port.port))
    elif svc.selector is not None:
        for w in _selected(workload_entries, svc.namespace, svc.selector):
            for port in svc.ports:
                number = _entry_port(w, port)
                if number is not None:
                    out[(key, port.port)].append(_endpoint(w, number, port.port))
        for pod in _selected(pods, svc.namespace, svc.selector):
            for port in svc.ports:
                number = _pod_port(pod, port)
                if number is not None and pod.ready:
                    out[(key, port.port)].append(_endpoint(pod, number, port.port))
    elif svc.resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN):
        if svc.hostname.startswith("*"):
            return
        # Envoy resolves the host itself: the host is the endpoint.
        for port in svc.ports:
            out[(key, port.port)].append(
                Endpoint(
                    address=svc.hostname,
                    port=port.target_port if isinstance(port.target_port, int) else port.port,
                    service_port=port.port,
                    namespace=svc.namespace,
                )
            )


def _sorted_unique(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """Sorted by (address, port); of duplicates the healthy one is kept."""
    best: dict[tuple[str, int], Endpoint] = {}
    for ep in endpoints:
        k = (ep.address, ep.port)
        have = best.get(k)
        if have is None or (ep.healthy and not have.healthy):
            best[k] = ep
    return tuple(best[k] for k in sorted(best))
