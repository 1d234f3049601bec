"""What the security kinds decide for one proxy: its mTLS modes, the
AuthorizationPolicies that apply to it and whether it is a mesh workload.

A *mesh workload* has Istio's sidecar (its pod carries the injector's label
`security.istio.io/tlsMode: istio`) and so a local agent serving the
workload certificate over SDS. Only such a proxy gets the mTLS chains of a
PERMISSIVE port: a plain Envoy without an agent would hold those listeners
warming forever waiting for `default`/`ROOTCA`, and no client sends it mTLS
anyway (auto mTLS follows the same label). STRICT ports always get mTLS only,
agent or not: without certificates they refuse everything (fail closed).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xdsd.model.proxy import Proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import TLS_MODE_LABEL, Workload
from xdsd.translate.peer_authn import MtlsPolicy, workload_mtls
from xdsd.translate.policy_select import applicable
from xdsd.translate.rbac import WorkloadPolicies, policies_for


@dataclass(frozen=True)
class SecurityPlan:
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    mtls: MtlsPolicy = field(default_factory=MtlsPolicy)
    authz: WorkloadPolicies = field(default_factory=WorkloadPolicies)
    mesh_workload: bool = False
    # RequestAuthentications that apply (namespace, name): part of the key.
    request_authn: tuple[tuple[str, str], ...] = ()

    def key(self) -> Hashable:
        return (
            self.mtls.mode,
            tuple(sorted(self.mtls.ports.items())),
            self.authz.refs,
            self.mesh_workload,
            self.request_authn,
        )


def workload_labels(proxy: Proxy, workloads: tuple[Workload, ...]) -> Mapping[str, str]:
    """The labels policies select on: the proxy's own pod's, overlaid by node metadata LABELS."""
    labels: dict[str, str] = {}
    if workloads:
        labels.update(workloads[0].labels)
    labels.update(proxy.labels)
    return MappingProxyType(labels)


def plan_security(
    snapshot: MeshSnapshot, proxy: Proxy, namespace: str, workloads: tuple[Workload, ...]
) -> SecurityPlan:
    labels = workload_labels(proxy, workloads)
    ra = applicable(snapshot, "RequestAuthentication", namespace, labels)
    return SecurityPlan(
        labels=labels,
        mtls=workload_mtls(snapshot, namespace, labels),
        authz=policies_for(snapshot, namespace, labels),
        mesh_workload=labels.get(TLS_MODE_LABEL) == "istio",
        request_authn=tuple((o.namespace, o.name) for o in ra),
    )
