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

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from xdsd.model.autoalloc import allocate, eligible_hosts
from xdsd.model.discovery import (
    DiscoverySelectors,
    DiscoveryView,
    discovery_selectors,
    selected_namespaces,
)
from xdsd.model.jwks import JWKS_KIND, fetch_problems
from xdsd.model.objects import (
    EndpointAddress,
    EndpointSet,
    EndpointSubset,
    NodeInfo,
    ServiceEntryConfig,
)
from xdsd.model.parse import DEFAULT_CLUSTER_ID, NETWORK_LABEL
from xdsd.model.snapshot import MeshSnapshot, ServiceKey, index_workloads
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
Stores = ConfigStore | DiscoveryView  # what the build reads a cluster from
T = TypeVar("T")
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
    pods_by_ns: dict[str, list[Workload]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class _Config:
    """What only the config cluster provides: Istio config."""

    entries: list[ServiceEntryConfig] = field(default_factory=list)
    workload_entries: list[Workload] = field(default_factory=list)
    configs: dict[str, tuple[ConfigObject, ...]] = field(default_factory=dict)


# Kinds `_collect` indexes itself; every other kind is Istio (or other) config.
_INDEXED_KINDS = frozenset(
    {"Service", "Pod", "WorkloadEntry", "EndpointSlice", "Endpoints", "Node", "ServiceEntry"}
)


class _Memo:
    """One stage's last inputs and output; equal inputs give the same output.

    Inputs are compared with ==, which is an identity check for objects the store
    kept (it hands out the same objects and tuples until they change), so a hit
    costs little and a changed input is always seen.
    """

    __slots__ = ("inputs", "output")

    def __init__(self) -> None:
        self.inputs: object = _UNSET
        self.output: Any = None

    def get(self, inputs: object, build: Callable[[], T]) -> T:
        if self.inputs != inputs:
            self.output = build()
            self.inputs = inputs
        return cast(T, self.output)


_UNSET = object()


class _ClusterMemo:
    def __init__(self) -> None:
        self.services = _Memo()
        self.slices = _Memo()
        self.nodes = _Memo()
        self.networks = _Memo()
        self.pods = _PodIndex()


# (cluster id, namespace, service name) -> its slices, the keys their addresses look
# pods up by, and the pods found (see `SnapshotBuilder._slice_pods`).
_SlicePods = tuple[tuple[EndpointSet, ...], frozenset[object], tuple[Workload | None, ...]]


class SnapshotBuilder:
    """Builds one snapshot after another, redoing only the work whose inputs changed.

    The store hands out the same objects (and per-kind tuples) until they change,
    so each stage remembers its inputs and reuses its output when they are equal:
    when one pod is replaced, that pod is resolved again and its service's
    endpoints are rebuilt; every other service keeps its endpoint tuples (the
    very same objects, so comparing snapshots is cheap too). The result is always
    what a fresh `build_snapshot` makes.
    """

    def __init__(self) -> None:
        self._clusters: dict[str, _ClusterMemo] = {}
        # Per service: its endpoint inputs and its endpoints by port.
        self._endpoints: dict[ServiceKey, tuple[object, dict[int, tuple[Endpoint, ...]]]] = {}
        self._workloads = _Memo()
        self._allocation = _Memo()
        self._views: dict[str, DiscoveryView] = {}
        # (namespace, host) -> (the parsed service, the same with its allocated addresses)
        self._allocated: dict[ServiceKey, tuple[Service, Service]] = {}
        self._configs = _Memo()
        # kind -> (the store's tuple, the same objects oldest first)
        self._ordered: dict[str, tuple[tuple[ConfigObject, ...], tuple[ConfigObject, ...]]] = {}
        self._ips: tuple[tuple[Workload, ...], Mapping[str, tuple[Workload, ...]]] = ((), {})
        # The last build's and this build's `_slice_pods` answers.
        self._found: dict[tuple[str, str, str], _SlicePods] = {}
        self._found_next: dict[tuple[str, str, str], _SlicePods] = {}

    def _auto_addresses(
        self,
        entries: Sequence[ServiceEntryConfig],
        services: dict[ServiceKey, Service],
        errors: list[ConfigError],
    ) -> None:
        """Give ServiceEntry hosts without addresses their allocated ones (in place)."""
        if not any(e.auto_allocate for e in entries):
            self._allocated = {}
            return
        taken = frozenset(
            a
            for svc in services.values()
            for a in (*svc.addresses, *(x for _, xs in svc.cluster_addresses for x in xs))
        )
        allocation = self._allocation.get((tuple(entries), taken), lambda: allocate(entries, taken))
        done: dict[ServiceKey, tuple[Service, Service]] = {}
        for entry in entries:
            for host in eligible_hosts(entry):
                key = (host, entry.ref.namespace)
                svc = services.get(key)
                if svc is None or svc.ref != entry.ref:
                    continue  # the host is another object's in this namespace
                addrs = allocation.get((entry.ref.namespace, host))
                if addrs is None:
                    errors.append(
                        ConfigError(
                            entry.ref.source,
                            f"ServiceEntry {entry.ref.namespace}/{entry.ref.name}",
                            "spec.addresses",
                            f"no address left to allocate for host {host} "
                            "(240.240.0.0/16 is used up)",
                            "warning",
                        )
                    )
                    continue
                hit = self._allocated.get(key)
                if hit is None or hit[0] is not svc or hit[1].auto_addresses != addrs:
                    hit = (svc, dataclasses.replace(svc, auto_addresses=addrs))
                done[key] = hit
                services[key] = hit[1]
        self._allocated = done

    def _discovery_view(
        self, cluster_id: str, store: ConfigStore, selectors: DiscoverySelectors
    ) -> Stores:
        """The cluster's store, through MeshConfig discoverySelectors when it sets some."""
        if selectors.selectors is None:
            self._views.pop(cluster_id, None)
            return store
        view = self._views.get(cluster_id)
        if view is None or view.store is not store:
            view = self._views[cluster_id] = DiscoveryView(store)
        view.select(selected_namespaces(store, selectors))
        return view

    def build(
        self,
        store: ConfigStore,
        *,
        generation: int,
        root_namespace: str = "istio-system",
        domain_suffix: str = "cluster.local",
        remotes: Mapping[str, ConfigStore] = MappingProxyType({}),
        config_cluster_id: str = DEFAULT_CLUSTER_ID,
        stale: frozenset[str] = frozenset(),
        trust_domain: str = "cluster.local",
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
        selectors = discovery_selectors(store, root_namespace)
        views: dict[str, Stores] = {}
        for cluster_id, st in ((config_cluster_id, store), *sorted(remotes.items())):
            if cluster_id != config_cluster_id or st is store:
                views[cluster_id] = self._discovery_view(cluster_id, st, selectors)
        self._views = {k: v for k, v in self._views.items() if k in views}
        clusters = [
            self._collect(
                views[config_cluster_id], config_cluster_id, domain_suffix, root_namespace, config
            )
        ]
        for cluster_id in sorted(remotes):
            if cluster_id != config_cluster_id:
                clusters.append(
                    self._collect(
                        views[cluster_id], cluster_id, domain_suffix, root_namespace, None
                    )
                )
        self._clusters = {
            cl.cluster_id: self._clusters[cl.cluster_id] for cl in clusters
        }  # forget clusters that left
        errors: list[ConfigError] = list(selectors.problems)

        # One service per hostname across clusters (config cluster first, then by id).
        kube: dict[ServiceKey, Service] = {}
        members: dict[ServiceKey, list[tuple[_Cluster, Service]]] = defaultdict(list)
        for cl in clusters:
            for svc in cl.services:
                key = (svc.hostname, svc.namespace)
                members[key].append((cl, svc))
                have = kube.get(key)
                kube[key] = (
                    svc if have is None else _merge(have, members[key][0][0], svc, cl, errors)
                )

        pods = [p for cl in clusters for p in cl.pods]
        workload_entries = config.workload_entries
        # Kubernetes Services first, then ServiceEntry hosts: on a (host, namespace)
        # clash the first wins and the other is reported and left out entirely.
        entry_of = {e.ref: e for e in config.entries}
        # Among ServiceEntries the oldest wins (istiod's creation-time order).
        created = {e.ref: e.created for e in config.entries}
        candidates = list(kube.values()) + sorted(
            (s for e in config.entries for s in e.services),
            key=lambda s: (created.get(s.ref, ""), s.name, s.namespace, s.hostname),
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

        self._auto_addresses(config.entries, services, errors)

        entries_by_ns: dict[str, list[Workload]] = defaultdict(list)
        for we in workload_entries:
            if we.address:
                entries_by_ns[we.namespace].append(we)
        pods_by_ns: dict[str, list[Workload]] = defaultdict(list)
        for cl in clusters:
            for ns, in_ns in cl.pods_by_ns.items():
                pods_by_ns[ns].extend(in_ns)
        memo = self._endpoints
        self._endpoints = {}
        endpoints: dict[tuple[ServiceKey, int], tuple[Endpoint, ...]] = {}
        for key in sorted(services):
            svc = services[key]
            entry = entry_of.get(svc.ref)
            inputs = _endpoint_inputs(
                svc, entry, members.get(key, ()), entries_by_ns, pods_by_ns, self._slice_pods
            )
            hit = memo.get(key)
            if hit is not None and hit[0] == inputs:
                by_port = hit[1]
            else:
                by_port = _service_endpoints(
                    svc, entry, members.get(key, ()), entries_by_ns, pods_by_ns
                )
            self._endpoints[key] = (inputs, by_port)
            for port, eps in by_port.items():
                endpoints[(key, port)] = eps

        self._found, self._found_next = self._found_next, {}
        store_errors = store.errors() + tuple(
            e for cl in clusters[1:] for e in remotes[cl.cluster_id].errors()
        )
        workloads = self._workloads.get(
            (tuple(pods), tuple(workload_entries)),
            lambda: _workloads(clusters, workload_entries),
        )
        return MeshSnapshot(
            generation=generation,
            services=tuple(services[k] for k in sorted(services)),
            endpoints=MappingProxyType(endpoints),
            workloads=workloads,
            workload_ips=self._index_ips(workloads),
            configs=self._configs.get(
                config.configs, lambda: MappingProxyType(dict(config.configs))
            ),
            errors=store_errors
            + tuple(errors)
            + tuple(
                fetch_problems(
                    config.configs.get("RequestAuthentication", ()),
                    config.configs.get(JWKS_KIND, ()),
                )
            ),
            root_namespace=root_namespace,
            domain_suffix=domain_suffix,
            stale_clusters=stale,
            trust_domain=trust_domain,
        )

    def _istio_order(self, kind: str, objs: tuple[ConfigObject, ...]) -> tuple[ConfigObject, ...]:
        """Oldest first (creationTimestamp), then name, then namespace, as istiod orders
        objects to resolve conflicts between them (configCompareByCreationTime).

        Where no object has a timestamp (a folder) the store's tuple is kept as it is
        (namespace, then name); a sorted one is reused until the store's changes.
        """
        hit = self._ordered.get(kind)
        if hit is not None and hit[0] is objs:
            return hit[1]
        ordered = objs
        if any(o.created for o in objs):
            ordered = tuple(sorted(objs, key=lambda o: (o.created, o.name, o.namespace)))
        self._ordered[kind] = (objs, ordered)
        return ordered

    def _slice_pods(
        self, cl: _Cluster, own: Service, sets: Sequence[EndpointSet]
    ) -> tuple[Workload | None, ...]:
        """The pod behind each address of a service's slices (`_pod_for`), looked up again
        only when the slices changed or a pod came or went under one of their keys."""
        key = (cl.cluster_id, own.namespace, own.name)
        slices = tuple(sets)
        last = self._found.get(key)
        changed = self._clusters[cl.cluster_id].pods.changed
        if (
            last is not None
            and changed is not None
            and last[0] == slices
            and last[1].isdisjoint(changed)
        ):
            self._found_next[key] = last
            return last[2]
        addresses = [
            (addr, ip)
            for eps in slices
            for subset in eps.subsets
            for addr in subset.endpoints
            for ip in addr.addresses
        ]
        found = tuple(
            _pod_for(addr, ip, own.namespace, cl.pods_by_name, cl.pods_by_ip)
            for addr, ip in addresses
        )
        refs: set[object] = {ip for _, ip in addresses}
        refs.update(
            (addr.target_ref.namespace, addr.target_ref.name)
            for addr, _ in addresses
            if addr.target_ref is not None and addr.target_ref.kind == "Pod"
        )
        self._found_next[key] = (slices, frozenset(refs), found)
        return found

    def _index_ips(self, workloads: tuple[Workload, ...]) -> Mapping[str, tuple[Workload, ...]]:
        """`index_workloads(workloads)`, redoing only the addresses of workloads that
        came or went since the last build."""
        old, index = self._ips
        if workloads is old:
            return index
        before = {id(w): w for w in old}
        now = {id(w): w for w in workloads}
        gone = [before[i] for i in before.keys() - now.keys()]
        came = [now[i] for i in now.keys() - before.keys()]
        if not old or len(gone) + len(came) > max(16, len(workloads) // 8):
            index = index_workloads(workloads)
        else:
            updated = dict(index)
            for ip in {w.address for w in gone} | {w.address for w in came}:
                left = [w for w in updated.get(ip, ()) if id(w) in now]
                left += (w for w in came if w.address == ip)
                if left:
                    left.sort(key=_workload_order)
                    updated[ip] = tuple(left)
                else:
                    updated.pop(ip, None)
            index = MappingProxyType(updated)
        self._ips = (workloads, index)
        return index

    def _collect(
        self,
        store: Stores,
        cluster_id: str,
        domain_suffix: str,
        root_namespace: str,
        config: _Config | None,
    ) -> _Cluster:
        """Index one cluster's objects; Istio kinds go to `config` (None: not the config cluster)."""
        memo = self._clusters.get(cluster_id)
        if memo is None:
            memo = self._clusters[cluster_id] = _ClusterMemo()
        cl = _Cluster(cluster_id)
        svc_objs = store.objects("Service")
        cl.services = memo.services.get(
            (svc_objs, domain_suffix),
            lambda: [_with_suffix(o, domain_suffix) for o in svc_objs if isinstance(o, Service)],
        )
        slice_objs, legacy_objs = store.objects("EndpointSlice"), store.objects("Endpoints")
        cl.slices, cl.legacy = memo.slices.get(
            (slice_objs, legacy_objs), lambda: (_by_service(slice_objs), _by_service(legacy_objs))
        )
        node_objs = store.objects("Node")
        cl.nodes = memo.nodes.get(
            node_objs,
            lambda: {o.ref.name: o.locality for o in node_objs if isinstance(o, NodeInfo)},
        )
        ns_objs = store.objects("Namespace")
        networks: dict[str, str] = memo.networks.get(
            ns_objs,
            lambda: {
                o.name: o.labels[NETWORK_LABEL]
                for o in ns_objs
                if isinstance(o, ConfigObject) and o.labels.get(NETWORK_LABEL)
            },
        )
        pod_objs = store.objects("Pod")
        index = memo.pods
        index.update(pod_objs, cl, networks, root_namespace)
        cl.pods, cl.pods_by_name, cl.pods_by_ip, cl.pods_by_ns = (
            index.pods,
            index.by_name,
            index.by_ip,
            index.by_ns,
        )
        if config is None:
            return cl
        for kind in store.kinds():
            objs = store.objects(kind)
            if kind == "WorkloadEntry":
                config.workload_entries.extend(o for o in objs if isinstance(o, Workload))
            elif kind == "ServiceEntry":
                config.entries.extend(o for o in objs if isinstance(o, ServiceEntryConfig))
            elif kind not in _INDEXED_KINDS:
                config.configs[kind] = self._istio_order(kind, cast(tuple[ConfigObject, ...], objs))
        return cl


def build_snapshot(
    store: ConfigStore,
    *,
    generation: int,
    root_namespace: str = "istio-system",
    domain_suffix: str = "cluster.local",
    remotes: Mapping[str, ConfigStore] = MappingProxyType({}),
    config_cluster_id: str = DEFAULT_CLUSTER_ID,
    stale: frozenset[str] = frozenset(),
    trust_domain: str = "cluster.local",
) -> MeshSnapshot:
    """A snapshot built from scratch (see `SnapshotBuilder.build`)."""
    return SnapshotBuilder().build(
        store,
        generation=generation,
        root_namespace=root_namespace,
        domain_suffix=domain_suffix,
        remotes=remotes,
        config_cluster_id=config_cluster_id,
        stale=stale,
        trust_domain=trust_domain,
    )


def _by_service(objs: Sequence[object]) -> dict[tuple[str, str], list[EndpointSet]]:
    index: dict[tuple[str, str], list[EndpointSet]] = defaultdict(list)
    for obj in objs:
        if isinstance(obj, EndpointSet):
            index[(obj.ref.namespace, obj.service_name)].append(obj)
    return index


class _PodIndex:
    """One cluster's resolved pods and their indexes, kept from build to build.

    The store hands out the same object for a pod that did not change, so a new
    Pod tuple is compared with the last by object identity: pods that went are
    taken out of the indexes, new ones resolved and put in, in the store's
    (namespace, name) order, as a fresh build would have them. Anything a
    resolution reads (networks, Nodes) changing means a fresh index.
    """

    def __init__(self) -> None:
        self.context: object = _UNSET
        self._reset()

    def _reset(self) -> None:
        # What the last update changed: the (namespace, name) and address of every pod
        # that came or went (None: everything, e.g. a fresh index). An address's pod
        # lookup (`_pod_for`) can only change when one of its keys is in here.
        self.changed: set[object] | None = None
        self.source: Sequence[object] = ()
        # id(store object) -> (store object, resolved pod); holding the store
        # object keeps its id its own.
        self.by_id: dict[int, tuple[Workload, Workload]] = {}
        self.pods: list[Workload] = []
        self.by_name: dict[tuple[str, str], Workload] = {}
        self.by_ip: dict[str, list[Workload]] = defaultdict(list)
        self.by_ns: dict[str, list[Workload]] = defaultdict(list)

    def update(
        self,
        pod_objs: Sequence[object],
        cl: _Cluster,
        networks: Mapping[str, str],
        root_namespace: str,
    ) -> None:
        context = (networks, cl.nodes, root_namespace, cl.cluster_id)
        if context != self.context:
            self._reset()
            self.context = context
        elif pod_objs is self.source:
            self.changed = set()
            return
        raws = {id(o): o for o in pod_objs if isinstance(o, Workload)}
        default_network = networks.get(root_namespace, "")
        fresh = not self.by_id
        changed: set[object] = set()
        for gone in self.by_id.keys() - raws.keys():
            pod = self.by_id.pop(gone)[1]
            self._remove(pod)
            changed.update(((pod.namespace, pod.name), pod.address))
        for i, raw in (
            raws.items() if fresh else ((i, raws[i]) for i in raws.keys() - self.by_id.keys())
        ):
            pod = _resolve(raw, cl, networks.get(raw.namespace, default_network))
            self.by_id[i] = (raw, pod)
            if fresh:  # in the store's order already
                self.by_name[(pod.namespace, pod.name)] = pod
                if pod.address:
                    self.by_ip[pod.address].append(pod)
                    self.by_ns[pod.namespace].append(pod)
            else:
                self._add(pod)
                changed.update(((pod.namespace, pod.name), pod.address))
        by_id = self.by_id
        self.pods = [by_id[i][1] for i in raws]
        self.source = pod_objs
        self.changed = None if fresh else changed

    def _add(self, pod: Workload) -> None:
        self.by_name[(pod.namespace, pod.name)] = pod
        if pod.address:
            bisect.insort(self.by_ip[pod.address], pod, key=_ns_name)
            bisect.insort(self.by_ns[pod.namespace], pod, key=_ns_name)

    def _remove(self, pod: Workload) -> None:
        key = (pod.namespace, pod.name)
        if self.by_name.get(key) is pod:
            del self.by_name[key]
        if pod.address:
            _remove_from(self.by_ip, pod.address, pod)
            _remove_from(self.by_ns, pod.namespace, pod)


def _ns_name(w: Workload) -> tuple[str, str]:
    return (w.namespace, w.name)


def _remove_from(index: dict[str, list[Workload]], key: str, pod: Workload) -> None:
    found = index.get(key, [])
    for j, w in enumerate(found):
        if w is pod:
            del found[j]
            break
    if not found:
        index.pop(key, None)


def _workloads(
    clusters: Sequence[_Cluster], workload_entries: Sequence[Workload]
) -> tuple[Workload, ...]:
    """Pods and WorkloadEntries with an address, by (namespace, name, kind, cluster)."""
    found = [w for cl in clusters for w in cl.pods if w.address]
    found += (w for w in workload_entries if w.address)
    if len(clusters) == 1 and not workload_entries:
        return tuple(found)  # one cluster's pods: already in the store's (namespace, name) order
    return tuple(sorted(found, key=_workload_order))


def _workload_order(w: Workload) -> tuple[str, str, str, str]:
    return (w.namespace, w.name, w.ref.kind, w.cluster_id)


def _endpoint_inputs(
    svc: Service,
    entry: ServiceEntryConfig | None,
    members: Sequence[tuple[_Cluster, Service]],
    entries_by_ns: Mapping[str, Sequence[Workload]],
    pods_by_ns: Mapping[str, Sequence[Workload]],
    slice_pods: Callable[[_Cluster, Service, Sequence[EndpointSet]], tuple[Workload | None, ...]],
) -> tuple[object, ...]:
    """Everything `_service_endpoints` reads for `svc` (its memo key); `slice_pods` gives
    the pod behind each address of a service's slices."""
    if entry is not None:
        if entry.endpoints or svc.selector is None:
            return (svc, entry)
        return (
            svc,
            entry,
            tuple(_selected(entries_by_ns.get(svc.namespace, ()), svc.namespace, svc.selector)),
            tuple(_selected(pods_by_ns.get(svc.namespace, ()), svc.namespace, svc.selector)),
        )
    parts: list[object] = [svc]
    for cl, own in members:
        ns_name = (own.namespace, own.name)
        sets = cl.slices.get(ns_name) or cl.legacy.get(ns_name)
        if own.external_name:
            parts.append((cl.cluster_id, own))
        elif sets:
            parts.append((cl.cluster_id, own, tuple(sets), cl.nodes, slice_pods(cl, own, sets)))
        elif own.selector:
            in_ns = cl.pods_by_ns.get(own.namespace, ())
            parts.append((cl.cluster_id, own, tuple(_selected(in_ns, own.namespace, own.selector))))
        else:
            parts.append((cl.cluster_id, own))
    if svc.selector:
        parts.append(
            tuple(_selected(entries_by_ns.get(svc.namespace, ()), svc.namespace, svc.selector))
        )
    return tuple(parts)


def _service_endpoints(
    svc: Service,
    entry: ServiceEntryConfig | None,
    members: Sequence[tuple[_Cluster, Service]],
    entries_by_ns: Mapping[str, Sequence[Workload]],
    pods_by_ns: Mapping[str, Sequence[Workload]],
) -> dict[int, tuple[Endpoint, ...]]:
    """The endpoints of one service by port number, each sorted and unique."""
    out: _EndpointMap = defaultdict(list)
    key = (svc.hostname, svc.namespace)
    workload_entries = entries_by_ns.get(svc.namespace, ())
    if entry is not None:
        _entry_endpoints(svc, entry, workload_entries, pods_by_ns.get(svc.namespace, ()), out)
    else:
        for cl, own in members:
            _cluster_endpoints(own, cl, out)
        for we in _selected(workload_entries, svc.namespace, svc.selector or {}):
            for port in svc.ports:
                number = _entry_port(we, port)
                if number is not None and svc.selector:
                    out[(key, port.port)].append(_endpoint(we, number, port.port))
    return {k[1]: _sorted_unique(v) for k, v in sorted(out.items()) if v}


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
    per_cluster = dict(have.cluster_addresses)
    if svc.addresses and svc.addresses != have.addresses and cl.cluster_id not in per_cluster:
        per_cluster[cl.cluster_id] = svc.addresses
    return dataclasses.replace(
        have,
        ports=tuple(sorted(ports, key=lambda p: p.port)),
        clusters=tuple(clusters),
        cluster_addresses=tuple(sorted(per_cluster.items())),
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
        for pod in _selected(cl.pods_by_ns.get(svc.namespace, ()), svc.namespace, svc.selector):
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
