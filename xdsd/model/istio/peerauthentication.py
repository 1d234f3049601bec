"""PeerAuthentication (security.istio.io v1, v1beta1): typed and validated.

As istiod's ValidatePeerAuthentication: `portLevelMtls` needs a selector with
labels, its keys are port numbers 1..65535; modes UNSET (inherit), DISABLE,
PERMISSIVE, STRICT. The effective mode of a workload and port is composed in
`xdsd.translate.peer_authn`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.istio.workload_selector import (
    TargetRef,
    parse_selector,
    parse_target_refs,
    unknown_fields,
)
from xdsd.model.types import ObjectRef

MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True)
class PeerAuthentication:
    selector: Mapping[str, str] | None
    mode: str  # one of MODES; UNSET when `mtls` (or its mode) is absent
    port_level: Mapping[int, str]  # workload (target) port -> mode
    target_refs: tuple[TargetRef, ...] = ()


def _mode(iss: Issues, raw: Mapping[str, Any] | None, mp: str) -> str:
    """The `mode` of an mTLS settings mapping at path `mp` (UNSET when absent)."""
    if raw is None:
        return "UNSET"
    unknown_fields(iss, raw, mp, frozenset({"mode"}))
    mode = f.get_str(iss, raw, "mode", mp) or "UNSET"
    if mode not in MODES:
        iss.error(f.join(mp, "mode"), f"{mode!r} must be one of {', '.join(MODES)}")
        return "UNSET"
    return mode


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> PeerAuthentication:
    unknown_fields(
        iss, spec, path, frozenset({"selector", "mtls", "portLevelMtls", "targetRef", "targetRefs"})
    )
    selector = parse_selector(iss, spec, path)
    targets = parse_target_refs(iss, spec, path)
    ports: dict[int, str] = {}
    raw_ports = f.get_map(iss, spec, "portLevelMtls", path)
    if raw_ports is not None:
        pp = f.join(path, "portLevelMtls")
        if selector is None:
            iss.error(pp, "portLevelMtls requires a workload selector with labels")
        for key, value in raw_ports.items():
            where = f.join(pp, str(key))
            try:
                port = int(key)
            except (TypeError, ValueError):
                port = 0
            if isinstance(key, bool) or not 1 <= port <= 65535:
                iss.error(where, f"{key!r} must be a port number in 1..65535")
                continue
            if not isinstance(value, Mapping):
                iss.error(where, f"must be a mapping, not a {f.type_name(value)}")
                continue
            ports[port] = _mode(iss, value, where)
    mode = _mode(iss, f.get_map(iss, spec, "mtls", path), f.join(path, "mtls"))
    return PeerAuthentication(
        selector, mode, MappingProxyType(dict(sorted(ports.items()))), targets
    )
