"""AuthorizationPolicy -> Envoy RBAC (envoy.filters.http.rbac, envoy.filters.network.rbac).

As istiod (pilot/pkg/security/authz/builder and model):

- The policies applying to a workload (`policy_select.applicable`) split by
  action; filters go in Istio's evaluation order: CUSTOM (ext_authz, see
  `xdsd.translate.ext_authz`), AUDIT (action LOG), DENY, then ALLOW.
- One Envoy policy per rule, named `ns[NS]-policy[NAME]-rule[N]`. A policy
  without rules gets one that never matches (an ALLOW policy selecting a
  workload with nothing to allow denies everything: "allow-nothing").
- A rule's `from` entries are OR'ed principals, its `to` entries OR'ed
  permissions; within an entry every field is AND'ed, values of a field
  OR'ed, notValues AND NOT'ed; `when` conditions are AND'ed into each.
- On a TCP filter chain, HTTP-only attributes (hosts, methods, paths,
  request principals, request headers, request.auth.*) cannot be checked: an
  ALLOW rule using one is left out (it matches nothing), a DENY or AUDIT rule
  drops that attribute (it matches more: fail closed).
- `istio.io/dry-run: "true"` puts the policy into the shadow rules, whose
  results are only counted (stats prefixes `istio_dry_run_allow_`/`_deny_`).
- Peer identities are the mTLS client certificate's URI SAN
  (`authenticated.principal_name`); request principals and claims are the
  verified JWT payload that jwt_authn wrote (`xdsd.translate.jwt_authn`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from xdsd.model.istio.authorizationpolicy import (
    AuthorizationPolicy,
    AuthzRule,
    Condition,
    Match,
    is_dry_run,
)
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate import _common as c
from xdsd.translate.jwt_authn import JWT_FILTER, JWT_PAYLOAD_KEY
from xdsd.translate.policy_select import applicable
from xdsd.translate.trust_domain import LOCAL as LOCAL_TRUST_DOMAIN
from xdsd.translate.trust_domain import principal_variants, trust_domains

HTTP_RBAC_FILTER = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."
DRY_RUN_ALLOW_PREFIX = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX = "istio_dry_run_deny_"
KIND = "AuthorizationPolicy"
SPIFFE = "spiffe://"

Principal = rbac_pb2.Principal
Permission = rbac_pb2.Permission
StringMatcher = string_pb2.StringMatcher


class HttpOnly(Exception):
    """An attribute a TCP filter chain cannot see."""


@dataclass(frozen=True)
class WorkloadPolicies:
    """The AuthorizationPolicies that apply to one workload, by action, oldest first."""

    custom: tuple[ConfigObject, ...] = ()
    audit: tuple[ConfigObject, ...] = ()
    deny: tuple[ConfigObject, ...] = ()
    allow: tuple[ConfigObject, ...] = ()
    # The trust domain and its aliases (principals are matched in each).
    bundle: tuple[str, ...] = (LOCAL_TRUST_DOMAIN,)

    @property
    def refs(self) -> tuple[tuple[str, str], ...]:
        """What the generated filters depend on (part of a proxy group's key)."""
        objs = (*self.custom, *self.audit, *self.deny, *self.allow)
        return tuple((o.namespace, o.name) for o in objs)


def policies_for(
    snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str]
) -> WorkloadPolicies:
    """Memoized per snapshot by (namespace, labels): every proxy of an app asks."""
    memo: dict[tuple[str, tuple[tuple[str, str], ...]], WorkloadPolicies] = snapshot.derived(
        f"{__name__}:policies", lambda _s: {}
    )
    key = (namespace, tuple(sorted(labels.items())))
    hit = memo.get(key)
    if hit is None:
        by: dict[str, list[ConfigObject]] = {"CUSTOM": [], "AUDIT": [], "DENY": [], "ALLOW": []}
        for obj in applicable(snapshot, KIND, namespace, labels):
            ap = obj.typed
            if isinstance(ap, AuthorizationPolicy):
                by[ap.action].append(obj)
        hit = memo[key] = WorkloadPolicies(
            tuple(by["CUSTOM"]),
            tuple(by["AUDIT"]),
            tuple(by["DENY"]),
            tuple(by["ALLOW"]),
            trust_domains(snapshot),
        )
    return hit


