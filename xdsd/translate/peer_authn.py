"""PeerAuthentication: a workload's effective mTLS mode, per port (istiod's
ComposePeerAuthentication), and a service's namespace-level mode for auto mTLS
(GetNamespaceMutualTLSMode).

Composition: start PERMISSIVE (the mesh default); the oldest mesh-wide policy
(root namespace, no selector), then the oldest namespace-wide one, then the
oldest workload policy (a selector matching the workload, outside the root
namespace) each override the mode unless theirs is UNSET. The workload policy's
portLevelMtls override single (target) ports; an UNSET port inherits.
"Oldest" is creationTimestamp, ties broken by name then namespace
(`policy_select.istio_order`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xdsd.model.istio.peerauthentication import PeerAuthentication
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate.policy_select import istio_order, labels_match

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
UNSET = "UNSET"
KIND = "PeerAuthentication"


@dataclass(frozen=True)
class MtlsPolicy:
    mode: str = PERMISSIVE
    ports: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    # The policies it came from (mesh, namespace, workload), as "ns/name".
    sources: tuple[str, ...] = ()

    def for_port(self, port: int) -> str:
        return self.ports.get(port, self.mode)


def _typed(obj: ConfigObject) -> PeerAuthentication | None:
    t = obj.typed
    return t if isinstance(t, PeerAuthentication) and not t.target_refs else None


def _levels(
    snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str] | None
) -> tuple[ConfigObject | None, ConfigObject | None, ConfigObject | None]:
    """(mesh, namespace, workload) policies; workload only when `labels` is given."""
    root = snapshot.root_namespace
    mesh = ns = workload = None
    for obj in istio_order(snapshot.configs_of(KIND)):
        pa = _typed(obj)
        if pa is None:
            continue
        if pa.selector is None:
            if obj.namespace == root:
                mesh = mesh or obj
            elif obj.namespace == namespace:
                ns = ns or obj
        elif (
            labels is not None
            and obj.namespace == namespace
            and namespace != root
            and labels_match(pa.selector, labels)
        ):
            workload = workload or obj
    return mesh, ns, workload


def workload_mtls(snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str]) -> MtlsPolicy:
    """Memoized per snapshot by (namespace, labels): every app's proxies ask."""
    memo: dict[tuple[str, tuple[tuple[str, str], ...]], MtlsPolicy] = snapshot.derived(
        f"{__name__}:workload", lambda _s: {}
    )
    key = (namespace, tuple(sorted(labels.items())))
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _compose(snapshot, namespace, labels)
    return hit


def _compose(snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str]) -> MtlsPolicy:
    mesh, ns, workload = _levels(snapshot, namespace, labels)
    mode = PERMISSIVE
    sources: list[str] = []
    for obj in (mesh, ns, workload):
        pa = _typed(obj) if obj is not None else None
        if pa is None or obj is None:
            continue
        sources.append(f"{obj.namespace}/{obj.name}")
        if pa.mode != UNSET:
            mode = pa.mode
    ports: dict[int, str] = {}
    wpa = _typed(workload) if workload is not None else None
    if wpa is not None:
        for port, port_mode in wpa.port_level.items():
            ports[port] = mode if port_mode == UNSET else port_mode
    return MtlsPolicy(mode, MappingProxyType(ports), tuple(sources))


def namespace_mtls(snapshot: MeshSnapshot, namespace: str) -> str | None:
    """The namespace's (else the mesh's) mode when set, else None (unknown)."""
    memo: dict[str, str | None] = snapshot.derived(f"{__name__}:ns", lambda _s: {})
    if namespace in memo:
        return memo[namespace]
    mesh, ns, _ = _levels(snapshot, namespace, None)
    out: str | None = None
    for obj in (ns, mesh):
        pa = _typed(obj) if obj is not None else None
        if pa is not None and pa.mode != UNSET:
            out = pa.mode
            break
    memo[namespace] = out
    return out
