"""VirtualService HTTP routing for sidecars and gateways (istiod route/route.go, httproute.go).

`translate_routes` turns one VirtualService into Envoy routes for one listener
port and one set of gateway names ("mesh" for sidecars); sidecars and gateways
share it. Facts mirrored from istiod:

- each `http[]` entry yields one route per match (or one catch-all route); routes
  stop after the first catch-all; a match whose `port`, `sourceLabels`,
  `sourceNamespace` or `gateways` does not fit this proxy/port is dropped
  (TranslateRoute, sourceMatchHTTP);
- header and withoutHeaders matchers are sorted by name, then :method,
  :authority, :scheme; regex "*" means "present"; case_sensitive = !ignoreUriCase;
- one destination -> `cluster`; several -> `weighted_clusters` without the
  zero-weight ones; destination cluster `outbound|PORT|SUBSET|HOST` with PORT the
  destination port, else the only port of the service, else the listener port
  (GetDestinationCluster); hosts not in the registry are routed anyway (Envoy
  answers 503 until the cluster exists), and reported;
- timeout defaults to 0s (none); see `set_timeout` for gRPC's grpc-timeout
  header (istiod's deprecated max_grpc_timeout is not sent); retries default to
  istiod's default policy; `attempts: 0` disables retries (retry.ConvertPolicy);
- fault and CORS go to typed_per_filter_config (the HCM carries empty fault and
  cors filters before the router);
- mirror/mirrors -> request_mirror_policies (100% unless a percentage is given,
  0% = no mirror);
- sidecars: the first VirtualService (in index order) claiming a host owns its
  virtual host; later ones are dropped as duplicates (BuildSidecarOutboundVirtualHosts);
  a service covered by a VirtualService gets no default virtual host.
- gateways: routes of every VirtualService matching a server host are appended
  to that host's virtual host, catch-all routes moved last (buildGatewayHTTPRouteConfig).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from xdsd.model.istio.virtualservice import (
    MESH_GATEWAY,
    Cors,
    Destination,
    Fault,
    HeaderOps,
    HTTPMatch,
    HTTPRoute,
    Retry,
    RouteDestination,
    StringMatch,
)
from xdsd.model.types import Protocol, Service, ServicePort
from xdsd.translate import _common as c
from xdsd.translate import vs_index
from xdsd.translate.context import ProxyContext
from xdsd.translate.destination_rule import route_hash_policy

Route = route_components_pb2.Route
RouteAction = route_components_pb2.RouteAction
RouteMatch = route_components_pb2.RouteMatch
HeaderMatcher = route_components_pb2.HeaderMatcher
VirtualHost = route_components_pb2.VirtualHost
HVO = base_pb2.HeaderValueOption

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
RETRY_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
RETRY_PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"


@dataclass
class _Lookup:
    """Service lookup for destinations (istiod RouteOptions.LookupService)."""

    ctx: ProxyContext
    by_host: dict[str, Service]
    # Sidecars: istiod looks destinations up among the services of the listener port
    # only (reduced to that port), so a destination without a port gets the listener port.
    sidecar: bool = False

    def service(self, host: str) -> Service | None:
        return self.by_host.get(host)

    def cluster(self, dest: Destination, listen_port: int) -> str:
        svc = self.service(dest.host)
        if dest.port is not None:
            port = dest.port
        elif svc is not None and len(svc.ports) == 1 and not self.sidecar:
            port = svc.ports[0].port
        else:
            port = listen_port
        return c.outbound_cluster_name(port, dest.host, dest.subset)


# ---------------------------------------------------------------- matches


def _string_matcher(sm: StringMatch) -> string_pb2.StringMatcher:
    if sm.kind == "exact":
        return string_pb2.StringMatcher(exact=sm.value)
    if sm.kind == "prefix":
        return string_pb2.StringMatcher(prefix=sm.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=sm.value))


def _header_matcher(name: str, sm: StringMatch | None) -> route_components_pb2.HeaderMatcher:
    if sm is None or sm.present_only:
        return HeaderMatcher(name=name, present_match=True)
    return HeaderMatcher(name=name, string_match=_string_matcher(sm))


def route_match(m: HTTPMatch | None) -> route_components_pb2.RouteMatch:
    """istiod TranslateRouteMatch (mesh semantics)."""
    out = RouteMatch(prefix="/")
    if m is None:
        return out
    headers: list[route_components_pb2.HeaderMatcher] = []
    for name, sm in m.headers:
        headers.append(_header_matcher(name, sm))
    for name, sm in m.without_headers:
        hm = _header_matcher(name, sm)
        hm.invert_match = True
        if not (sm is None or sm.present_only):
            hm.treat_missing_header_as_empty = True
        headers.append(hm)
    headers.sort(key=lambda h: h.name)
    if m.uri is not None:
        if m.uri.kind == "exact":
            out.path = m.uri.value
        elif m.uri.kind == "prefix":
            out.prefix = m.uri.value
        else:
            out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=m.uri.value))
    out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=not m.ignore_uri_case))
    for name, sm2 in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
        if sm2 is not None:
            headers.append(_header_matcher(name, sm2))
    out.headers.extend(headers)
    for name, sm in m.query_params:
        qp = route_components_pb2.QueryParameterMatcher(name=name)
        if sm is None or sm.present_only:
            qp.present_match = True
        else:
            qp.string_match.CopyFrom(_string_matcher(sm))
        out.query_parameters.append(qp)
    return out


def is_catch_all(r: route_components_pb2.Route) -> bool:
    """istiod IsCatchAllRoute."""
    m = r.match
    which = m.WhichOneof("path_specifier")
    if which == "prefix":
        catch = m.prefix == "/"
    elif which == "path_separated_prefix":
        catch = m.path_separated_prefix == "/"
    elif which == "safe_regex":
        catch = m.safe_regex.regex == ".*"
    else:
        catch = False
    return catch and not m.headers and not m.query_parameters and not m.dynamic_metadata


def _source_match(m: HTTPMatch | None, ctx: ProxyContext, gateway_names: frozenset[str]) -> bool:
    """istiod sourceMatchHTTP."""
    if m is None:
        return True
    if m.gateways:
        return any(g in gateway_names for g in m.gateways)
    labels = ctx.proxy.labels
    if all(labels.get(k) == v for k, v in m.source_labels):
        return not m.source_namespace or m.source_namespace == ctx.namespace
    return False


# ---------------------------------------------------------------- actions


def header_ops(
    ops: HeaderOps,
) -> tuple[
    list[base_pb2.HeaderValueOption], list[base_pb2.HeaderValueOption], list[str], list[str], str
]:
    """istiod TranslateHeadersOperations: (req add, resp add, req remove, resp remove, authority)."""

    def internal(k: str) -> bool:
        return k.startswith(":") or k.lower() == "host"

    def authority_of(pairs: Iterable[tuple[str, str]]) -> str:
        found = ""
        for k, v in pairs:
            if k.lower() in (":authority", "host"):
                found = v
        return found

    def opts(pairs: Iterable[tuple[str, str]], append: bool) -> list[base_pb2.HeaderValueOption]:
        action = HVO.APPEND_IF_EXISTS_OR_ADD if append else HVO.OVERWRITE_IF_EXISTS_OR_ADD
        out = [
            HVO(header=base_pb2.HeaderValue(key=k, value=v), append_action=action)
            for k, v in pairs
            if not internal(k)
        ]
        out.sort(key=lambda h: h.header.key)
        return out

    req = opts(ops.request_set, False) + opts(ops.request_add, True)
    resp = opts(ops.response_set, False) + opts(ops.response_add, True)
    auth = authority_of(ops.request_set) or authority_of(ops.request_add)
    return (
        req,
        resp,
        [k for k in ops.request_remove if not internal(k)],
        [k for k in ops.response_remove if not internal(k)],
        auth,
    )


def _fraction(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=int(value * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _hundred(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED
    )


def default_retry_policy(hash_policy: bool = False) -> route_components_pb2.RetryPolicy:
    """istiod retry.DefaultPolicy / DefaultConsistentHashPolicy."""
    p = route_components_pb2.RetryPolicy(
        retry_on=c.DEFAULT_RETRY_ON,
        num_retries=c.uint32(c.DEFAULT_NUM_RETRIES),
        host_selection_retry_max_attempts=c.DEFAULT_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    if not hash_policy:
        p.retry_host_predicate.append(_previous_hosts())
    return p


def _previous_hosts() -> route_components_pb2.RetryPolicy.RetryHostPredicate:
    return route_components_pb2.RetryPolicy.RetryHostPredicate(
        name=RETRY_PREVIOUS_HOSTS, typed_config=c.pack(previous_hosts_pb2.PreviousHostsPredicate())
    )


def retry_policy(r: Retry | None, hash_policy: bool) -> route_components_pb2.RetryPolicy | None:
    """istiod retry.ConvertPolicy."""
    if r is None:
        return default_retry_policy(hash_policy)
    if r.attempts <= 0:
        return None
    out = default_retry_policy(hash_policy)
    out.num_retries.value = r.attempts
    if r.retry_on:
        names: list[str] = []
        codes: list[int] = []
        for part in r.retry_on.split(","):
            part = part.strip()
            if not part:
                continue
            if part.isdigit() and 100 <= int(part) <= 599:
                codes.append(int(part))
            else:
                names.append(part)
        retry_on = ",".join(names)
        if codes and "retriable-status-codes" not in retry_on:
            retry_on += ",retriable-status-codes"
        out.retry_on = retry_on
        out.retriable_status_codes.extend(codes)
    if r.per_try_timeout is not None:
        out.per_try_timeout.CopyFrom(c.seconds(r.per_try_timeout))
    if r.retry_ignore_previous_hosts is not None:
        del out.retry_host_predicate[:]
        if r.retry_ignore_previous_hosts:
            out.retry_host_predicate.append(_previous_hosts())
    if r.retry_remote_localities:
        out.retry_priority.CopyFrom(
            route_components_pb2.RetryPolicy.RetryPriority(
                name=RETRY_PREVIOUS_PRIORITIES,
                typed_config=c.pack(
                    previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
                ),
            )
        )
    if r.backoff is not None:
        out.retry_back_off.base_interval.CopyFrom(c.seconds(r.backoff))
    return out


def fault_config(f: Fault) -> fault_pb2.HTTPFault | None:
    """istiod TranslateFault."""
    out = fault_pb2.HTTPFault()
    any_set = False
    if f.delay is not None:
        out.delay.fixed_delay.CopyFrom(c.seconds(f.delay))
        out.delay.percentage.CopyFrom(
            _fraction(f.delay_percentage) if f.delay_percentage is not None else _hundred(0)
        )
        any_set = True
    if f.has_abort:
        if f.abort_percentage is not None:
            out.abort.percentage.CopyFrom(_fraction(f.abort_percentage))
        if f.abort_http_status is not None:
            out.abort.http_status = f.abort_http_status
        elif f.abort_grpc_status is not None:
            out.abort.grpc_status = f.abort_grpc_status
        any_set = True
    return out if any_set else None


def cors_config(cp: Cors) -> cors_pb2.CorsPolicy:
    """istiod TranslateCORSPolicy."""
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_string_matcher(o) for o in cp.allow_origins],
        allow_methods=",".join(cp.allow_methods),
        allow_headers=",".join(cp.allow_headers),
        expose_headers=",".join(cp.expose_headers),
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=_hundred(100)),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(
            value=cp.unmatched_preflights != "IGNORE"
        ),
    )
    if cp.max_age is not None:
        out.max_age = str(cp.max_age)
    if cp.allow_credentials is not None:
        out.allow_credentials.value = cp.allow_credentials
    return out


def _mirror_fraction_legacy(r: HTTPRoute) -> percent_pb2.FractionalPercent | None:
    if r.mirror_percentage is None:
        return _hundred(100)
    if r.mirror_percentage > 0:
        return _fraction(r.mirror_percentage)
    return None


def _mirror_policy(
    cluster: str, frac: percent_pb2.FractionalPercent
) -> route_components_pb2.RouteAction.RequestMirrorPolicy:
    return RouteAction.RequestMirrorPolicy(
        cluster=cluster,
        runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=frac),
        trace_sampled=wrappers_pb2.BoolValue(value=False),
    )


def _hash_for(lk: _Lookup, dest: Destination, listen_port: int) -> list[Message]:
    svc = lk.service(dest.host)
    if svc is None:
        return []
    port = int(lk.cluster(dest, listen_port).split("|")[1])
    return route_hash_policy(lk.ctx, svc, port, dest.subset)


def set_timeout(action: route_components_pb2.RouteAction, timeout: float) -> None:
    """istiod setTimeout, without the deprecated max_grpc_timeout Envoy warns about.

    No timeout (0s): max_stream_duration 0s with grpc_timeout_header_max 0s, as istiod
    writes inbound routes: no limit, except the grpc-timeout header of a gRPC request
    (what max_grpc_timeout 0s did). A timeout: only `timeout`. Envoy ignores a route's
    `timeout` once max_stream_duration is set (the regression istiod keeps the deprecated
    field for), so gRPC requests get the route's timeout, not a shorter grpc-timeout.
    """
    action.timeout.CopyFrom(c.seconds(timeout))
    if not timeout:
        action.max_stream_duration.CopyFrom(NO_TIMEOUT)


# No stream duration limit; a gRPC request's grpc-timeout header applies, uncapped.
NO_TIMEOUT = route_components_pb2.RouteAction.MaxStreamDuration(
    max_stream_duration=c.seconds(0), grpc_timeout_header_max=c.seconds(0)
)


def _apply_destination(
    out: route_components_pb2.Route,
    r: HTTPRoute,
    lk: _Lookup,
    authority: str,
    listen_port: int,
) -> None:
    """istiod applyHTTPRouteDestination."""
    action = out.route
    set_timeout(action, r.timeout or 0)
    if r.rewrite is not None:
        if r.rewrite.regex_match:
            action.regex_rewrite.pattern.regex = r.rewrite.regex_match
            action.regex_rewrite.substitution = r.rewrite.regex_rewrite
        elif r.rewrite.uri:
            action.prefix_rewrite = r.rewrite.uri
        if r.rewrite.authority:
            authority = r.rewrite.authority
    if authority:
        action.host_rewrite_literal = authority
    if r.mirror is not None:
        frac = _mirror_fraction_legacy(r)
        if frac is not None:
            action.request_mirror_policies.append(
                _mirror_policy(lk.cluster(r.mirror, listen_port), frac)
            )
    for m in r.mirrors or ():
        if m.percentage is None:
            frac2: percent_pb2.FractionalPercent | None = _hundred(100)
        else:
            frac2 = _fraction(m.percentage) if m.percentage > 0 else None
        if frac2 is not None:
            action.request_mirror_policies.append(
                _mirror_policy(lk.cluster(m.destination, listen_port), frac2)
            )
    consistent_hash = False
    if len(r.route) == 1:
        dst = r.route[0]
        action.cluster = lk.cluster(dst.destination, listen_port)
        if dst.headers is not None:
            req, resp, req_rm, resp_rm, auth = header_ops(dst.headers)
            out.request_headers_to_add.extend(req)
            out.request_headers_to_remove.extend(req_rm)
            out.response_headers_to_add.extend(resp)
            out.response_headers_to_remove.extend(resp_rm)
            if auth and not action.host_rewrite_literal:
                action.host_rewrite_literal = auth
        hashes = _hash_for(lk, dst.destination, listen_port)
        action.hash_policy.extend(hashes)
        consistent_hash = bool(hashes)
    else:
        for dst in r.route:
            if dst.weight == 0:
                continue
            action.weighted_clusters.clusters.append(_cluster_weight(dst, lk, listen_port))
            action.hash_policy.extend(_hash_for(lk, dst.destination, listen_port))
    policy = retry_policy(r.retries, consistent_hash)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _cluster_weight(
    dst: RouteDestination, lk: _Lookup, listen_port: int
) -> route_components_pb2.WeightedCluster.ClusterWeight:
    cw = route_components_pb2.WeightedCluster.ClusterWeight(
        name=lk.cluster(dst.destination, listen_port), weight=c.uint32(dst.weight)
    )
    if dst.headers is not None:
        req, resp, req_rm, resp_rm, auth = header_ops(dst.headers)
        cw.request_headers_to_add.extend(req)
        cw.request_headers_to_remove.extend(req_rm)
        cw.response_headers_to_add.extend(resp)
        cw.response_headers_to_remove.extend(resp_rm)
        if auth:
            cw.host_rewrite_literal = auth
    return cw


def _apply_redirect(out: route_components_pb2.Route, r: HTTPRoute, port: int, is_tls: bool) -> None:
    """istiod ApplyRedirect."""
    rd = r.redirect
    assert rd is not None
    action = route_components_pb2.RedirectAction(host_redirect=rd.authority)
    if rd.prefix_rewrite:
        action.prefix_rewrite = rd.prefix_rewrite
    else:
        action.path_redirect = rd.uri
    if rd.scheme:
        action.scheme_redirect = rd.scheme
    if rd.port is not None or rd.derive_port:
        if rd.derive_port == "FROM_REQUEST_PORT":
            action.port_redirect = port
        elif rd.port is not None:
            action.port_redirect = rd.port
        scheme = rd.scheme or ("https" if is_tls else "http")
        if (action.port_redirect == 80 and scheme == "http") or (
            action.port_redirect == 443 and scheme == "https"
        ):
            action.port_redirect = 0
    codes = {
        301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
        302: route_components_pb2.RedirectAction.FOUND,
        303: route_components_pb2.RedirectAction.SEE_OTHER,
        307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
        308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
    }
    action.response_code = codes.get(rd.code, route_components_pb2.RedirectAction.MOVED_PERMANENTLY)
    out.redirect.CopyFrom(action)


def _operation(out: route_components_pb2.Route, vs_name: str, port: int) -> str:
    """istiod GetRouteOperation."""
    m = out.match
    which = m.WhichOneof("path_specifier")
    path = "/*"
    if which == "prefix":
        path = m.prefix + "*"
    elif which == "path":
        path = m.path
    elif which == "safe_regex":
        path = m.safe_regex.regex
    cluster = out.route.cluster if out.HasField("route") else ""
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] == "outbound" and parts[1].isdigit():
        return f"{parts[3]}:{parts[1]}{path}"
    return f"{vs_name}:{port}{path}"


def translate_route(
    lk: _Lookup,
    vs: vs_index.ResolvedVS,
    r: HTTPRoute,
    m: HTTPMatch | None,
    listen_port: int,
    gateway_names: frozenset[str],
    *,
    is_tls: bool = False,
) -> route_components_pb2.Route | None:
    """istiod TranslateRoute."""
    if m is not None and m.port and m.port != listen_port:
        return None
    if not _source_match(m, lk.ctx, gateway_names):
        return None
    name = r.name
    if m is not None and m.name:
        name = f"{name}.{m.name}"
    out = Route(name=name, match=route_match(m))
    out.metadata.filter_metadata["istio"].CopyFrom(
        struct_pb2.Struct(fields={"config": struct_pb2.Value(string_value=vs.config_path)})
    )
    if m is not None and m.stat_prefix:
        out.stat_prefix = m.stat_prefix
    authority = ""
    if r.headers is not None:
        req, resp, req_rm, resp_rm, authority = header_ops(r.headers)
        out.request_headers_to_add.extend(req)
        out.response_headers_to_add.extend(resp)
        out.request_headers_to_remove.extend(req_rm)
        out.response_headers_to_remove.extend(resp_rm)
    if r.redirect is not None:
        _apply_redirect(out, r, listen_port, is_tls)
    elif r.direct_response is not None:
        out.direct_response.status = r.direct_response.status
        if r.direct_response.body is not None:
            out.direct_response.body.inline_string = r.direct_response.body
    else:
        _apply_destination(out, r, lk, authority, listen_port)
    out.decorator.operation = _operation(out, vs.name, listen_port)
    if r.fault is not None:
        fc = fault_config(r.fault)
        if fc is not None:
            out.typed_per_filter_config[FAULT_FILTER].CopyFrom(c.pack(fc))
    if r.cors is not None:
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(c.pack(cors_config(r.cors)))
    return out


def translate_routes(
    lk: _Lookup,
    vs: vs_index.ResolvedVS,
    listen_port: int,
    gateway_names: frozenset[str],
    *,
    is_tls: bool = False,
) -> list[route_components_pb2.Route]:
    """istiod BuildHTTPRoutesForVirtualService ([] = the VirtualService does not apply)."""
    out: list[route_components_pb2.Route] = []
    for r in vs.spec.http:
        catchall = False
        if not r.match:
            t = translate_route(lk, vs, r, None, listen_port, gateway_names, is_tls=is_tls)
            if t is not None:
                out.append(t)
            catchall = True
        else:
            for m in r.match:
                t = translate_route(lk, vs, r, m, listen_port, gateway_names, is_tls=is_tls)
                if t is not None:
                    out.append(t)
                    if is_catch_all(t):
                        catchall = True
                        break
        if catchall:
            break
    return out


# ---------------------------------------------------------------- host matching


def host_matches(a: str, b: str) -> bool:
    """istiod host.Name.Matches (either may be a wildcard)."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        return b[1:].endswith(a[1:]) if len(a) < len(b) else a[1:].endswith(b[1:])
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """istiod host.Name.SubsetOf: every name `a` matches is matched by `b`."""
    if b.startswith("*"):
        if a.startswith("*"):
            return a[1:].endswith(b[1:])
        return a.endswith(b[1:])
    return a == b


