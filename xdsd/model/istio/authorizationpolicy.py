"""AuthorizationPolicy (security.istio.io v1, v1beta1): typed and validated.

Validation follows istiod's ValidateAuthorizationPolicy and security.ValidateAttribute:
actions ALLOW (default), DENY, AUDIT, CUSTOM (which needs `provider.name`; a
provider with any other action is an error); every `from` entry needs a non-empty
`source`, every `to` entry a non-empty `operation`, every `when` a known key
with values or notValues; IPs and CIDRs, ports and path templates are checked.
`rules` absent (None) and `rules: []` both mean "no rule": an ALLOW policy then
matches nothing (denies everything it selects), a DENY one never applies.
The translation to Envoy RBAC is in `xdsd.translate.rbac`.
"""

from __future__ import annotations

import re
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

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
DRY_RUN_ANNOTATION = "istio.io/dry-run"

# Source fields (and their not* forms), in the API's names.
SOURCE_FIELDS = (
    "principals",
    "requestPrincipals",
    "namespaces",
    "ipBlocks",
    "remoteIpBlocks",
    "serviceAccounts",
)
OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")
# `when` keys (security.ValidateAttribute); prefixes end in "[" or ".".
WHEN_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
WHEN_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})
_TEMPLATE = re.compile(r"\{\*\*?\}")


@dataclass(frozen=True)
class Match:
    """Values and notValues of one attribute (both may be set: AND NOT)."""

    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    key: str
    match: Match


@dataclass(frozen=True)
class AuthzRule:
    # One mapping per `from` entry (field name -> Match), per `to` entry likewise.
    sources: tuple[Mapping[str, Match], ...]
    operations: tuple[Mapping[str, Match], ...]
    when: tuple[Condition, ...]


@dataclass(frozen=True)
class AuthorizationPolicy:
    selector: Mapping[str, str] | None
    action: str
    provider: str  # CUSTOM only
    rules: tuple[AuthzRule, ...]
    target_refs: tuple[TargetRef, ...] = ()


