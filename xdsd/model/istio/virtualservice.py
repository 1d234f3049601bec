"""VirtualService (networking.istio.io): typed and validated.

Checks follow istiod's validation (pkg/config/validation/virtualservice.go,
validation.go, agent/validation.go): every problem names its field path; an
error rejects the object (its last good version stays served). Fields we read
but do not translate yet get a "not supported yet" warning.

Hosts are kept as written; short names are resolved against the object's
namespace and the mesh domain when the index is built (istiod
ResolveVirtualServiceShortnames), because the domain suffix belongs to the mesh.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.types import ObjectRef

MESH_GATEWAY = "mesh"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: str  # "exact" | "prefix" | "regex"
    value: str

    @property
    def present_only(self) -> bool:
        """istiod: regex "*" (not RE2) means "header present"."""
        return self.kind == "regex" and self.value == "*"


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOps:
    request_set: tuple[tuple[str, str], ...] = ()
    request_add: tuple[tuple[str, str], ...] = ()
    request_remove: tuple[str, ...] = ()
    response_set: tuple[tuple[str, str], ...] = ()
    response_add: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDestination:
    destination: Destination
    weight: int = 0
    headers: HeaderOps | None = None


@dataclass(frozen=True)
class HTTPMatch:
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    # (name, match or None = present) in document order
    headers: tuple[tuple[str, StringMatch | None], ...] = ()
    without_headers: tuple[tuple[str, StringMatch | None], ...] = ()
    query_params: tuple[tuple[str, StringMatch | None], ...] = ()
    port: int = 0
    source_labels: tuple[tuple[str, str], ...] = ()
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""
    ignore_uri_case: bool = False
    stat_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str = ""
    prefix_rewrite: str = ""
    authority: str = ""
    port: int | None = None
    derive_port: str = ""  # "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT"
    scheme: str = ""
    code: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str = ""
    authority: str = ""
    regex_match: str = ""
    regex_rewrite: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int
    per_try_timeout: float | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: float | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    delay: float | None = None  # fixedDelay, seconds
    delay_percentage: float | None = None
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_percentage: float | None = None
    has_abort: bool = False


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: Destination
    percentage: float | None = None


@dataclass(frozen=True)
class Cors:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str = ""


@dataclass(frozen=True, slots=True)
class Delegate:
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatch, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None
    retries: Retry | None = None
    fault: Fault | None = None
    mirror: Destination | None = None
    mirror_percentage: float | None = None  # mirrorPercentage, or the deprecated mirrorPercent
    mirrors: tuple[Mirror, ...] | None = None
    cors: Cors | None = None
    headers: HeaderOps | None = None


@dataclass(frozen=True)
class L4Match:
    destination_subnets: tuple[str, ...] = ()
    port: int = 0
    source_labels: tuple[tuple[str, str], ...] = ()
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""
    sni_hosts: tuple[str, ...] = ()  # TLS routes only


@dataclass(frozen=True)
class L4Route:
    match: tuple[L4Match, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class VirtualService:
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[L4Route, ...] = ()
    tls: tuple[L4Route, ...] = ()
    export_to: tuple[str, ...] = ()

    @property
    def is_delegate(self) -> bool:
        return not self.hosts


# ---------------------------------------------------------------- readers

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_JWT_CLAIM_PREFIX = "@request.auth.claims"
_RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
_CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
# gRPC status names (grpc.SupportedGRPCStatus) -> codes.
GRPC_STATUS = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def parse_duration(text: str) -> float | None:
    """Go/protobuf duration text ("1.5s", "100ms", "1m30s") -> seconds, or None."""
    ns = f.parse_duration_ns(text)
    return None if ns is None else ns / 1e9


def _keys(
    iss: Issues,
    raw: Mapping[Any, Any],
    path: str,
    known: frozenset[str],
    unsupported: frozenset[str] = frozenset(),
) -> None:
    for k in raw:
        if k in unsupported:
            iss.warn(f.join(path, k), "not supported yet (ignored)")
        elif k not in known:
            iss.warn(f.join(path, k), "unknown field (ignored)")


def _duration(
    iss: Issues, raw: Mapping[Any, Any], key: str, path: str, *, zero_ok: bool = False
) -> float | None:
    """A duration field in seconds, validated by the shared rules (xdsd.model.fields)."""
    ns = f.duration_ns(iss, raw, key, path, allow_zero=zero_ok)
    return None if ns is None else ns / 1e9


def _percentage(iss: Issues, raw: Mapping[Any, Any], key: str, path: str) -> float | None:
    m = f.get_map(iss, raw, key, path)
    if m is None:
        return None
    where = f.join(path, key)
    _keys(iss, m, where, frozenset({"value"}))
    value = m.get("value", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        iss.error(f.join(where, "value"), f"must be a number, not a {f.type_name(value)}")
        return None
    if not 0 <= value <= 100:
        iss.error(f.join(where, "value"), f"{value} is out of range 0..100")
        return None
    return float(value)


def _string_match(iss: Issues, value: Any, where: str, *, regex_star: bool = False) -> Any:
    """A StringMatch; returns StringMatch, None for an empty match (= present), or False."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        iss.error(where, f"must be a mapping, not a {f.type_name(value)}")
        return False
    kinds = [k for k in ("exact", "prefix", "regex") if k in value]
    _keys(iss, value, where, frozenset({"exact", "prefix", "regex"}))
    if not kinds:
        return None
    if len(kinds) > 1:
        iss.error(where, f"only one of exact, prefix, regex may be set (found {', '.join(kinds)})")
        return False
    kind = kinds[0]
    text = value[kind]
    if not isinstance(text, str):
        iss.error(f.join(where, kind), f"must be a string, not a {f.type_name(text)}")
        return False
    if kind == "regex" and not (regex_star and text == "*"):
        try:
            re.compile(text)
        except re.error as e:
            iss.error(f.join(where, kind), f"invalid regex {text!r}: {e}")
            return False
    return StringMatch(kind, text)


