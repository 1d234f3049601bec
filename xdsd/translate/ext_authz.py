"""CUSTOM AuthorizationPolicies -> an RBAC filter in shadow mode + ext_authz (istiod's pair).

The providers come from MeshConfig `extensionProviders` (the `mesh` key of the
ConfigMap `istio` in the root namespace, as istiod reads it): `envoyExtAuthzHttp`
and `envoyExtAuthzGrpc`, whose `service` (`HOST` or `NAMESPACE/HOST`) and `port`
name a mesh service and so the outbound cluster the check goes to.

As istiod (authz/builder extauthz.go): the CUSTOM rules are shadow rules of an
RBAC filter (named `istio-ext-authz-PROVIDER-ns[NS]-policy[NAME]-rule[N]`, stat
prefix `istio_ext_authz_`), which records the matching policy in dynamic
metadata; the ext_authz filter after it runs only when that metadata names one
of its provider's policies. So only requests the CUSTOM rules select are sent
to the authorizer. A provider that is missing or broken turns its rules into
DENY rules (`...-deny-due-to-bad-CUSTOM-action`): fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2

from xdsd.model.istio.authorizationpolicy import AuthorizationPolicy
from xdsd.model.meshconfig import mesh_config
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate import _common as c
from xdsd.translate import rbac
from xdsd.translate.trust_domain import trust_domains

EXT_AUTHZ_HTTP_FILTER = "envoy.filters.http.ext_authz"
EXT_AUTHZ_NETWORK_FILTER = "envoy.filters.network.ext_authz"
MATCH_PREFIX = "istio-ext-authz"
SHADOW_PREFIX = "istio_ext_authz_"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Provider:
    name: str
    http: Any = None  # ext_authz_pb2.ExtAuthz for HTTP chains
    tcp: Any = None  # net_ext_authz_pb2.ExtAuthz (gRPC providers only)
    error: str = ""


def _lookup(snapshot: MeshSnapshot, service: str, port: int) -> tuple[str, str]:
    """(hostname, outbound cluster) of `HOST` or `NAMESPACE/HOST`, as istiod LookupCluster."""
    ns, sep, host = service.partition("/")
    if not sep:
        ns, host = "", service
    found = [s for s in snapshot.services if s.hostname == host and (not ns or s.namespace == ns)]
    if len({s.namespace for s in found}) > 1:
        raise ValueError(f"found {service} in several namespaces; name it as NAMESPACE/HOST")
    if not found:
        raise ValueError(f"could not find service {service} in the mesh")
    return host, c.outbound_cluster_name(port, host)


def _timeout(raw: object) -> Any:
    if isinstance(raw, str) and raw.endswith("s"):
        try:
            return c.seconds(float(raw[:-1]))
        except ValueError:
            pass
    return c.seconds(DEFAULT_TIMEOUT_S)


def _headers(values: object) -> Any:
    from envoy.type.matcher.v3 import string_pb2 as s

    if not isinstance(values, list) or not values:
        return None
    out = s.ListStringMatcher()
    for h in values:
        h = str(h)
        if h.startswith("*"):
            out.patterns.add(suffix=h[1:], ignore_case=True)
        elif h.endswith("*"):
            out.patterns.add(prefix=h[:-1], ignore_case=True)
        else:
            out.patterns.add(exact=h, ignore_case=True)
    return out


def _enabled_metadata(filter_name: str, provider: str) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(
        filter=filter_name,
        path=[
            metadata_pb2.MetadataMatcher.PathSegment(
                key=SHADOW_PREFIX + "shadow_effective_policy_id"
            )
        ],
        value=value_pb2.ValueMatcher(
            string_match=string_pb2.StringMatcher(prefix=f"{MATCH_PREFIX}-{provider}")
        ),
    )


def _status(raw: object) -> Any:
    if raw in (None, ""):
        return None
    try:
        return http_status_pb2.HttpStatus(code=int(str(raw)))
    except ValueError as e:
        raise ValueError(f"invalid statusOnError {raw!r}") from e


def _provider(snapshot: MeshSnapshot, raw: Mapping[str, Any]) -> Provider:
    name = str(raw.get("name", ""))
    try:
        if "envoyExtAuthzHttp" in raw:
            cfg = raw["envoyExtAuthzHttp"] or {}
            port = int(cfg.get("port", 0))
            if not 1 <= port <= 65535:
                raise ValueError(f"port {cfg.get('port')!r} must be in 1..65535")
            host, cluster = _lookup(snapshot, str(cfg.get("service", "")), port)
            service = ext_authz_pb2.HttpService(
                path_prefix=str(cfg.get("pathPrefix", "")),
                server_uri=http_uri_pb2.HttpUri(
                    uri=f"http://{host}", cluster=cluster, timeout=_timeout(cfg.get("timeout"))
                ),
            )
            for key in sorted(cfg.get("includeAdditionalHeadersInCheck") or {}):
                value = str(cfg["includeAdditionalHeadersInCheck"][key])
                service.authorization_request.headers_to_add.add(key=key, value=value)
            up = _headers(cfg.get("headersToUpstreamOnAllow"))
            deny = _headers(cfg.get("headersToDownstreamOnDeny"))
            allow = _headers(cfg.get("headersToDownstreamOnAllow"))
            if up or deny or allow:
                resp = service.authorization_response
                if up:
                    resp.allowed_upstream_headers.CopyFrom(up)
                if deny:
                    resp.allowed_client_headers.CopyFrom(deny)
                if allow:
                    resp.allowed_client_headers_on_success.CopyFrom(allow)
            http = ext_authz_pb2.ExtAuthz(
                failure_mode_allow=bool(cfg.get("failOpen", False)),
                transport_api_version=config_source_pb2.V3,
                http_service=service,
                filter_enabled_metadata=_enabled_metadata(rbac.HTTP_RBAC_FILTER, name),
            )
            status = _status(cfg.get("statusOnError"))
            if status is not None:
                http.status_on_error.CopyFrom(status)
            allowed = _headers(
                cfg.get("includeRequestHeadersInCheck") or cfg.get("includeHeadersInCheck")
            )
            if allowed is not None:
                http.allowed_headers.CopyFrom(allowed)
            return Provider(name, http=http)
        if "envoyExtAuthzGrpc" in raw:
            cfg = raw["envoyExtAuthzGrpc"] or {}
            port = int(cfg.get("port", 0))
            if not 1 <= port <= 65535:
                raise ValueError(f"port {cfg.get('port')!r} must be in 1..65535")
            host, cluster = _lookup(snapshot, str(cfg.get("service", "")), port)
            grpc = grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=cluster, authority=host
                ),
                timeout=_timeout(cfg.get("timeout")),
            )
            http = ext_authz_pb2.ExtAuthz(
                failure_mode_allow=bool(cfg.get("failOpen", False)),
                grpc_service=grpc,
                transport_api_version=config_source_pb2.V3,
                filter_enabled_metadata=_enabled_metadata(rbac.HTTP_RBAC_FILTER, name),
            )
            status = _status(cfg.get("statusOnError"))
            if status is not None:
                http.status_on_error.CopyFrom(status)
            tcp = net_ext_authz_pb2.ExtAuthz(
                stat_prefix=rbac.TCP_STAT_PREFIX,
                grpc_service=grpc,
                failure_mode_allow=bool(cfg.get("failOpen", False)),
                transport_api_version=config_source_pb2.V3,
                filter_enabled_metadata=_enabled_metadata(rbac.NETWORK_RBAC_FILTER, name),
            )
            return Provider(name, http=http, tcp=tcp)
        return Provider(name, error=f"extension provider {name!r} is not an ext_authz provider")
    except (ValueError, TypeError, AttributeError) as e:
        return Provider(name, error=f"extension provider {name!r}: {e}")


def providers(snapshot: MeshSnapshot) -> Mapping[str, Provider]:
    def build(s: MeshSnapshot) -> Mapping[str, Provider]:
        out: dict[str, Provider] = {}
        raw = mesh_config(s).get("extensionProviders") or []
        for entry in raw if isinstance(raw, list) else []:
            if isinstance(entry, dict) and entry.get("name"):
                out.setdefault(str(entry["name"]), _provider(s, entry))
        return out

    return snapshot.derived(f"{__name__}:providers", build)


def _by_provider(policies: Sequence[ConfigObject]) -> dict[str, list[ConfigObject]]:
    out: dict[str, list[ConfigObject]] = {}
    for obj in policies:
        ap = obj.typed
        assert isinstance(ap, AuthorizationPolicy)
        out.setdefault(ap.provider, []).append(obj)
    return dict(sorted(out.items()))


def _bad(rules: rbac.BuiltRules) -> Any:
    from envoy.config.rbac.v3 import rbac_pb2

    out = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for src in (rules.rules, rules.shadow):
        if src is not None:
            for name, pol in src.policies.items():
                out.policies[name + BAD_CUSTOM_SUFFIX].CopyFrom(pol)
    return out


def _evaluate_only(cfg: Any, built: rbac.BuiltRules) -> Any:
    """The CUSTOM rules as an RBAC filter's shadow rules (they only tag requests for
    ext_authz); dry-run CUSTOM policies as its rules, evaluated too, as istiod does."""
    if built.rules is not None:
        cfg.shadow_rules.CopyFrom(built.rules)
    if built.shadow is not None:
        cfg.rules.CopyFrom(built.shadow)
    return cfg


def http_filters(
    snapshot: MeshSnapshot, policies: Sequence[ConfigObject]
) -> list[hcm_pb2.HttpFilter]:
    out: list[hcm_pb2.HttpFilter] = []
    found = providers(snapshot)
    bundle = trust_domains(snapshot)
    for name, objs in _by_provider(policies).items():
        prefix = f"{MATCH_PREFIX}-{name}-"
        built = rbac.build_rules(
            objs, for_tcp=False, action="CUSTOM", name_prefix=prefix, bundle=bundle
        )
        p = found.get(name)
        if p is None or p.http is None:
            cfg = http_rbac_pb2.RBAC(rules=_bad(built))
            out.append(hcm_pb2.HttpFilter(name=rbac.HTTP_RBAC_FILTER, typed_config=c.pack(cfg)))
            continue
        cfg = _evaluate_only(http_rbac_pb2.RBAC(shadow_rules_stat_prefix=SHADOW_PREFIX), built)
        out.append(hcm_pb2.HttpFilter(name=rbac.HTTP_RBAC_FILTER, typed_config=c.pack(cfg)))
        out.append(hcm_pb2.HttpFilter(name=EXT_AUTHZ_HTTP_FILTER, typed_config=c.pack(p.http)))
    return out


def network_filters(
    snapshot: MeshSnapshot, policies: Sequence[ConfigObject]
) -> list[listener_components_pb2.Filter]:
    out: list[listener_components_pb2.Filter] = []
    found = providers(snapshot)
    bundle = trust_domains(snapshot)
    Filter = listener_components_pb2.Filter
    for name, objs in _by_provider(policies).items():
        prefix = f"{MATCH_PREFIX}-{name}-"
        built = rbac.build_rules(
            objs, for_tcp=True, action="CUSTOM", name_prefix=prefix, bundle=bundle
        )
        p = found.get(name)
        if p is None or p.error:
            cfg = net_rbac_pb2.RBAC(rules=_bad(built), stat_prefix=rbac.TCP_STAT_PREFIX)
            out.append(Filter(name=rbac.NETWORK_RBAC_FILTER, typed_config=c.pack(cfg)))
            continue
        if p.tcp is None:
            continue  # an HTTP provider has nothing to say about TCP (istiod ignores it)
        net = net_rbac_pb2.RBAC(
            stat_prefix=rbac.TCP_STAT_PREFIX, shadow_rules_stat_prefix=SHADOW_PREFIX
        )
        cfg = _evaluate_only(net, built)
        out.append(Filter(name=rbac.NETWORK_RBAC_FILTER, typed_config=c.pack(cfg)))
        out.append(Filter(name=EXT_AUTHZ_NETWORK_FILTER, typed_config=c.pack(p.tcp)))
    return out
