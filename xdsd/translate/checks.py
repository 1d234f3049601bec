"""Problems only translation can see, reported on the objects they concern.

They join the snapshot's errors, so they show where every config problem does:
logs, `xdsd validate`, /debug/configz and `--write-status`.
"""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.model.istio.authorizationpolicy import AuthorizationPolicy
from xdsd.model.meshconfig import MESH_CONFIGMAP, mesh_config
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError, ConfigObject, Service
from xdsd.translate.conflicts import conflict_problems
from xdsd.translate.ext_authz import providers
from xdsd.translate.policy_select import labels_match


def config_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    return (
        _custom_providers(snapshot)
        + http_only_on_tcp(snapshot)
        + _trust_domain(snapshot)
        + conflict_problems(snapshot)
    )


def _trust_domain(snapshot: MeshSnapshot) -> list[ConfigError]:
    """MeshConfig trustDomain names the identities proxies expect; xdsd's CA issues them
    in --trust-domain. Different: mTLS peers would reject each other's certificates."""
    td = mesh_config(snapshot).get("trustDomain")
    if not isinstance(td, str) or not td or td == snapshot.trust_domain:
        return []
    for cm in snapshot.configs_of("ConfigMap"):
        if cm.namespace == snapshot.root_namespace and cm.name == MESH_CONFIGMAP:
            return [
                ConfigError(
                    cm.ref.source,
                    f"ConfigMap {cm.namespace}/{cm.name}",
                    "data.mesh.trustDomain",
                    f"{td!r} differs from the trust domain xdsd's CA issues certificates in "
                    f"({snapshot.trust_domain!r}): start xdsd with --trust-domain {td}",
                    "warning",
                )
            ]
    return []


def _custom_providers(snapshot: MeshSnapshot) -> list[ConfigError]:
    out: list[ConfigError] = []
    found = providers(snapshot) if snapshot.configs_of("AuthorizationPolicy") else {}
    for obj in snapshot.configs_of("AuthorizationPolicy"):
        ap = obj.typed
        if not isinstance(ap, AuthorizationPolicy) or ap.action != "CUSTOM":
            continue
        p = found.get(ap.provider)
        if p is None:
            why = (
                f"no extension provider {ap.provider!r} in MeshConfig (ConfigMap "
                f"{snapshot.root_namespace}/{MESH_CONFIGMAP}, key mesh)"
            )
        elif p.error:
            why = p.error
        else:
            continue
        out.append(
            ConfigError(
                obj.ref.source,
                f"AuthorizationPolicy {obj.namespace}/{obj.name}",
                "spec.provider.name",
                f"{why}: the policy's rules deny the requests they match instead (fail closed)",
                "warning",
            )
        )
    return out


_HTTP_ONLY_OPERATION = ("hosts", "methods", "paths")
_HTTP_ONLY_WHEN = ("request.headers[", "request.auth.")


def _http_only_paths(ap: AuthorizationPolicy) -> list[tuple[int, str, frozenset[int] | None]]:
    """(rule index, field path, the rule's `to` ports (None: any)) of HTTP-only fields."""
    out: list[tuple[int, str, frozenset[int] | None]] = []
    for i, rule in enumerate(ap.rules):
        ports: set[int] = set()
        any_port = not rule.operations
        for op in rule.operations:
            m = op.get("ports")
            if m is None or not m.values:
                any_port = True
            else:
                ports.update(int(v) for v in m.values)
        scope = None if any_port else frozenset(ports)
        for j, src in enumerate(rule.sources):
            if "requestPrincipals" in src:
                out.append((i, f"spec.rules[{i}].from[{j}].source.requestPrincipals", scope))
        for j, op in enumerate(rule.operations):
            for name in _HTTP_ONLY_OPERATION:
                if name in op:
                    out.append((i, f"spec.rules[{i}].to[{j}].operation.{name}", scope))
        for j, cond in enumerate(rule.when):
            if cond.key.startswith(_HTTP_ONLY_WHEN):
                out.append((i, f"spec.rules[{i}].when[{j}].key", scope))
    return out


def _tcp_ports(
    snapshot: MeshSnapshot,
    obj: ConfigObject,
    selector: Mapping[str, str] | None,
    services_by_ns: Mapping[str, list[Service]],
) -> set[int]:
    """Target ports without HTTP (TCP, TLS, sniffed) of the workloads the policy selects."""
    root = snapshot.root_namespace
    ports: set[int] = set()
    for w in snapshot.workloads:
        if obj.namespace != root and w.namespace != obj.namespace:
            continue
        if not labels_match(selector, w.labels):
            continue
        for svc in services_by_ns.get(w.namespace, ()):
            if svc.selector and all(w.labels.get(k) == v for k, v in svc.selector.items()):
                for sp in svc.ports:
                    if not sp.protocol.is_http:
                        ports.add(sp.target_port if isinstance(sp.target_port, int) else sp.port)
    return ports


def http_only_on_tcp(snapshot: MeshSnapshot) -> list[ConfigError]:
    """istiod: HTTP-only fields cannot be checked on TCP traffic; an ALLOW rule with one
    matches nothing there, a DENY rule ignores the field. Said on the policy."""
    out: list[ConfigError] = []
    services_by_ns: dict[str, list[Service]] | None = None
    for obj in snapshot.configs_of("AuthorizationPolicy"):
        ap = obj.typed
        if not isinstance(ap, AuthorizationPolicy) or ap.action == "CUSTOM":
            continue
        found = _http_only_paths(ap)
        if not found:
            continue
        if services_by_ns is None:  # only when some policy has HTTP-only fields
            services_by_ns = {}
            for svc in snapshot.services:
                services_by_ns.setdefault(svc.namespace, []).append(svc)
        tcp = _tcp_ports(snapshot, obj, ap.selector, services_by_ns)
        for _i, path, scope in found:
            hit = sorted(tcp if scope is None else tcp & scope)
            if not hit:
                continue
            effect = (
                "the rule matches nothing there"
                if ap.action == "ALLOW"
                else "the rule is applied there without it"
            )
            out.append(
                ConfigError(
                    obj.ref.source,
                    f"AuthorizationPolicy {obj.namespace}/{obj.name}",
                    path,
                    f"is HTTP only, and the policy selects workloads with TCP port(s) "
                    f"{', '.join(map(str, hit))}: {effect}",
                    "warning",
                )
            )
    return out