def _match_map(
    iss: Issues, raw: Mapping[Any, Any], key: str, path: str, *, header: bool
) -> tuple[tuple[str, StringMatch | None], ...]:
    m = f.get_map(iss, raw, key, path)
    out: list[tuple[str, StringMatch | None]] = []
    where = f.join(path, key)
    for name, value in (m or {}).items():
        p = f.join(where, name)
        if not isinstance(name, str) or not name:
            iss.error(where, f"key {name!r} must be a non-empty string")
            continue
        if header:
            if name.startswith(_JWT_CLAIM_PREFIX):
                iss.warn(p, "JWT claim based routing is not supported yet (this match is ignored)")
                continue
            if not _HEADER_NAME.fullmatch(name):
                iss.error(p, f"invalid header name {name!r}")
                continue
        if value is None and header and key == "headers":
            iss.error(p, "header match cannot be null")
            continue
        sm = _string_match(iss, value, p, regex_star=True)
        if sm is not False:
            out.append((name.lower() if header else name, sm))
    return tuple(out)


def _header_ops(iss: Issues, raw: Mapping[Any, Any], key: str, path: str) -> HeaderOps | None:
    m = f.get_map(iss, raw, key, path)
    if m is None:
        return None
    where = f.join(path, key)
    _keys(iss, m, where, frozenset({"request", "response"}))
    parts: dict[str, Any] = {}
    for side in ("request", "response"):
        sm = f.get_map(iss, m, side, where)
        if sm is None:
            continue
        sw = f.join(where, side)
        _keys(iss, sm, sw, frozenset({"set", "add", "remove"}))
        for op in ("set", "add"):
            values = f.get_str_map(iss, sm, op, sw)
            for name in values:
                if not _HEADER_NAME.fullmatch(name.lstrip(":")):
                    iss.error(f.join(f.join(sw, op), name), f"invalid header name {name!r}")
            parts[f"{side}_{op}"] = tuple(values.items())
        removes = f.get_str_list(iss, sm, "remove", sw)
        for i, name in enumerate(removes):
            if not _HEADER_NAME.fullmatch(name.lstrip(":")):
                iss.error(f"{f.join(sw, 'remove')}[{i}]", f"invalid header name {name!r}")
        parts[f"{side}_remove"] = tuple(removes)
    if any(
        k.startswith("response") and n.lower() in ("host", ":authority")
        for k, v in parts.items()
        if k != "response_remove" and k != "request_remove"
        for n, _ in v
    ):
        iss.error(where, "the authority header can only be set on requests")
    return HeaderOps(**parts)


