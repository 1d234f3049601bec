"""Build an immutable MeshSnapshot from the store (pure, deterministic).

Endpoints of a Kubernetes Service come from its EndpointSlices (or, when it has
none, its legacy Endpoints), enriched from the Pod each address belongs to.
A Service with a selector but neither gets endpoints from its ready Pods, as
the EndpointSlice controller would make them, so a folder of Services and Pods
works. WorkloadEntries matching a Service's selector are added too (istiod
does this by default). ServiceEntry endpoints are its inline endpoints, else
the WorkloadEntries and Pods its workloadSelector picks in its namespace, else
(DNS resolution) its hosts.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from xdsd.model.objects import EndpointAddress, EndpointSet, EndpointSubset, ServiceEntryConfig
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


def build_snapshot(
    store: ConfigStore,
    *,
    generation: int,
    root_namespace: str = "istio-system",
    domain_suffix: str = "cluster.local",
) -> MeshSnapshot:
    objects = store.objects()
    kube_services: list[Service] = []
    entries: list[ServiceEntryConfig] = []
    pods: list[Workload] = []
    workload_entries: list[Workload] = []
    slices: dict[tuple[str, str], list[EndpointSet]] = defaultdict(list)
    legacy: dict[tuple[str, str], list[EndpointSet]] = defaultdict(list)
    configs: dict[str, list[ConfigObject]] = defaultdict(list)
    for obj in objects:
        if isinstance(obj, Service):
            kube_services.append(_with_suffix(obj, domain_suffix))
        elif isinstance(obj, ServiceEntryConfig):
            entries.append(obj)
        elif isinstance(obj, Workload):
            (pods if obj.ref.kind == "Pod" else workload_entries).append(obj)
        elif isinstance(obj, EndpointSet):
            index = slices if obj.ref.kind == "EndpointSlice" else legacy
            index[(obj.ref.namespace, obj.service_name)].append(obj)
        else:
            configs[obj.kind].append(obj)

    pods_by_name = {(p.namespace, p.name): p for p in pods}
    pods_by_ip: dict[str, list[Workload]] = defaultdict(list)
    for p in pods:
        if p.address:
            pods_by_ip[p.address].append(p)
    errors: list[ConfigError] = []
    # Kubernetes Services first, then ServiceEntry hosts: on a (host, namespace)
    # clash the first wins and the other is reported and left out entirely.
    entry_of = {e.ref: e for e in entries}
    candidates = kube_services + sorted(
        (s for e in entries for s in e.services), key=lambda s: (s.namespace, s.name, s.hostname)
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
        ns_name = (svc.namespace, svc.name)
        sets = slices.get(ns_name) or legacy.get(ns_name)
        if svc.external_name:
            for port in svc.ports:
                endpoints[(key, port.port)].append(
                    Endpoint(svc.external_name, port.port, port.port, namespace=svc.namespace)
                )
            continue
        if sets:
            for eps in sets:
                for subset in eps.subsets:
                    _from_subset(svc, subset, pods_by_name, pods_by_ip, endpoints)
        elif svc.selector:
            for pod in _selected(pods, svc.namespace, svc.selector):
                for port in svc.ports:
                    number = _pod_port(pod, port)
                    if number is not None and pod.ready:
                        endpoints[(key, port.port)].append(_endpoint(pod, number, port.port))
        for we in _selected(workload_entries, svc.namespace, svc.selector or {}):
            for port in svc.ports:
                number = _entry_port(we, port)
                if number is not None and svc.selector:
                    endpoints[(key, port.port)].append(_endpoint(we, number, port.port))

    return MeshSnapshot(
        generation=generation,
        services=tuple(services[k] for k in sorted(services)),
        endpoints=MappingProxyType(
            {k: _sorted_unique(v) for k, v in sorted(endpoints.items()) if v}
        ),
        workloads=tuple(
            sorted(
                (w for w in pods + workload_entries if w.address),
                key=lambda w: (w.namespace, w.name, w.ref.kind),
            )
        ),
        configs=MappingProxyType(
            {
                kind: tuple(sorted(objs, key=lambda c: (c.namespace, c.name)))
                for kind, objs in sorted(configs.items())
            }
        ),
        errors=store.errors() + tuple(errors),
        root_namespace=root_namespace,
        domain_suffix=domain_suffix,
    )


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
    w: Workload, port: int, service_port: int, *, healthy: bool | None = None
) -> Endpoint:
    return Endpoint(
        address=w.address,
        port=port,
        service_port=service_port,
        labels=w.labels,
        service_account=w.service_account,
        namespace=w.namespace,
        workload_name=w.workload_name or w.name,
        cluster_id=w.cluster_id,
        network=w.network,
        locality=w.locality,
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


def _from_subset(
    svc: Service,
    subset: EndpointSubset,
    by_name: Mapping[tuple[str, str], Workload],
    by_ip: Mapping[str, Sequence[Workload]],
    out: _EndpointMap,
) -> None:
    key = (svc.hostname, svc.namespace)
    for port in svc.ports:
        # The EndpointSlice controller names slice ports after the service ports.
        target = next((p for p in subset.ports if p.name == port.name), None)
        if target is None:
            continue
        for addr in subset.endpoints:
            for ip in addr.addresses:
                pod = _pod_for(addr, ip, svc.namespace, by_name, by_ip)
                if pod is not None:
                    ep = _endpoint(pod, target.port, port.port, healthy=addr.ready)
                    if ep.address != ip:
                        ep = dataclasses.replace(ep, address=ip)
                    if ep.locality == Locality() and addr.zone:
                        ep = dataclasses.replace(ep, locality=Locality(zone=addr.zone))
                else:
                    ep = Endpoint(
                        address=ip,
                        port=target.port,
                        service_port=port.port,
                        namespace=svc.namespace,
                        locality=Locality(zone=addr.zone),
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
