"""Which security policies apply to a workload, in Istio's order.

As istiod (model.PolicyMatcher, sortConfigByCreationTime): a policy in the
root namespace without a selector applies to the whole mesh; one in a workload
namespace without a selector to every workload there; one with a selector to
the workloads whose labels include it (AuthorizationPolicy and
RequestAuthentication: root-namespace selectors match in every namespace;
PeerAuthentication: only in the root namespace itself). Policies with
targetRef(s) apply to Gateway API gateways and waypoints, never to sidecars.

Equal policies are ordered oldest first by `metadata.creationTimestamp`;
among equal timestamps (or none, as in a folder) by name, then namespace,
which is how istiod sorts them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject


def istio_order(objs: Iterable[ConfigObject]) -> list[ConfigObject]:
    """Oldest first; ties by name, then namespace."""
    return sorted(objs, key=lambda o: (o.created, o.name, o.namespace))


def labels_match(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return selector is None or all(labels.get(k) == v for k, v in selector.items())


def applicable(
    snapshot: MeshSnapshot,
    kind: str,
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_selectors_mesh_wide: bool = True,
) -> list[ConfigObject]:
    """The typed policies of `kind` that apply to a workload, in Istio's order.

    Only objects whose typed form parsed are returned (`typed` is not None), and
    only those with `selector`/`target_refs` attributes behave as documented here.
    """
    root = snapshot.root_namespace
    out: list[ConfigObject] = []
    for obj in snapshot.configs_of(kind):
        typed = obj.typed
        if typed is None or tuple(getattr(typed, "target_refs", ())):
            continue
        if obj.namespace != namespace and obj.namespace != root:
            continue
        selector: Mapping[str, str] | None = getattr(typed, "selector", None)
        root_only = not root_selectors_mesh_wide and obj.namespace == root
        if selector is not None and root_only and namespace != root:
            continue
        if labels_match(selector, labels):
            out.append(obj)
    return istio_order(out)