def _most_specific_wildcard(
    vses: Sequence[vs_index.ResolvedVS], hosts: Iterable[str]
) -> dict[str, str]:
    """istiod computeWildcardHostVirtualServiceIndex: service host -> VS key."""
    exact: dict[str, str] = {}
    wild: dict[str, str] = {}
    for v in vses:
        for h in v.spec.hosts:
            (wild if h.startswith("*") else exact).setdefault(h, v.key)
    out: dict[str, str] = {}
    for h in hosts:
        if h in exact:
            out[h] = exact[h]
            continue
        best = ""
        for w in wild:
            if host_matches(w, h) and len(w) > len(best):
                best = w
        if best:
            out[h] = wild[best]
    return out


# ---------------------------------------------------------------- sidecars


@dataclass
class SidecarVHosts:
    """VirtualService virtual hosts of one outbound route configuration."""

    vhosts: list[route_components_pb2.VirtualHost]
    covered: set[str]  # service hostnames whose default virtual host is replaced


def sidecar_virtual_hosts(
    ctx: ProxyContext,
    hosts: Sequence[tuple[Service, ServicePort]],
    listen_port: int,
    domains_for: Callable[[Service], list[str]],
) -> SidecarVHosts:
    """VirtualService virtual hosts for route "PORT" (istiod BuildSidecarVirtualHostWrapper).

    `hosts` are the services of the route configuration; `domains_for(service)`
    gives a service's domains (routes.virtual_host_domains).
    """
    vses = vs_index.for_gateway(ctx.snapshot, ctx.namespace, MESH_GATEWAY)
    result = SidecarVHosts([], set())
    if not vses:
        return result
    registry: dict[str, Service] = {}
    for svc, _sp in hosts:
        registry.setdefault(svc.hostname.lower(), svc)
    # Destinations anywhere in the mesh (visible to the proxy) resolve ports.
    visible = {s.hostname: s for s in reversed(ctx.services)}
    lk = _Lookup(ctx, visible, sidecar=True)
    wildcard_owner = _most_specific_wildcard(vses, registry)
    names: set[str] = set()
    taken: set[str] = set()
    for vs in vses:
        if listen_port != 80 and not _selects(vs, registry):
            continue
        routes = translate_routes(lk, vs, listen_port, frozenset({MESH_GATEWAY}))
        if not routes:
            continue
        extra_hosts: list[str] = []
        matched: list[Service] = []
        for h in vs.spec.hosts:
            if not h.startswith("*"):
                exact = registry.get(h)
                if exact is not None:
                    matched.append(exact)
                else:
                    extra_hosts.append(h)
                continue
            found = False
            for sh, svc in registry.items():
                if not host_matches(sh, h):
                    continue
                found = True
                if wildcard_owner.get(sh) == vs.key:
                    matched.append(svc)
            if not found:
                extra_hosts.append(h)
        if not matched and listen_port != 80:
            continue
        for svc in matched:
            result.covered.add(svc.hostname)
        vhost_specs: list[tuple[str, list[str]]] = []
        for h in extra_hosts:
            vhost_specs.append((f"{h}:{listen_port}", [h]))
        for svc in matched:
            doms = domains_for(svc)
            vhost_specs.append((f"{svc.hostname}:{listen_port}", doms))
        for name, doms in vhost_specs:
            if name in names:
                continue  # another VirtualService claimed the host first (reported by the index)
            names.add(name)
            uniq = [d for d in doms if d.lower() not in taken]
            taken.update(d.lower() for d in uniq)
            if not uniq:
                continue
            result.vhosts.append(VirtualHost(name=name, domains=uniq, routes=routes))
    return result