# ------------------------------------------------------------------ matchers


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def string_matcher(value: str, prefix: str = "") -> string_pb2.StringMatcher:
    """Istio's wildcard rules: `*` any non-empty, `*x` suffix, `x*` prefix, else exact."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if not prefix:
            return StringMatcher(suffix=value[1:])
        return _regex(prefix + ".*" + re.escape(value[1:]))
    if value.endswith("*"):
        return StringMatcher(prefix=prefix + value[:-1])
    return StringMatcher(exact=prefix + value)


def _header(
    name: str, value: str, *, ignore_case: bool = False
) -> route_components_pb2.HeaderMatcher:
    hm = route_components_pb2.HeaderMatcher(name=name)
    if value == "*":
        hm.present_match = True
    elif value.startswith("*"):
        hm.string_match.CopyFrom(StringMatcher(suffix=value[1:], ignore_case=ignore_case))
    elif value.endswith("*"):
        hm.string_match.CopyFrom(StringMatcher(prefix=value[:-1], ignore_case=ignore_case))
    else:
        hm.string_match.CopyFrom(StringMatcher(exact=value, ignore_case=ignore_case))
    return hm


def _cidr(value: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(net.network_address), prefix_len=c.uint32(net.prefixlen)
    )


def _authenticated(m: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=m))


def _metadata(
    filter_name: str, keys: Sequence[str], value: value_pb2.ValueMatcher
) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(
        filter=filter_name,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in keys],
        value=value,
    )


def _or_values(matchers: list[value_pb2.ValueMatcher]) -> value_pb2.ValueMatcher:
    if len(matchers) == 1:
        return matchers[0]
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))


def _claim(claims: Sequence[str], values: Sequence[str]) -> rbac_pb2.Principal:
    """A JWT claim (list or string) equal to one of the values (istiod's extended JWT matcher)."""
    value = _or_values([value_pb2.ValueMatcher(string_match=string_matcher(v)) for v in values])
    either = value_pb2.ValueMatcher(
        or_match=value_pb2.OrMatcher(
            value_matchers=[
                value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=value)),
                value,
            ]
        )
    )
    return Principal(metadata=_metadata(JWT_FILTER, (JWT_PAYLOAD_KEY, *claims), either))