def _authority_of(ops: HeaderOps | None) -> list[str]:
    if ops is None:
        return []
    return [
        v for k, v in (*ops.request_set, *ops.request_add) if k.lower() in ("host", ":authority")
    ]


def _destination(
    iss: Issues, raw: Mapping[Any, Any], key: str, path: str, *, required: bool = True
) -> Destination | None:
    m = f.get_map(iss, raw, key, path, required=required)
    if m is None:
        return None
    where = f.join(path, key)
    _keys(iss, m, where, frozenset({"host", "subset", "port"}))
    host = f.get_str(iss, m, "host", where, required=True)
    subset = f.get_str(iss, m, "subset", where) or ""
    port: int | None = None
    pm = f.get_map(iss, m, "port", where)
    if pm is not None:
        _keys(iss, pm, f.join(where, "port"), frozenset({"number"}))
        port = f.get_port(iss, pm, "number", f.join(where, "port"), required=True)
    if host is not None and (host == "*" or not f.is_hostname(host, wildcard=True)):
        iss.error(f.join(where, "host"), f"invalid destination host {host!r}")
        return None
    if subset and not f.is_dns1123_label(subset):
        iss.error(f.join(where, "subset"), f"subset name {subset!r} is not a DNS-1123 label")
        return None
    if host is None:
        return None
    return Destination(host.lower(), subset, port)


def _weight(iss: Issues, raw: Mapping[Any, Any], path: str) -> int:
    w = f.get_int(iss, raw, "weight", path, lo=0, hi=2**31 - 1)
    return w or 0


def _route_destinations(
    iss: Issues, raw: Mapping[Any, Any], path: str, *, http: bool
) -> tuple[RouteDestination, ...]:
    where = f.join(path, "route")
    out: list[RouteDestination] = []
    for p, item in f.items(iss, f.get_list(iss, raw, "route", path), where):
        known = {"destination", "weight"} | ({"headers"} if http else set())
        _keys(iss, item, p, frozenset(known))
        dest = _destination(iss, item, "destination", p)
        weight = _weight(iss, item, p)
        headers = _header_ops(iss, item, "headers", p) if http else None
        if dest is not None:
            out.append(RouteDestination(dest, weight, headers))
    if len(out) > 1 and sum(d.weight for d in out) == 0:
        iss.error(where, "total destination weight = 0")
    return tuple(out)


def _labels_tuple(
    iss: Issues, raw: Mapping[Any, Any], key: str, path: str
) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(f.get_str_map(iss, raw, key, path).items()))


def _gateway_names(iss: Issues, raw: Mapping[Any, Any], key: str, path: str) -> tuple[str, ...]:
    names = f.get_str_list(iss, raw, key, path)
    for i, g in enumerate(names):
        if g == MESH_GATEWAY:
            continue
        ns, sep, name = g.rpartition("/")
        ok = f.is_dns1123_subdomain(name) and (not sep or f.is_dns1123_label(ns))
        if not ok:
            iss.error(f"{f.join(path, key)}[{i}]", f"invalid gateway name {g!r}")
    return tuple(names)


def _source_ns(iss: Issues, raw: Mapping[Any, Any], path: str) -> str:
    ns = f.get_str(iss, raw, "sourceNamespace", path) or ""
    if ns and not f.is_dns1123_label(ns):
        iss.error(
            f.join(path, "sourceNamespace"), f"sourceNamespace {ns!r} is not a DNS-1123 label"
        )
    return ns


_HTTP_MATCH_KEYS = frozenset(
    {
        "name",
        "uri",
        "scheme",
        "method",
        "authority",
        "headers",
        "port",
        "sourceLabels",
        "gateways",
        "queryParams",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
        "statPrefix",
    }
)


