"""MeshConfig `discoverySelectors`: the namespaces whose objects the mesh is made of.

istiod (pkg/kube/namespace/filter.go) puts one filter on every Kubernetes client:
with selectors set, a namespaced object is seen only if its namespace's labels
match at least one selector (matchLabels and matchExpressions, ORed across
selectors; an empty selector matches every namespace); without selectors every
namespace is. It applies to Services, Pods, EndpointSlices and the Istio config
kinds alike, in the config cluster and in each remote cluster (by that
cluster's own Namespace labels). The control plane's own inputs (the MeshConfig
and injector ConfigMaps, Secrets) are read past it, as istiod reads them through
its own watchers.

Here the filter is a view over a cluster's store (`DiscoveryView`): objects stay
in the store, so a relabelled namespace or a changed selector takes effect at the
next build without a relist, and each kind's filtered tuple is the same object
until that kind or the selection changes (the snapshot builder's memos hold).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xdsd.model.labels import LabelSelector, parse_selector
from xdsd.model.meshconfig import MESH_CONFIGMAP, MESH_KEY, parse_mesh
from xdsd.model.objects import ParsedObject
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError, ConfigObject

# Read past the selectors: the control plane's own inputs, and cluster-scoped kinds.
UNFILTERED_KINDS = frozenset({"ConfigMap", "Secret", "Namespace", "Node"})


@dataclass(frozen=True)
class DiscoverySelectors:
    """The selectors of the MeshConfig, or None when it sets none (every namespace)."""

    selectors: tuple[LabelSelector, ...] | None = None
    problems: tuple[ConfigError, ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        return self.selectors is None or any(s.matches(labels) for s in self.selectors)


def _mesh_configmap(store: ConfigStore, root_namespace: str) -> ConfigObject | None:
    cm = store.get("ConfigMap", root_namespace, MESH_CONFIGMAP)
    return cm if isinstance(cm, ConfigObject) else None


def discovery_selectors(store: ConfigStore, root_namespace: str) -> DiscoverySelectors:
    """`discoverySelectors` of the MeshConfig (ConfigMap `istio`, key `mesh`, in the root
    namespace of the config cluster). A selector that cannot be read is reported and
    left out; if none can be read, nothing is filtered (istiod keeps its old filter)."""
    cm = _mesh_configmap(store, root_namespace)
    if cm is None:
        return DiscoverySelectors()
    # An unreadable MeshConfig is reported where the proxies' config reads it (checks).
    mesh, _ = parse_mesh((cm.spec.get("data") or {}).get(MESH_KEY))
    raw = mesh.get("discoverySelectors")
    if raw is None:
        return DiscoverySelectors()
    where = "data.mesh.discoverySelectors"
    what = f"ConfigMap {root_namespace}/{MESH_CONFIGMAP}"
    if not isinstance(raw, list):
        problem = ConfigError(cm.ref.source, what, where, "must be a list of label selectors")
        return DiscoverySelectors(problems=(problem,))
    found: list[tuple[str, str]] = []
    selectors = []
    for i, doc in enumerate(raw):
        sel = parse_selector(doc, f"{where}[{i}]", found)
        if sel is not None:
            selectors.append(sel)
    problems = tuple(ConfigError(cm.ref.source, what, path, why) for path, why in found)
    if raw and not selectors:
        return DiscoverySelectors(problems=problems)
    return DiscoverySelectors(tuple(selectors), problems)


def selected_namespaces(store: ConfigStore, selectors: DiscoverySelectors) -> frozenset[str]:
    """The names of the cluster's Namespaces the selectors select."""
    return frozenset(
        o.ref.name
        for o in store.objects("Namespace")
        if isinstance(o, ConfigObject) and selectors.selects(o.labels)
    )


class DiscoveryView:
    """A cluster's store as the builder reads it, with unselected namespaces left out."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.namespaces: frozenset[str] = frozenset()
        # kind -> (the store's tuple, the selection, the filtered tuple)
        self._memo: dict[
            str, tuple[tuple[ParsedObject, ...], frozenset[str], tuple[ParsedObject, ...]]
        ] = {}

    def select(self, namespaces: frozenset[str]) -> None:
        if namespaces != self.namespaces:  # keep the old set: the memo checks identity
            self.namespaces = namespaces

    def objects(self, kind: str) -> tuple[ParsedObject, ...]:
        objs = self.store.objects(kind)
        if kind in UNFILTERED_KINDS:
            return objs
        hit = self._memo.get(kind)
        if hit is not None and hit[0] is objs and hit[1] is self.namespaces:
            return hit[2]
        keep = self.namespaces
        out = tuple(o for o in objs if not o.ref.namespace or o.ref.namespace in keep)
        self._memo[kind] = (objs, keep, out)
        return out

    def kinds(self) -> tuple[str, ...]:
        return self.store.kinds()

    def errors(self) -> tuple[ConfigError, ...]:
        return self.store.errors()

    def left_out(self) -> int:
        """How many objects the selection leaves out (for logs and debug)."""
        return sum(
            len(self.store.objects(k)) - len(self.objects(k))
            for k in self.kinds()
            if k not in UNFILTERED_KINDS
        )