def _claim_string(claim: str, m: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return Principal(
        metadata=_metadata(
            JWT_FILTER, (JWT_PAYLOAD_KEY, claim), value_pb2.ValueMatcher(string_match=m)
        )
    )


def _request_principals(values: Sequence[str]) -> rbac_pb2.Principal:
    """`ISS/SUB` (wildcards at either end) against the JWT payload's iss and sub."""
    out: list[rbac_pb2.Principal] = []
    for value in values:
        idx = value.rfind("/")
        found = idx >= 0
        iss, sub = (value[:idx], value[idx + 1 :]) if found else (value, "")
        if value == "*":
            m_iss, m_sub = _regex(".+"), _regex(".+")
        elif value.startswith("*"):
            if found:
                m_iss = _regex(".+") if iss == "*" else StringMatcher(suffix=iss[1:])
                m_sub = StringMatcher(exact=sub)
            else:
                m_iss, m_sub = _regex(".+"), StringMatcher(suffix=value[1:])
        elif value.endswith("*"):
            if found:
                m_iss = StringMatcher(exact=iss)
                m_sub = _regex(".+") if sub == "*" else StringMatcher(prefix=sub[:-1])
            else:
                m_iss, m_sub = StringMatcher(prefix=value[:-1]), _regex(".+")
        else:
            m_iss, m_sub = StringMatcher(exact=iss), StringMatcher(exact=sub)
        out.append(_and_ids([_claim_string("iss", m_iss), _claim_string("sub", m_sub)]))
    return out[0] if len(out) == 1 else Principal(or_ids=Principal.Set(ids=out))


def _namespace_principal(value: str) -> rbac_pb2.Principal:
    pattern = ".*".join(re.escape(part) for part in value.split("*"))
    return _authenticated(_regex(f".*/ns/{pattern}/.*"))


def _service_account_principal(default_ns: str, value: str) -> rbac_pb2.Principal:
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = default_ns, value
    return _authenticated(_regex(f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?"))


def _names_in_brackets(text: str) -> list[str]:
    """`[a][b]` -> [a, b]; `[a.b]` -> [a.b]."""
    names = re.findall(r"\[([^\[\]]*)\]", text)
    if not names or "".join(f"[{n}]" for n in names) != text:
        raise ValueError(f"expecting [NAME] but found {text!r}")
    return names


# One value -> principal/permission ("simple"), or all values -> one ("extended").
PrincipalOf = Callable[[str], rbac_pb2.Principal]
PermissionOf = Callable[[str], rbac_pb2.Permission]


def _and_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    return Principal(and_ids=Principal.Set(ids=ids))


def _and_rules(rules: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    return Permission(and_rules=Permission.Set(rules=rules))


@dataclass(frozen=True)
class _Attr:
    """One attribute of a rule: how to match it, and whether TCP can see it."""

    key: str
    match: Match
    principal: PrincipalOf | None = None
    permission: PermissionOf | None = None
    extended_principal: Callable[[Sequence[str]], rbac_pb2.Principal] | None = None
    extended_permission: Callable[[Sequence[str]], rbac_pb2.Permission] | None = None
    http_only: bool = False


def _principals_of(attr: _Attr) -> list[rbac_pb2.Principal]:
    out: list[rbac_pb2.Principal] = []
    if attr.extended_principal is not None:
        if attr.match.values:
            out.append(attr.extended_principal(attr.match.values))
        if attr.match.not_values:
            out.append(Principal(not_id=attr.extended_principal(attr.match.not_values)))
        return out
    assert attr.principal is not None
    if attr.match.values:
        out.append(
            Principal(or_ids=Principal.Set(ids=[attr.principal(v) for v in attr.match.values]))
        )
    if attr.match.not_values:
        ors = Principal(
            or_ids=Principal.Set(ids=[attr.principal(v) for v in attr.match.not_values])
        )
        out.append(Principal(not_id=ors))
    return out


def _permissions_of(attr: _Attr) -> list[rbac_pb2.Permission]:
    out: list[rbac_pb2.Permission] = []
    if attr.extended_permission is not None:
        if attr.match.values:
            out.append(attr.extended_permission(attr.match.values))
        if attr.match.not_values:
            out.append(Permission(not_rule=attr.extended_permission(attr.match.not_values)))
        return out
    assert attr.permission is not None
    if attr.match.values:
        out.append(
            Permission(
                or_rules=Permission.Set(rules=[attr.permission(v) for v in attr.match.values])
            )
        )
    if attr.match.not_values:
        ors = Permission(
            or_rules=Permission.Set(rules=[attr.permission(v) for v in attr.match.not_values])
        )
        out.append(Permission(not_rule=ors))
    return out


def _path(value: str) -> rbac_pb2.Permission:
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        cfg = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        return Permission(
            uri_template=extension_pb2.TypedExtensionConfig(
                name="uri-template", typed_config=c.pack(cfg)
            )
        )
    return Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


def _envoy_filter_permission(key: str, values: Sequence[str]) -> rbac_pb2.Permission:
    name, _, rest = key.removeprefix("experimental.").removesuffix("]").partition("[")
    matchers: list[value_pb2.ValueMatcher] = []
    for v in values:
        if v.startswith("[") and v.endswith("]"):
            one = value_pb2.ValueMatcher(string_match=string_matcher(v.strip("[]")))
            matchers.append(value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=one)))
        else:
            matchers.append(value_pb2.ValueMatcher(string_match=string_matcher(v)))
    return Permission(metadata=_metadata(name, (rest,), _or_values(matchers)))


def _source_attrs(policy_ns: str, source: Mapping[str, Match]) -> list[_Attr]:
    get = source.get
    out: list[_Attr] = []
    table: list[tuple[str, str, dict[str, object]]] = [
        (
            "principals",
            "source.principal",
            {"principal": lambda v: _authenticated(string_matcher(v, SPIFFE))},
        ),
        (
            "requestPrincipals",
            "request.auth.principal",
            {"extended_principal": _request_principals, "http_only": True},
        ),
        (
            "serviceAccounts",
            "source.serviceAccount",
            {"principal": lambda v: _service_account_principal(policy_ns, v)},
        ),
        ("namespaces", "source.namespace", {"principal": _namespace_principal}),
        ("remoteIpBlocks", "remote.ip", {"principal": lambda v: Principal(remote_ip=_cidr(v))}),
        ("ipBlocks", "source.ip", {"principal": lambda v: Principal(direct_remote_ip=_cidr(v))}),
    ]
    for field, key, how in table:
        m = get(field)
        if m is not None:
            out.append(_Attr(key, m, **how))  # type: ignore[arg-type]
    return out


def _operation_attrs(operation: Mapping[str, Match]) -> list[_Attr]:
    get = operation.get
    out: list[_Attr] = []
    table: list[tuple[str, dict[str, object]]] = [
        (
            "hosts",
            {
                "permission": lambda v: Permission(
                    header=_header(":authority", v, ignore_case=True)
                ),
                "http_only": True,
            },
        ),
        (
            "methods",
            {"permission": lambda v: Permission(header=_header(":method", v)), "http_only": True},
        ),
        ("paths", {"permission": _path, "http_only": True}),
        ("ports", {"permission": lambda v: Permission(destination_port=int(v))}),
    ]
    for field, how in table:
        m = get(field)
        if m is not None:
            out.append(_Attr(field, m, **how))  # type: ignore[arg-type]
    return out


def _when_attr(policy_ns: str, key: str, m: Match) -> tuple[str, _Attr]:
    """('principal' | 'permission', attribute) for a `when` condition."""
    if key == "destination.ip":
        return "permission", _Attr(key, m, permission=lambda v: Permission(destination_ip=_cidr(v)))
    if key == "destination.port":
        return "permission", _Attr(key, m, permission=lambda v: Permission(destination_port=int(v)))
    if key == "connection.sni":
        return "permission", _Attr(
            key, m, permission=lambda v: Permission(requested_server_name=string_matcher(v))
        )
    if key.startswith("experimental.envoy.filters."):
        return "permission", _Attr(
            key, m, extended_permission=lambda vs: _envoy_filter_permission(key, vs)
        )
    if key == "source.ip":
        return "principal", _Attr(key, m, principal=lambda v: Principal(direct_remote_ip=_cidr(v)))
    if key == "remote.ip":
        return "principal", _Attr(key, m, principal=lambda v: Principal(remote_ip=_cidr(v)))
    if key == "source.namespace":
        return "principal", _Attr(key, m, principal=_namespace_principal)
    if key == "source.serviceAccount":
        return "principal", _Attr(
            key, m, principal=lambda v: _service_account_principal(policy_ns, v)
        )
    if key == "source.principal":
        return "principal", _Attr(
            key, m, principal=lambda v: _authenticated(string_matcher(v, SPIFFE))
        )
    if key == "request.auth.principal":
        return "principal", _Attr(key, m, extended_principal=_request_principals, http_only=True)
    if key == "request.auth.audiences":
        return "principal", _Attr(
            key, m, extended_principal=lambda vs: _claim(("aud",), vs), http_only=True
        )
    if key == "request.auth.presenter":
        return "principal", _Attr(
            key, m, extended_principal=lambda vs: _claim(("azp",), vs), http_only=True
        )
    if key.startswith("request.auth.claims"):
        claims = _names_in_brackets(key.removeprefix("request.auth.claims"))
        return "principal", _Attr(
            key, m, extended_principal=lambda vs: _claim(claims, vs), http_only=True
        )
    if key.startswith("request.headers"):
        (name,) = _names_in_brackets(key.removeprefix("request.headers"))[:1]
        return "principal", _Attr(
            key, m, principal=lambda v: Principal(header=_header(name, v)), http_only=True
        )
    raise ValueError(f"unknown attribute {key}")


def _expand(m: Match, bundle: tuple[str, ...]) -> Match:
    def each(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x for v in values for x in principal_variants(v, bundle)))

    return Match(each(m.values), each(m.not_values))


def with_trust_domains(rule: AuthzRule, bundle: tuple[str, ...]) -> AuthzRule:
    """Principals (from.source, `when source.principal`) in every domain of the trust
    domain bundle, as istiod generates them."""
    if bundle == (LOCAL_TRUST_DOMAIN,):
        return rule
    sources = tuple(
        {k: _expand(m, bundle) if k == "principals" else m for k, m in src.items()}
        for src in rule.sources
    )
    when = tuple(
        Condition(w.key, _expand(w.match, bundle)) if w.key == "source.principal" else w
        for w in rule.when
    )
    return AuthzRule(sources, rule.operations, when)


def rule_policy(
    policy_ns: str,
    rule: AuthzRule,
    *,
    for_tcp: bool,
    action: str,
    bundle: tuple[str, ...] = (LOCAL_TRUST_DOMAIN,),
) -> rbac_pb2.Policy | None:
    """One rule as an Envoy policy; None when an ALLOW rule needs HTTP on a TCP chain."""
    rule = with_trust_domains(rule, bundle)
    when_principals: list[_Attr] = []
    when_permissions: list[_Attr] = []
    for cond in rule.when:
        side, attr = _when_attr(policy_ns, cond.key, cond.match)
        (when_principals if side == "principal" else when_permissions).append(attr)

    def usable(attrs: list[_Attr]) -> list[_Attr]:
        if not for_tcp:
            return attrs
        if any(a.http_only for a in attrs):
            if action == "ALLOW":
                raise HttpOnly
            return [a for a in attrs if not a.http_only]
        return attrs

    try:
        principals: list[rbac_pb2.Principal] = []
        no_fields: tuple[Mapping[str, Match], ...] = ({},)
        for source in rule.sources or no_fields:
            attrs = usable(_source_attrs(policy_ns, source) + when_principals)
            ids = [p for a in attrs for p in _principals_of(a)]
            principals.append(_and_ids(ids or [Principal(any=True)]))
        permissions: list[rbac_pb2.Permission] = []
        for operation in rule.operations or no_fields:
            attrs = usable(_operation_attrs(operation) + when_permissions)
            rules = [p for a in attrs for p in _permissions_of(a)]
            permissions.append(_and_rules(rules or [Permission(any=True)]))
    except HttpOnly:
        return None
    return rbac_pb2.Policy(permissions=permissions, principals=principals)


def match_never() -> rbac_pb2.Policy:
    """istiod's rbacPolicyMatchNever: the policy of a policy without rules."""
    return rbac_pb2.Policy(
        permissions=[Permission(not_rule=Permission(any=True))],
        principals=[Principal(not_id=Principal(any=True))],
    )


def policy_name(namespace: str, name: str, index: int, prefix: str = "") -> str:
    return f"{prefix}ns[{namespace}]-policy[{name}]-rule[{index}]"


@dataclass(frozen=True)
class BuiltRules:
    rules: rbac_pb2.RBAC | None
    shadow: rbac_pb2.RBAC | None


_ACTIONS = {
    "ALLOW": rbac_pb2.RBAC.ALLOW,
    "DENY": rbac_pb2.RBAC.DENY,
    "AUDIT": rbac_pb2.RBAC.LOG,
    "CUSTOM": rbac_pb2.RBAC.DENY,
}


def build_rules(
    policies: Sequence[ConfigObject],
    *,
    for_tcp: bool,
    action: str,
    name_prefix: str = "",
    bundle: tuple[str, ...] = (LOCAL_TRUST_DOMAIN,),
) -> BuiltRules:
    enforce = rbac_pb2.RBAC(action=_ACTIONS[action])
    shadow = rbac_pb2.RBAC(action=_ACTIONS[action])
    has_enforce = has_shadow = False
    for obj in policies:
        ap = obj.typed
        assert isinstance(ap, AuthorizationPolicy)
        dry = is_dry_run(obj.annotations) is True
        target = shadow if dry else enforce
        if dry:
            has_shadow = True
        else:
            has_enforce = True
        for i, rule in enumerate(ap.rules):
            generated = rule_policy(
                obj.namespace, rule, for_tcp=for_tcp, action=action, bundle=bundle
            )
            if generated is not None:
                target.policies[policy_name(obj.namespace, obj.name, i, name_prefix)].CopyFrom(
                    generated
                )
        if not ap.rules:
            target.policies[policy_name(obj.namespace, obj.name, 0, name_prefix)].CopyFrom(
                match_never()
            )
    return BuiltRules(enforce if has_enforce else None, shadow if has_shadow else None)


def _shadow_prefix(rules: rbac_pb2.RBAC | None) -> str:
    if rules is None:
        return ""
    if rules.action == rbac_pb2.RBAC.ALLOW:
        return DRY_RUN_ALLOW_PREFIX
    if rules.action == rbac_pb2.RBAC.DENY:
        return DRY_RUN_DENY_PREFIX
    return ""


def _groups(wp: WorkloadPolicies) -> list[tuple[str, tuple[ConfigObject, ...]]]:
    return [
        (a, ps) for a, ps in (("AUDIT", wp.audit), ("DENY", wp.deny), ("ALLOW", wp.allow)) if ps
    ]


def http_filters(wp: WorkloadPolicies) -> list[hcm_pb2.HttpFilter]:
    """AUDIT, DENY and ALLOW RBAC filters of an HTTP filter chain (CUSTOM comes before)."""
    out: list[hcm_pb2.HttpFilter] = []
    for action, policies in _groups(wp):
        built = build_rules(policies, for_tcp=False, action=action, bundle=wp.bundle)
        cfg = http_rbac_pb2.RBAC(shadow_rules_stat_prefix=_shadow_prefix(built.shadow))
        if built.rules is not None:
            cfg.rules.CopyFrom(built.rules)
        if built.shadow is not None:
            cfg.shadow_rules.CopyFrom(built.shadow)
        out.append(hcm_pb2.HttpFilter(name=HTTP_RBAC_FILTER, typed_config=c.pack(cfg)))
    return out


def network_filters(wp: WorkloadPolicies) -> list[listener_components_pb2.Filter]:
    """AUDIT, DENY and ALLOW RBAC network filters of a TCP filter chain."""
    out: list[listener_components_pb2.Filter] = []
    for action, policies in _groups(wp):
        built = build_rules(policies, for_tcp=True, action=action, bundle=wp.bundle)
        cfg = net_rbac_pb2.RBAC(
            stat_prefix=TCP_STAT_PREFIX, shadow_rules_stat_prefix=_shadow_prefix(built.shadow)
        )
        if built.rules is not None:
            cfg.rules.CopyFrom(built.rules)
        if built.shadow is not None:
            cfg.shadow_rules.CopyFrom(built.shadow)
        out.append(
            listener_components_pb2.Filter(name=NETWORK_RBAC_FILTER, typed_config=c.pack(cfg))
        )
    return out