def _http_match(iss: Issues, m: Mapping[Any, Any], p: str) -> HTTPMatch | None:
    _keys(iss, m, p, _HTTP_MATCH_KEYS)
    before = len(iss.errors)
    sms: dict[str, StringMatch | None] = {}
    for key in ("uri", "scheme", "method", "authority"):
        sm = _string_match(iss, m.get(key), f.join(p, key))
        sms[key] = sm if sm is not False else None
    port = f.get_port(iss, m, "port", p) or 0
    out = HTTPMatch(
        name=f.get_str(iss, m, "name", p) or "",
        uri=sms["uri"],
        scheme=sms["scheme"],
        method=sms["method"],
        authority=sms["authority"],
        headers=_match_map(iss, m, "headers", p, header=True),
        without_headers=_match_map(iss, m, "withoutHeaders", p, header=True),
        query_params=_match_map(iss, m, "queryParams", p, header=False),
        port=port,
        source_labels=_labels_tuple(iss, m, "sourceLabels", p),
        gateways=_gateway_names(iss, m, "gateways", p),
        source_namespace=_source_ns(iss, m, p),
        ignore_uri_case=bool(f.get_bool(iss, m, "ignoreUriCase", p)),
        stat_prefix=f.get_str(iss, m, "statPrefix", p) or "",
    )
    if any(e.severity == "error" for e in iss.errors[before:]):
        return None
    return out


def _redirect(
    iss: Issues, raw: Mapping[Any, Any], path: str, matches: tuple[HTTPMatch, ...]
) -> Redirect | None:
    m = f.get_map(iss, raw, "redirect", path)
    if m is None:
        return None
    p = f.join(path, "redirect")
    _keys(
        iss,
        m,
        p,
        frozenset(
            {"uri", "authority", "port", "derivePort", "scheme", "redirectCode", "prefixRewrite"}
        ),
    )
    uri = f.get_str(iss, m, "uri", p) or ""
    prefix = f.get_str(iss, m, "prefixRewrite", p) or ""
    authority = f.get_str(iss, m, "authority", p) or ""
    port = f.get_port(iss, m, "port", p)
    derive = f.get_str(iss, m, "derivePort", p) or ""
    if derive and derive not in ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"):
        iss.error(f.join(p, "derivePort"), "must be FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT")
    if derive and port is not None:
        iss.error(p, "only one of port and derivePort may be set")
    scheme = f.get_str(iss, m, "scheme", p) or ""
    if scheme and scheme not in ("http", "https"):
        iss.error(f.join(p, "scheme"), 'invalid redirect scheme, must be "http" or "https"')
    code = f.get_int(iss, m, "redirectCode", p, lo=300, hi=399)
    if code is not None and code not in (301, 302, 303, 307, 308):
        iss.warn(f.join(p, "redirectCode"), f"redirect code {code} is not supported yet (301 used)")
        code = 301
    if uri and prefix:
        iss.error(p, "redirect may only specify one of uri or prefixRewrite")
    if prefix:
        for mt in matches:
            if mt.uri is not None and mt.uri.kind != "prefix":
                iss.error(
                    p, "redirect prefixRewrite requires all URI matches to use prefix match type"
                )
                break
    if not (uri or prefix or authority or port or derive or scheme):
        iss.error(p, "redirect must specify URI, authority, scheme, or port")
    return Redirect(uri, prefix, authority, port, derive, scheme, code or 301)


def _rewrite(iss: Issues, raw: Mapping[Any, Any], path: str) -> Rewrite | None:
    m = f.get_map(iss, raw, "rewrite", path)
    if m is None:
        return None
    p = f.join(path, "rewrite")
    _keys(iss, m, p, frozenset({"uri", "authority", "uriRegexRewrite"}))
    uri = f.get_str(iss, m, "uri", p) or ""
    authority = f.get_str(iss, m, "authority", p) or ""
    rm, rr = "", ""
    rx = f.get_map(iss, m, "uriRegexRewrite", p)
    if rx is not None:
        rp = f.join(p, "uriRegexRewrite")
        _keys(iss, rx, rp, frozenset({"match", "rewrite"}))
        rm = f.get_str(iss, rx, "match", rp, required=True) or ""
        rr = str(rx.get("rewrite") or "")
        if rm:
            try:
                re.compile(rm)
            except re.error as e:
                iss.error(f.join(rp, "match"), f"invalid regex: {e}")
        if uri:
            iss.error(p, "rewrite may only specify one of uri and uriRegexRewrite")
    if not (uri or authority or rm):
        iss.error(p, "rewrite must specify uri, authority or uriRegexRewrite")
    return Rewrite(uri, authority, rm, rr)


