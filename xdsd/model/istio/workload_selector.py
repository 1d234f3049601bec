"""What the security kinds share: `selector.matchLabels` and `targetRef(s)`.

PeerAuthentication, AuthorizationPolicy and RequestAuthentication select
workloads the same way (istio.type.v1beta1.WorkloadSelector): no selector, or
one with no labels, means every workload of the policy's namespace (of the
mesh, in the root namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.types import frozen_map


@dataclass(frozen=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str = ""


def unknown_fields(iss: Issues, spec: Mapping[str, Any], path: str, known: frozenset[str]) -> None:
    """Unknown fields are warnings: never silently dropped, never blocking."""
    for key in spec:
        if key not in known:
            iss.warn(f.join(path, str(key)), "unknown field (ignored)")


def parse_selector(iss: Issues, spec: Mapping[str, Any], path: str) -> Mapping[str, str] | None:
    """`selector.matchLabels`; None when the policy selects every workload in scope."""
    raw = f.get_map(iss, spec, "selector", path)
    if raw is None:
        return None
    sp = f.join(path, "selector")
    unknown_fields(iss, raw, sp, frozenset({"matchLabels"}))
    labels = f.get_str_map(iss, raw, "matchLabels", sp)
    for k, v in labels.items():
        if not k or "*" in k or "*" in v:
            iss.error(f.join(f.join(sp, "matchLabels"), k), "wildcards are not allowed in labels")
    return frozen_map(labels) if labels else None


def parse_target_refs(iss: Issues, spec: Mapping[str, Any], path: str) -> tuple[TargetRef, ...]:
    """`targetRef` (deprecated) and `targetRefs`; either excludes `selector` (istiod).

    They name Gateway API gateways and waypoints, which xdsd does not serve: a policy
    with them applies to none of its proxies, and says so (a warning).
    """
    out: list[TargetRef] = []
    entries: list[tuple[str, Mapping[Any, Any]]] = []
    single = f.get_map(iss, spec, "targetRef", path)
    if single is not None:
        entries.append((f.join(path, "targetRef"), single))
    entries.extend(
        f.items(iss, f.get_list(iss, spec, "targetRefs", path), f.join(path, "targetRefs"))
    )
    for where, raw in entries:
        unknown_fields(iss, raw, where, frozenset({"group", "kind", "name", "namespace"}))
        kind = f.get_str(iss, raw, "kind", where, required=True)
        name = f.get_str(iss, raw, "name", where, required=True)
        if kind is None or name is None:
            continue
        out.append(
            TargetRef(
                f.get_str(iss, raw, "group", where) or "",
                kind,
                name,
                f.get_str(iss, raw, "namespace", where) or "",
            )
        )
    if out and spec.get("selector") is not None:
        iss.error(path, "only one of selector or targetRef(s) can be set")
    if out:
        iss.warn(
            f.join(path, "targetRefs" if "targetRefs" in spec else "targetRef"),
            "targets Gateway API gateways and waypoints, which xdsd does not serve: "
            "the policy applies to no sidecar or gateway here",
        )
    return tuple(out)