def _values(iss: Issues, raw: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    return tuple(f.get_str_list(iss, raw, key, path))


def _check_wildcards(iss: Issues, values: tuple[str, ...], where: str) -> None:
    for i, v in enumerate(values):
        if v != "*" and "*" in v.strip("*"):
            iss.error(f"{where}[{i}]", f"{v!r}: a wildcard may only be a prefix or a suffix")


def _check_ip(iss: Issues, values: tuple[str, ...], where: str) -> None:
    for i, v in enumerate(values):
        if not f.is_ip_or_cidr(v):
            iss.error(f"{where}[{i}]", f"{v!r} is not an IP address or a CIDR range")


def _check_ports(iss: Issues, values: tuple[str, ...], where: str) -> None:
    for i, v in enumerate(values):
        if not v.isdigit() or not 0 <= int(v) <= 65535:
            iss.error(f"{where}[{i}]", f"{v!r} is not a port number (0..65535)")


def _check_paths(iss: Issues, values: tuple[str, ...], where: str) -> None:
    for i, v in enumerate(values):
        if not _TEMPLATE.search(v):
            continue
        at = f"{where}[{i}]"
        if not v.startswith("/"):
            iss.error(at, f"{v!r}: a path template must start with '/'")
        segments = v.split("/")
        for j, seg in enumerate(segments):
            if seg == "{**}" and j != len(segments) - 1:
                iss.error(at, f"{v!r}: {{**}} must be the last segment")
            elif ("{" in seg or "}" in seg) and seg not in ("{*}", "{**}"):
                iss.error(at, f"{v!r}: only {{*}} and {{**}} are supported as whole segments")


def _match_set(
    iss: Issues, raw: Mapping[str, Any], path: str, names: tuple[str, ...], kind: str
) -> dict[str, Match]:
    out: dict[str, Match] = {}
    for name in names:
        neg = "not" + name[0].upper() + name[1:]
        values = _values(iss, raw, name, path)
        not_values = _values(iss, raw, neg, path)
        for key, vals in ((name, values), (neg, not_values)):
            where = f.join(path, key)
            if name in ("ipBlocks", "remoteIpBlocks"):
                _check_ip(iss, vals, where)
            elif name == "ports":
                _check_ports(iss, vals, where)
            elif name == "paths":
                _check_paths(iss, vals, where)
            elif name in ("principals", "requestPrincipals", "namespaces", "hosts"):
                _check_wildcards(iss, vals, where)
        if values or not_values:
            out[name] = Match(values, not_values)
    known = frozenset(names) | {"not" + n[0].upper() + n[1:] for n in names}
    unknown_fields(iss, raw, path, known)
    if not out:
        iss.error(path, f"`{kind}` must not be empty")
    return out


def valid_when_key(key: str) -> bool:
    if key in WHEN_KEYS:
        return True
    for prefix in WHEN_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix.endswith(".") or key.endswith("]")
    return False


def _when(iss: Issues, raw: Mapping[str, Any], where: str) -> Condition | None:
    unknown_fields(iss, raw, where, frozenset({"key", "values", "notValues"}))
    key = f.get_str(iss, raw, "key", where, required=True)
    values = _values(iss, raw, "values", where)
    not_values = _values(iss, raw, "notValues", where)
    if key is None:
        return None
    if not valid_when_key(key):
        iss.error(f.join(where, "key"), f"unknown attribute {key!r}")
        return None
    if not values and not not_values:
        iss.error(where, "at least one of values or notValues must be set")
        return None
    for field, vals in (("values", values), ("notValues", not_values)):
        if key in _IP_KEYS:
            _check_ip(iss, vals, f.join(where, field))
        elif key == "destination.port":
            _check_ports(iss, vals, f.join(where, field))
    return Condition(key, Match(values, not_values))


def _rule(iss: Issues, raw: Mapping[str, Any], where: str, action: str) -> AuthzRule:
    unknown_fields(iss, raw, where, frozenset({"from", "to", "when"}))
    sources: list[Mapping[str, Match]] = []
    for fw, entry in f.items(iss, f.get_list(iss, raw, "from", where), f.join(where, "from")):
        unknown_fields(iss, entry, fw, frozenset({"source"}))
        src = f.get_map(iss, entry, "source", fw, required=True)
        if src is not None:
            fields = _match_set(iss, src, f.join(fw, "source"), SOURCE_FIELDS, "from.source")
            if action == "CUSTOM" and "requestPrincipals" in fields:
                iss.error(
                    f.join(f.join(fw, "source"), "requestPrincipals"),
                    "the CUSTOM action does not support request principals",
                )
            sources.append(MappingProxyType(fields))
    operations: list[Mapping[str, Match]] = []
    for tw, entry in f.items(iss, f.get_list(iss, raw, "to", where), f.join(where, "to")):
        unknown_fields(iss, entry, tw, frozenset({"operation"}))
        op = f.get_map(iss, entry, "operation", tw, required=True)
        if op is not None:
            fields = _match_set(iss, op, f.join(tw, "operation"), OPERATION_FIELDS, "to.operation")
            operations.append(MappingProxyType(fields))
    when: list[Condition] = []
    for ww, entry in f.items(iss, f.get_list(iss, raw, "when", where), f.join(where, "when")):
        cond = _when(iss, entry, ww)
        if cond is None:
            continue
        if action == "CUSTOM" and cond.key.startswith("request.auth."):
            iss.error(f.join(ww, "key"), "the CUSTOM action does not support request.auth.*")
        when.append(cond)
    return AuthzRule(tuple(sources), tuple(operations), tuple(when))


def is_dry_run(annotations: Mapping[str, str]) -> bool | None:
    """The `istio.io/dry-run` annotation: True/False, None when it is not a boolean
    (istiod logs it and enforces the policy)."""
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is None:
        return False
    if value.lower() in ("true", "1", "t"):
        return True
    if value.lower() in ("false", "0", "f"):
        return False
    return None


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> AuthorizationPolicy:
    unknown_fields(
        iss,
        spec,
        path,
        frozenset({"selector", "targetRef", "targetRefs", "rules", "action", "provider"}),
    )
    selector = parse_selector(iss, spec, path)
    targets = parse_target_refs(iss, spec, path)
    action = f.get_str(iss, spec, "action", path) or "ALLOW"
    if action not in ACTIONS:
        iss.error(f.join(path, "action"), f"{action!r} must be one of {', '.join(ACTIONS)}")
        action = "ALLOW"
    provider = ""
    raw_provider = f.get_map(iss, spec, "provider", path)
    if raw_provider is not None:
        pp = f.join(path, "provider")
        unknown_fields(iss, raw_provider, pp, frozenset({"name"}))
        provider = f.get_str(iss, raw_provider, "name", pp, required=True) or ""
        if action != "CUSTOM":
            iss.error(pp, "provider is only allowed with action CUSTOM")
    elif action == "CUSTOM":
        iss.error(f.join(path, "provider"), "is required with action CUSTOM")
    rules = tuple(
        _rule(iss, raw, where, action)
        for where, raw in f.items(iss, f.get_list(iss, spec, "rules", path), f.join(path, "rules"))
    )
    if action in ("DENY", "AUDIT", "CUSTOM") and not rules and "rules" not in spec:
        iss.warn(f.join(path, "rules"), f"a {action} policy without rules never applies")
    return AuthorizationPolicy(selector, action, provider, rules, targets)