def _retries(iss: Issues, raw: Mapping[Any, Any], path: str) -> Retry | None:
    m = f.get_map(iss, raw, "retries", path)
    if m is None:
        return None
    p = f.join(path, "retries")
    _keys(
        iss,
        m,
        p,
        frozenset(
            {
                "attempts",
                "perTryTimeout",
                "retryOn",
                "retryRemoteLocalities",
                "retryIgnorePreviousHosts",
                "backoff",
            }
        ),
    )
    attempts = f.get_int(iss, m, "attempts", p, lo=0, hi=2**31 - 1) or 0
    per_try = _duration(iss, m, "perTryTimeout", p)
    retry_on = f.get_str(iss, m, "retryOn", p) or ""
    for part in retry_on.split(",") if retry_on else ():
        part = part.strip()
        if part.isdigit() and 100 <= int(part) <= 599:
            continue
        if part not in _RETRY_ON:
            iss.error(f.join(p, "retryOn"), f"{part!r} is not a valid retryOn policy")
    remote = f.get_bool(iss, m, "retryRemoteLocalities", p)
    ignore_prev = f.get_bool(iss, m, "retryIgnorePreviousHosts", p)
    backoff = _duration(iss, m, "backoff", p)
    if attempts == 0 and (per_try is not None or retry_on or remote is not None):
        iss.error(p, "http retry policy configured when attempts are set to 0 (disabled)")
    return Retry(attempts, per_try, retry_on, remote, ignore_prev, backoff)


def _fault(iss: Issues, raw: Mapping[Any, Any], path: str) -> Fault | None:
    m = f.get_map(iss, raw, "fault", path)
    if m is None:
        return None
    p = f.join(path, "fault")
    _keys(iss, m, p, frozenset({"delay", "abort"}))
    delay = f.get_map(iss, m, "delay", p)
    abort = f.get_map(iss, m, "abort", p)
    if delay is None and abort is None:
        iss.error(p, "HTTP fault injection must have an abort and/or a delay")
    d_s: float | None = None
    d_pct: float | None = None
    if delay is not None:
        dp = f.join(p, "delay")
        _keys(
            iss,
            delay,
            dp,
            frozenset({"fixedDelay", "percentage", "percent"}),
            frozenset({"exponentialDelay"}),
        )
        d_s = _duration(iss, delay, "fixedDelay", dp)
        if d_s is None and "fixedDelay" not in delay:
            iss.error(f.join(dp, "fixedDelay"), "is required")
        d_pct = _percentage(iss, delay, "percentage", dp)
        if d_pct is None and "percent" in delay:
            legacy = f.get_int(iss, delay, "percent", dp, lo=0, hi=100)
            d_pct = float(legacy) if legacy is not None else None
    a_http: int | None = None
    a_grpc: int | None = None
    a_pct: float | None = None
    if abort is not None:
        ap = f.join(p, "abort")
        _keys(
            iss,
            abort,
            ap,
            frozenset({"httpStatus", "grpcStatus", "percentage"}),
            frozenset({"http2Error"}),
        )
        a_http = f.get_int(iss, abort, "httpStatus", ap, lo=200, hi=599)
        grpc = f.get_str(iss, abort, "grpcStatus", ap)
        if grpc is not None:
            if grpc not in GRPC_STATUS:
                iss.error(f.join(ap, "grpcStatus"), f"gRPC status {grpc!r} is not supported")
            else:
                a_grpc = GRPC_STATUS[grpc]
        if a_http is not None and a_grpc is not None:
            iss.error(ap, "only one of httpStatus and grpcStatus may be set")
        if (
            a_http is None
            and a_grpc is None
            and "httpStatus" not in abort
            and "grpcStatus" not in abort
        ):
            iss.warn(ap, "abort configured, but error type not set (ignored)")
        a_pct = _percentage(iss, abort, "percentage", ap)
    return Fault(
        d_s, d_pct, a_http, a_grpc, a_pct, has_abort=a_http is not None or a_grpc is not None
    )


