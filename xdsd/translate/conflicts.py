"""Config that loses a conflict, reported on the loser (logs, validate, status).

istiod resolves conflicts between objects by age: the oldest (creationTimestamp,
then name, then namespace) wins and the others are ignored where they clash. The
translation does the same (`vs_index`, `dr_lookup`, `sidecar_scope`,
`peer_authn`); this module says so on each loser, with the field that lost:

- VirtualServices for sidecars (gateway `mesh`) claiming one host in one export
  scope: the oldest routes it (istiod's analyzer IST0109);
- DestinationRules for one host merged (no selector, same exportTo): a later
  rule's duplicate subset or second top-level trafficPolicy is ignored;
- Sidecars without workloadSelector, more than one in a namespace: the oldest
  applies (istiod's IST0116 says the same);
- PeerAuthentications without selector, more than one in a namespace (or more
  than one mesh-wide): the oldest applies.
"""

from __future__ import annotations

from collections import defaultdict

from xdsd.model.istio.peerauthentication import PeerAuthentication
from xdsd.model.istio.sidecar import Sidecar
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError, ConfigObject
from xdsd.translate import dr_lookup, vs_index
from xdsd.translate.policy_select import istio_order


def conflict_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    return (
        _virtual_services(snapshot)
        + _destination_rules(snapshot)
        + _selectorless(snapshot, "Sidecar", "Sidecar", "spec.workloadSelector")
        + _selectorless(snapshot, "PeerAuthentication", "PeerAuthentication", "spec.selector")
    )


def _objects(snapshot: MeshSnapshot, kind: str) -> dict[tuple[str, str], ConfigObject]:
    return {(o.namespace, o.name): o for o in snapshot.configs_of(kind)}


def _warn(obj: ConfigObject, path: str, message: str) -> ConfigError:
    return ConfigError(
        obj.ref.source, f"{obj.ref.kind} {obj.namespace}/{obj.name}", path, message, "warning"
    )


def _virtual_services(snapshot: MeshSnapshot) -> list[ConfigError]:
    objs = {f"{o.namespace}/{o.name}": o for o in snapshot.configs_of("VirtualService")}
    out: list[ConfigError] = []
    for loser, i, host, first in vs_index.index(snapshot).host_conflicts:
        obj = objs.get(loser)
        if obj is not None:
            out.append(
                _warn(
                    obj,
                    f"spec.hosts[{i}]",
                    f"host {host} is already routed for sidecars by the older "
                    f"VirtualService {first}: this one's routes for it are ignored "
                    "(as istiod; merge them or use delegate)",
                )
            )
    return out


def _destination_rules(snapshot: MeshSnapshot) -> list[ConfigError]:
    if not snapshot.configs_of("DestinationRule"):
        return []
    objs = _objects(snapshot, "DestinationRule")
    seen: set[tuple[str, str, str]] = set()
    out: list[ConfigError] = []
    for rule in dr_lookup.all_rules(snapshot):
        for ns, name, path in rule.dropped:
            obj = objs.get((ns, name))
            if obj is None or (ns, name, path) in seen:
                continue
            seen.add((ns, name, path))
            what = "a subset of that name" if path.startswith("spec.subsets") else "a trafficPolicy"
            out.append(
                _warn(
                    obj,
                    path,
                    f"ignored: the older DestinationRule {rule.namespace}/{rule.name} for host "
                    f"{rule.host} already has {what} (rules for one host are merged, the "
                    "oldest first, as istiod)",
                )
            )
    return out


def _selectorless(snapshot: MeshSnapshot, kind: str, label: str, path: str) -> list[ConfigError]:
    by_ns: dict[str, list[ConfigObject]] = defaultdict(list)
    for obj in snapshot.configs_of(kind):
        typed = obj.typed
        if isinstance(typed, Sidecar):
            if typed.workload_selector is not None:
                continue
        elif isinstance(typed, PeerAuthentication):
            if typed.selector is not None:
                continue
        else:
            continue
        by_ns[obj.namespace].append(obj)
    out: list[ConfigError] = []
    for ns, objs in sorted(by_ns.items()):
        if len(objs) < 2:
            continue
        first, *rest = istio_order(objs)
        scope = "the mesh" if ns == snapshot.root_namespace else f"namespace {ns}"
        for obj in rest:
            out.append(
                _warn(
                    obj,
                    path,
                    f"ignored: {scope} already has the older {label} {first.namespace}/"
                    f"{first.name} without a selector, which applies (as istiod)",
                )
            )
    return out