def _selects(vs: vs_index.ResolvedVS, registry: dict[str, Service]) -> bool:
    """istiod selectVirtualServices: a VS applies to a port if one of its hosts matches a service."""
    wild = [h for h in registry if h.startswith("*")]
    for h in vs.spec.hosts:
        if h in registry:
            return True
        if h.startswith("*"):
            if any(host_matches(h, sh) for sh in registry):
                return True
        elif any(host_matches(w, h) for w in wild):
            return True
    return False


# ---------------------------------------------------------------- gateways


def gateway_virtual_hosts(
    ctx: ProxyContext,
    *,
    gateways: frozenset[str],
    server_hosts: tuple[str, ...],
    port: int,
    is_tls: bool = False,
) -> list[Message]:
    """VirtualHosts for a gateway server: the VirtualServices bound to any of `gateways`
    ("NAMESPACE/NAME") whose hosts match `server_hosts` ("NS/HOST" as in Gateway
    servers[].hosts), for traffic arriving on `port`. One VirtualHost per host."""
    visible = {s.hostname: s for s in reversed(ctx.services)}
    lk = _Lookup(ctx, visible)
    gw_namespaces = {g.partition("/")[0] for g in gateways}
    vhosts: dict[str, route_components_pb2.VirtualHost] = {}
    done: set[tuple[str, str]] = set()
    for gw in sorted(gateways):
        for vs in vs_index.for_gateway(ctx.snapshot, ctx.namespace, gw):
            if (gw, vs.key) in done:
                continue
            done.add((gw, vs.key))
            server = _hosts_for_namespace(server_hosts, vs.namespace, gw_namespaces)
            hosts = _intersection(server, list(vs.spec.hosts))
            if not hosts:
                continue
            routes = translate_routes(lk, vs, port, frozenset({gw}), is_tls=is_tls)
            if not routes:
                continue
            for h in hosts:
                h = h.lower()
                if h in vhosts:
                    vhosts[h].routes.extend(routes)
                else:
                    vhosts[h] = VirtualHost(name=f"{h}:{port}", domains=[h], routes=routes)
    out: list[Message] = []
    for _h, vh in sorted(vhosts.items(), key=lambda kv: kv[1].name):
        ordered = [r for r in vh.routes if not is_catch_all(r)] + [
            r for r in vh.routes if is_catch_all(r)
        ]
        del vh.routes[:]
        vh.routes.extend(ordered)
        out.append(vh)
    return out


def _hosts_for_namespace(
    server_hosts: Sequence[str], vs_namespace: str, gw_namespaces: set[str]
) -> list[str]:
    """istiod host.NamesForNamespace ("./host" = the Gateway's own namespace)."""
    out: list[str] = []
    for h in server_hosts:
        ns, sep, name = h.partition("/")
        if not sep:
            out.append(h)
            continue
        if (ns == "." and vs_namespace in gw_namespaces) or ns in ("*", vs_namespace):
            out.append(name)
    return out


def _intersection(server: list[str], vs_hosts: list[str]) -> list[str]:
    """istiod Names.Intersection: the more specific of each overlapping pair."""
    out: list[str] = []
    for a in server:
        for b in vs_hosts:
            pick = a if host_subset_of(a, b) else b if host_subset_of(b, a) else None
            if pick is not None and pick not in out:
                out.append(pick)
    return out


def is_http_port(sp: ServicePort) -> bool:
    return sp.protocol.is_http or sp.protocol is Protocol.AUTO