def _mirror_percent(iss: Issues, raw: Mapping[Any, Any], path: str) -> float | None:
    pct = _percentage(iss, raw, "mirrorPercentage", path)
    if pct is not None:
        return pct
    for legacy in ("mirrorPercent", "mirror_percent"):
        if legacy in raw:
            iss.warn(f.join(path, legacy), 'deprecated, use "mirrorPercentage" instead')
            v = f.get_int(iss, raw, legacy, path, lo=0, hi=100)
            return float(v) if v is not None else None
    return None


def _mirrors(iss: Issues, raw: Mapping[Any, Any], path: str) -> tuple[Mirror, ...] | None:
    values = f.get_list(iss, raw, "mirrors", path)
    if values is None:
        return None
    out: list[Mirror] = []
    for p, item in f.items(iss, values, f.join(path, "mirrors")):
        _keys(iss, item, p, frozenset({"destination", "percentage"}))
        dest = _destination(iss, item, "destination", p)
        pct = _percentage(iss, item, "percentage", p)
        if dest is not None:
            out.append(Mirror(dest, pct))
    return tuple(out)


def _cors(iss: Issues, raw: Mapping[Any, Any], path: str) -> Cors | None:
    m = f.get_map(iss, raw, "corsPolicy", path)
    if m is None:
        return None
    p = f.join(path, "corsPolicy")
    _keys(
        iss,
        m,
        p,
        frozenset(
            {
                "allowOrigins",
                "allowOrigin",
                "allowMethods",
                "allowHeaders",
                "exposeHeaders",
                "maxAge",
                "allowCredentials",
                "unmatchedPreflights",
            }
        ),
    )
    origins: list[StringMatch] = []
    for i, item in enumerate(f.get_list(iss, m, "allowOrigins", p) or ()):
        ip = f"{f.join(p, 'allowOrigins')}[{i}]"
        sm = _string_match(iss, item, ip)
        if sm is None:
            iss.error(ip, "is not a valid match type for CORS allow origins")
        elif sm is not False:
            origins.append(sm)
    if not origins and "allowOrigin" in m:
        iss.warn(f.join(p, "allowOrigin"), 'deprecated, use "allowOrigins" instead')
        origins = [StringMatch("exact", o) for o in f.get_str_list(iss, m, "allowOrigin", p)]
    methods = f.get_str_list(iss, m, "allowMethods", p)
    for i, meth in enumerate(methods):
        if meth not in _CORS_METHODS:
            iss.error(
                f"{f.join(p, 'allowMethods')}[{i}]", f"{meth!r} is not a supported HTTP method"
            )
    headers: dict[str, list[str]] = {}
    for key in ("allowHeaders", "exposeHeaders"):
        headers[key] = f.get_str_list(iss, m, key, p)
        for i, name in enumerate(headers[key]):
            if not _HEADER_NAME.fullmatch(name):
                iss.error(f"{f.join(p, key)}[{i}]", f"invalid header name {name!r}")
    max_age_s = _duration(iss, m, "maxAge", p)
    if max_age_s is not None and max_age_s != int(max_age_s):
        iss.error(f.join(p, "maxAge"), "max_age duration is accurate only to seconds precision")
    unmatched = f.get_str(iss, m, "unmatchedPreflights", p) or ""
    if unmatched and unmatched not in ("UNSPECIFIED", "FORWARD", "IGNORE"):
        iss.error(f.join(p, "unmatchedPreflights"), "must be UNSPECIFIED, FORWARD or IGNORE")
    return Cors(
        tuple(origins),
        tuple(methods),
        tuple(headers["allowHeaders"]),
        tuple(headers["exposeHeaders"]),
        int(max_age_s) if max_age_s is not None else None,
        f.get_bool(iss, m, "allowCredentials", p),
        unmatched,
    )


def _direct_response(iss: Issues, raw: Mapping[Any, Any], path: str) -> DirectResponse | None:
    m = f.get_map(iss, raw, "directResponse", path)
    if m is None:
        return None
    p = f.join(path, "directResponse")
    _keys(iss, m, p, frozenset({"status", "body"}))
    status = f.get_int(iss, m, "status", p, lo=200, hi=599, required=True)
    body: str | None = None
    b = f.get_map(iss, m, "body", p)
    if b is not None:
        bp = f.join(p, "body")
        _keys(iss, b, bp, frozenset({"string"}), frozenset({"bytes"}))
        body = f.get_str(iss, b, "string", bp)
        if body is not None and len(body) > 1024 * 1024:
            iss.error(bp, "direct responses must be less than 1MB")
    return DirectResponse(status or 200, body)


_HTTP_ROUTE_KEYS = frozenset(
    {
        "name",
        "match",
        "route",
        "redirect",
        "directResponse",
        "delegate",
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirror",
        "mirrors",
        "mirrorPercentage",
        "mirrorPercent",
        "mirror_percent",
        "corsPolicy",
        "headers",
    }
)


def _http_route(
    iss: Issues, item: Mapping[Any, Any], p: str, *, delegate_vs: bool
) -> HTTPRoute | None:
    before = len(iss.errors)
    _keys(iss, item, p, _HTTP_ROUTE_KEYS)
    matches: list[HTTPMatch] = []
    for mp, m in f.items(iss, f.get_list(iss, item, "match", p), f.join(p, "match")):
        hm = _http_match(iss, m, mp)
        if hm is not None:
            matches.append(hm)
    match = tuple(matches)
    route = _route_destinations(iss, item, p, http=True)
    redirect = _redirect(iss, item, p, match)
    direct = _direct_response(iss, item, p)
    delegate: Delegate | None = None
    dm = f.get_map(iss, item, "delegate", p)
    if dm is not None:
        dp = f.join(p, "delegate")
        _keys(iss, dm, dp, frozenset({"name", "namespace"}))
        name = f.get_str(iss, dm, "name", dp, required=True)
        ns = f.get_str(iss, dm, "namespace", dp) or ""
        if ns and not f.is_dns1123_label(ns):
            iss.error(f.join(dp, "namespace"), f"{ns!r} is not a valid namespace")
        if name:
            delegate = Delegate(name, ns)
    rewrite = _rewrite(iss, item, p)
    timeout = _duration(iss, item, "timeout", p, zero_ok=True)
    retries = _retries(iss, item, p)
    fault = _fault(iss, item, p)
    mirror = _destination(iss, item, "mirror", p, required=False)
    mirror_pct = _mirror_percent(iss, item, p)
    mirrors = _mirrors(iss, item, p)
    cors = _cors(iss, item, p)
    headers = _header_ops(iss, item, "headers", p)
    # Route-kind conflicts (validateHTTPRouteConflict).
    if delegate_vs and "delegate" in item:
        iss.error(f.join(p, "delegate"), "delegate HTTP route cannot contain delegate")
    if "delegate" in item and not delegate_vs:
        if "redirect" in item:
            iss.error(p, "root HTTP route must not specify redirect")
        if "route" in item:
            iss.error(p, "root HTTP route must not specify route")
    else:
        if "redirect" in item:
            for other, what in (
                ("route", "route"),
                ("fault", "fault"),
                ("rewrite", "rewrite"),
                ("directResponse", "direct_response"),
            ):
                if item.get(other):
                    iss.error(p, f"HTTP route cannot contain both {what} and redirect")
        elif "directResponse" in item:
            for other, what in (("route", "route"), ("fault", "fault"), ("rewrite", "rewrite")):
                if item.get(other):
                    iss.error(p, f"HTTP route cannot contain both {what} and direct_response")
        elif not item.get("route"):
            iss.error(p, "HTTP route, redirect or direct_response is required")
    if mirror is not None and mirrors:
        iss.error(p, "HTTP route cannot contain both mirror and mirrors")
    auth = _authority_of(headers)
    if (rewrite and rewrite.authority and auth) or len(auth) > 1:
        iss.error(p, "authority header cannot be set multiple times")
    if any(e.severity == "error" for e in iss.errors[before:]):
        return None
    return HTTPRoute(
        name=f.get_str(iss, item, "name", p) or "",
        match=match,
        route=route,
        redirect=redirect,
        direct_response=direct,
        delegate=delegate,
        rewrite=rewrite,
        timeout=timeout,
        retries=retries,
        fault=fault,
        mirror=mirror,
        mirror_percentage=mirror_pct,
        mirrors=mirrors,
        cors=cors,
        headers=headers,
    )


def _l4_routes(iss: Issues, raw: Mapping[Any, Any], key: str, path: str) -> tuple[L4Route, ...]:
    tls = key == "tls"
    out: list[L4Route] = []
    for p, item in f.items(iss, f.get_list(iss, raw, key, path), f.join(path, key)):
        _keys(iss, item, p, frozenset({"match", "route"}))
        matches: list[L4Match] = []
        for mp, m in f.items(iss, f.get_list(iss, item, "match", p), f.join(p, "match")):
            known = {"destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace"}
            if tls:
                known.add("sniHosts")
            _keys(iss, m, mp, frozenset(known), frozenset() if tls else frozenset({"sourceSubnet"}))
            subnets = f.get_str_list(iss, m, "destinationSubnets", mp)
            for i, s in enumerate(subnets):
                if not f.is_ip_or_cidr(s):
                    iss.error(
                        f"{f.join(mp, 'destinationSubnets')}[{i}]", f"{s!r} is not an IP or CIDR"
                    )
            sni: list[str] = []
            if tls:
                sni = f.get_str_list(iss, m, "sniHosts", mp, required=True)
                for i, h in enumerate(sni):
                    if not f.is_hostname(h, wildcard=True):
                        iss.error(f"{f.join(mp, 'sniHosts')}[{i}]", f"invalid SNI host {h!r}")
            matches.append(
                L4Match(
                    tuple(subnets),
                    f.get_port(iss, m, "port", mp) or 0,
                    _labels_tuple(iss, m, "sourceLabels", mp),
                    _gateway_names(iss, m, "gateways", mp),
                    _source_ns(iss, m, mp),
                    tuple(h.lower() for h in sni),
                )
            )
        if tls and not matches:
            iss.error(f.join(p, "match"), "TLS route must have at least one match condition")
        route = _route_destinations(iss, item, p, http=False)
        if not route:
            iss.error(f.join(p, "route"), "is required")
        out.append(L4Route(tuple(matches), route))
    return tuple(out)


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> VirtualService | None:
    _keys(iss, spec, path, frozenset({"hosts", "gateways", "http", "tcp", "tls", "exportTo"}))
    hosts = f.get_str_list(iss, spec, "hosts", path)
    gateways = _gateway_names(iss, spec, "gateways", path)
    delegate_vs = not hosts
    applies_to_mesh = not gateways or MESH_GATEWAY in gateways
    for i, h in enumerate(hosts):
        where = f"{f.join(path, 'hosts')}[{i}]"
        if h == "*":
            if applies_to_mesh:
                iss.error(
                    where,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                )
        elif not (f.is_hostname(h, wildcard=True) or f.is_ip(h)):
            iss.error(where, f"invalid host {h!r}")
    if delegate_vs and gateways:
        iss.error(f.join(path, "gateways"), "delegate virtual service must not have gateways")
    http: list[HTTPRoute] = []
    for p, item in f.items(iss, f.get_list(iss, spec, "http", path), f.join(path, "http")):
        r = _http_route(iss, item, p, delegate_vs=delegate_vs)
        if r is not None:
            http.append(r)
    tcp = _l4_routes(iss, spec, "tcp", path)
    tls = _l4_routes(iss, spec, "tls", path)
    if delegate_vs and (tcp or tls):
        iss.error(path, "delegate virtual service supports HTTP routes only")
    if not (http or tcp or tls) and not iss.failed:
        iss.error(path, "http, tcp or tls must be provided in a virtual service")
    export_to = f.get_str_list(iss, spec, "exportTo", path)
    for i, e in enumerate(export_to):
        if e not in ("*", ".", "~") and not f.is_dns1123_label(e):
            iss.error(
                f"{f.join(path, 'exportTo')}[{i}]", f"{e!r} is not '*', '.', '~' or a namespace"
            )
    if "~" in export_to and len(export_to) > 1:
        iss.error(f.join(path, "exportTo"), "'~' cannot be combined with other values")
    if iss.failed:
        return None
    return VirtualService(
        hosts=tuple(hosts),
        gateways=gateways,
        http=tuple(http),
        tcp=tcp,
        tls=tls,
        export_to=tuple(export_to),
    )
