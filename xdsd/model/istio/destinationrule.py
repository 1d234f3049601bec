"""DestinationRule (networking.istio.io): typed and validated.

Validation follows istiod's (pkg/config/validation: ValidateDestinationRule,
validateTrafficPolicy, validateConnectionPool, validateOutlierDetection,
validateLoadBalancer, agent.ValidateTLS, agent.ValidateLocalityLbSetting,
validateExportTo, validateWorkloadSelector). Fields we do not translate yet are
accepted with a warning naming their path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.types import ObjectRef, frozen_map

UNSUPPORTED = "not supported yet (ignored)"

SIMPLE_LB = ("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN")
TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
H2_UPGRADE = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
_TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)
MAX_U32 = 2**32 - 1
MAX_I32 = 2**31 - 1


# ------------------------------------------------------------------ typed values


@dataclass(frozen=True)
class TcpKeepalive:
    probes: int | None = None
    time_s: int | None = None
    interval_s: int | None = None


@dataclass(frozen=True)
class TcpSettings:
    max_connections: int | None = None
    connect_timeout_ns: int | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration_ns: int | None = None
    idle_timeout_ns: int | None = None


@dataclass(frozen=True)
class HttpSettings:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout_ns: int | None = None
    h2_upgrade_policy: str = "DEFAULT"
    max_concurrent_streams: int | None = None
    use_client_protocol: bool = False


@dataclass(frozen=True)
class ConnectionPool:
    tcp: TcpSettings | None = None
    http: HttpSettings | None = None


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    interval_ns: int | None = None
    base_ejection_time_ns: int | None = None
    max_ejection_percent: int = 0
    min_health_percent: int = 0
    split_external_local_origin_errors: bool = False


@dataclass(frozen=True)
class HttpCookie:
    name: str
    path: str = ""
    ttl_ns: int | None = None


@dataclass(frozen=True)
class ConsistentHash:
    # Exactly one hash key: "header", "cookie", "source_ip", "query".
    key: str
    header_name: str = ""
    cookie: HttpCookie | None = None
    query_parameter: str = ""
    # None (default ring hash, minimum ring size 1024), "ring_hash" or "maglev".
    algorithm: str | None = None
    minimum_ring_size: int = 0
    maglev_table_size: int = 0


@dataclass(frozen=True)
class Distribute:
    from_: str
    to: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class LocalityLb:
    enabled: bool | None = None
    distribute: tuple[Distribute, ...] = ()
    failover: tuple[tuple[str, str], ...] = ()
    failover_priority: tuple[str, ...] = ()


@dataclass(frozen=True)
class Warmup:
    duration_ns: int
    minimum_percent: float | None = None
    aggression: float | None = None


@dataclass(frozen=True)
class LoadBalancer:
    simple: str | None = None
    consistent_hash: ConsistentHash | None = None
    locality: LocalityLb | None = None
    warmup: Warmup | None = None


@dataclass(frozen=True)
class ClientTls:
    mode: str = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    sni: str = ""
    # None = unset (ISTIO_MUTUAL then uses the service's accounts), () = set empty.
    subject_alt_names: tuple[str, ...] | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class PortPolicy:
    """A portLevelSettings entry: replaces the top-level policy on that port (no inheritance)."""

    port: int
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None
    port_level: tuple[PortPolicy, ...] = ()


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    host: str  # as written (short names are resolved against the rule's namespace later)
    subsets: tuple[Subset, ...] = ()
    traffic_policy: TrafficPolicy | None = None
    export_to: tuple[str, ...] = ()
    workload_selector: Mapping[str, str] | None = None


# ------------------------------------------------------------------ readers


# Durations are validated once for every kind (xdsd.model.fields); DR keeps nanoseconds.
parse_duration = f.parse_duration_ns
_duration = f.duration_ns


def _number(iss: Issues, parent: Mapping[str, Any], key: str, path: str) -> float | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        iss.error(f.join(path, key), f"must be a number, not a {f.type_name(value)}")
        return None
    return float(value)


def _enum(
    iss: Issues, parent: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...]
) -> str | None:
    value = f.get_str(iss, parent, key, path)
    if value is None:
        return None
    if value not in allowed:
        iss.error(f.join(path, key), f"{value!r} is not one of {', '.join(allowed)}")
        return None
    return value


def _warn_unknown(
    iss: Issues,
    spec: Mapping[str, Any],
    path: str,
    known: frozenset[str],
    unsupported: frozenset[str],
) -> None:
    for key in spec:
        if key in unsupported:
            iss.warn(f.join(path, key), UNSUPPORTED)
        elif key not in known:
            iss.warn(f.join(path, str(key)), "unknown field (ignored)")


def _int_field(
    iss: Issues, parent: Mapping[str, Any], key: str, path: str, hi: int = MAX_I32
) -> int | None:
    value = parent.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        iss.error(f.join(path, key), "must be non-negative")
        return None
    return f.get_int(iss, parent, key, path, lo=0, hi=hi)


# ------------------------------------------------------------------ traffic policy


def _tcp(iss: Issues, spec: Mapping[str, Any], path: str) -> TcpSettings:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset(
            {
                "maxConnections",
                "connectTimeout",
                "tcpKeepalive",
                "maxConnectionDuration",
                "idleTimeout",
            }
        ),
        frozenset(),
    )
    ka = None
    raw_ka = f.get_map(iss, spec, "tcpKeepalive", path)
    if raw_ka is not None:
        kp = f.join(path, "tcpKeepalive")
        _warn_unknown(iss, raw_ka, kp, frozenset({"probes", "time", "interval"}), frozenset())
        t = _duration(iss, raw_ka, "time", kp)
        i = _duration(iss, raw_ka, "interval", kp)
        ka = TcpKeepalive(
            probes=_int_field(iss, raw_ka, "probes", kp, MAX_U32),
            time_s=None if t is None else t // 1_000_000_000,
            interval_s=None if i is None else i // 1_000_000_000,
        )
    return TcpSettings(
        max_connections=_int_field(iss, spec, "maxConnections", path),
        connect_timeout_ns=_duration(iss, spec, "connectTimeout", path),
        tcp_keepalive=ka,
        max_connection_duration_ns=_duration(iss, spec, "maxConnectionDuration", path),
        idle_timeout_ns=_duration(iss, spec, "idleTimeout", path, allow_zero=True),
    )


def _http(iss: Issues, spec: Mapping[str, Any], path: str) -> HttpSettings:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset(
            {
                "http1MaxPendingRequests",
                "http2MaxRequests",
                "maxRequestsPerConnection",
                "maxRetries",
                "idleTimeout",
                "h2UpgradePolicy",
                "maxConcurrentStreams",
                "useClientProtocol",
            }
        ),
        frozenset({"http2KeepAlive"}),
    )
    h2 = _enum(iss, spec, "h2UpgradePolicy", path, H2_UPGRADE) or "DEFAULT"
    use_client = bool(f.get_bool(iss, spec, "useClientProtocol", path))
    if h2 == "UPGRADE" and use_client:
        iss.error(
            f.join(path, "useClientProtocol"),
            "use client protocol must not be true when h2UpgradePolicy is UPGRADE",
        )
    return HttpSettings(
        http1_max_pending_requests=_int_field(iss, spec, "http1MaxPendingRequests", path),
        http2_max_requests=_int_field(iss, spec, "http2MaxRequests", path),
        max_requests_per_connection=_int_field(iss, spec, "maxRequestsPerConnection", path),
        max_retries=_int_field(iss, spec, "maxRetries", path),
        idle_timeout_ns=_duration(iss, spec, "idleTimeout", path),
        h2_upgrade_policy=h2,
        max_concurrent_streams=_int_field(iss, spec, "maxConcurrentStreams", path),
        use_client_protocol=use_client,
    )


def _connection_pool(iss: Issues, spec: Mapping[str, Any], path: str) -> ConnectionPool:
    _warn_unknown(iss, spec, path, frozenset({"tcp", "http"}), frozenset())
    tcp = f.get_map(iss, spec, "tcp", path)
    http = f.get_map(iss, spec, "http", path)
    if tcp is None and http is None:
        iss.error(path, "connection pool must have at least one field (tcp or http)")
    return ConnectionPool(
        tcp=None if tcp is None else _tcp(iss, tcp, f.join(path, "tcp")),
        http=None if http is None else _http(iss, http, f.join(path, "http")),
    )


def _percent(iss: Issues, spec: Mapping[str, Any], key: str, path: str) -> int:
    value = spec.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 100:
        iss.error(f.join(path, key), "percentage must be in range 0..100")
        return 0
    return f.get_int(iss, spec, key, path, lo=0, hi=100) or 0


def _outlier(iss: Issues, spec: Mapping[str, Any], path: str) -> OutlierDetection:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset(
            {
                "consecutive5xxErrors",
                "consecutiveGatewayErrors",
                "consecutiveLocalOriginFailures",
                "interval",
                "baseEjectionTime",
                "maxEjectionPercent",
                "minHealthPercent",
                "splitExternalLocalOriginErrors",
            }
        ),
        frozenset({"consecutiveErrors", "outlierDetectionHttpErrorCodes"}),
    )
    split = bool(f.get_bool(iss, spec, "splitExternalLocalOriginErrors", path))
    local = _int_field(iss, spec, "consecutiveLocalOriginFailures", path, MAX_U32)
    if local and not split:
        iss.error(
            f.join(path, "consecutiveLocalOriginFailures"),
            "is set, but splitExternalLocalOriginErrors is false",
        )
    return OutlierDetection(
        consecutive_5xx_errors=_int_field(iss, spec, "consecutive5xxErrors", path, MAX_U32),
        consecutive_gateway_errors=_int_field(iss, spec, "consecutiveGatewayErrors", path, MAX_U32),
        consecutive_local_origin_failures=local,
        interval_ns=_duration(iss, spec, "interval", path),
        base_ejection_time_ns=_duration(iss, spec, "baseEjectionTime", path),
        max_ejection_percent=_percent(iss, spec, "maxEjectionPercent", path),
        min_health_percent=_percent(iss, spec, "minHealthPercent", path),
        split_external_local_origin_errors=split,
    )


def _is_prime(x: int) -> bool:
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % k for k in range(3, math.isqrt(x) + 1, 2))


def _consistent_hash(iss: Issues, spec: Mapping[str, Any], path: str) -> ConsistentHash | None:
    keys = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset({*keys, "ringHash", "maglev", "minimumRingSize"}),
        frozenset(),
    )
    present = [k for k in keys if spec.get(k) not in (None, "", False)]
    if len(present) > 1:
        iss.error(path, f"only one hash key may be set, found {', '.join(present)}")
        return None
    algorithm: str | None = None
    ring = 0
    table = 0
    if spec.get("ringHash") is not None and spec.get("maglev") is not None:
        iss.error(path, "only one of ringHash or maglev may be set")
    raw_ring = f.get_map(iss, spec, "ringHash", path)
    if raw_ring is not None:
        rp = f.join(path, "ringHash")
        _warn_unknown(iss, raw_ring, rp, frozenset({"minimumRingSize"}), frozenset())
        algorithm = "ring_hash"
        ring = f.get_int(iss, raw_ring, "minimumRingSize", rp, lo=0, hi=2**63 - 1) or 0
    raw_maglev = f.get_map(iss, spec, "maglev", path)
    if raw_maglev is not None:
        mp = f.join(path, "maglev")
        _warn_unknown(iss, raw_maglev, mp, frozenset({"tableSize"}), frozenset())
        algorithm = "maglev"
        table = f.get_int(iss, raw_maglev, "tableSize", mp, lo=0, hi=2**63 - 1) or 0
        where = f.join(mp, "tableSize")
        if table == 0:
            iss.error(where, "tableSize must be set for maglev")
        elif table >= 5000011:
            iss.error(where, "tableSize must be less than 5000011 for maglev")
        elif not _is_prime(table):
            iss.error(where, "tableSize must be a prime number for maglev")
    min_ring = f.get_int(iss, spec, "minimumRingSize", path, lo=0, hi=2**63 - 1) or 0
    if min_ring:
        iss.warn(
            f.join(path, "minimumRingSize"),
            "is deprecated, use ringHash.minimumRingSize instead",
        )
        if algorithm is not None:
            iss.error(path, "only one of minimumRingSize or maglev/ringHash can be specified")
        ring = min_ring
    if not present:
        iss.error(
            path,
            "one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required",
        )
        return None
    key = present[0]
    if key == "httpHeaderName":
        name = f.get_str(iss, spec, key, path) or ""
        return ConsistentHash(
            "header",
            header_name=name,
            algorithm=algorithm,
            minimum_ring_size=ring,
            maglev_table_size=table,
        )
    if key == "httpQueryParameterName":
        name = f.get_str(iss, spec, key, path) or ""
        return ConsistentHash(
            "query",
            query_parameter=name,
            algorithm=algorithm,
            minimum_ring_size=ring,
            maglev_table_size=table,
        )
    if key == "useSourceIp":
        f.get_bool(iss, spec, key, path)
        return ConsistentHash(
            "source_ip", algorithm=algorithm, minimum_ring_size=ring, maglev_table_size=table
        )
    raw_cookie = f.get_map(iss, spec, "httpCookie", path)
    if raw_cookie is None:
        return None
    cp = f.join(path, "httpCookie")
    _warn_unknown(
        iss, raw_cookie, cp, frozenset({"name", "path", "ttl"}), frozenset({"attributes"})
    )
    cookie_name = f.get_str(iss, raw_cookie, "name", cp)
    if cookie_name is None:
        iss.error(f.join(cp, "name"), "name required for httpCookie")
        return None
    cookie = HttpCookie(
        name=cookie_name,
        path=f.get_str(iss, raw_cookie, "path", cp) or "",
        ttl_ns=_duration(iss, raw_cookie, "ttl", cp, allow_zero=True),
    )
    return ConsistentHash(
        "cookie",
        cookie=cookie,
        algorithm=algorithm,
        minimum_ring_size=ring,
        maglev_table_size=table,
    )


def _is_locality(value: str) -> bool:
    """region[/zone[/subzone]]; "*" only as a whole, last segment (istiod validateLocalities)."""
    parts = value.split("/")
    if len(parts) > 3 or not all(parts):
        return False
    return all("*" not in p for p in parts[:-1]) and ("*" not in parts[-1] or parts[-1] == "*")


def _locality(iss: Issues, spec: Mapping[str, Any], path: str, has_outlier: bool) -> LocalityLb:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset({"enabled", "distribute", "failover", "failoverPriority"}),
        frozenset(),
    )
    enabled = f.get_bool(iss, spec, "enabled", path)
    distribute: list[Distribute] = []
    dpath = f.join(path, "distribute")
    for where, d in f.items(iss, f.get_list(iss, spec, "distribute", path), dpath):
        _warn_unknown(iss, d, where, frozenset({"from", "to"}), frozenset())
        src = f.get_str(iss, d, "from", where, required=True) or ""
        if src and not _is_locality(src):
            iss.error(f.join(where, "from"), f"{src!r} is not a locality (region/zone/subzone)")
        raw_to = f.get_map(iss, d, "to", where, required=True) or {}
        tp = f.join(where, "to")
        to: list[tuple[str, int]] = []
        total = 0
        for loc in raw_to:
            if not isinstance(loc, str) or not _is_locality(loc):
                iss.error(tp, f"{loc!r} is not a locality (region/zone/subzone)")
                continue
            weight = f.get_int(iss, raw_to, loc, tp, lo=1, hi=100)
            if weight is None:
                continue
            total += weight
            to.append((loc, weight))
        if to and total != 100:
            iss.error(tp, f"total locality weight {total} != 100")
        distribute.append(Distribute(src, tuple(to)))
    failover: list[tuple[str, str]] = []
    fpath = f.join(path, "failover")
    for where, fo in f.items(iss, f.get_list(iss, spec, "failover", path), fpath):
        _warn_unknown(iss, fo, where, frozenset({"from", "to"}), frozenset())
        src = f.get_str(iss, fo, "from", where, required=True) or ""
        dst = f.get_str(iss, fo, "to", where, required=True) or ""
        if src and src == dst:
            iss.error(where, "locality lb failover settings must specify different regions")
        if "/" in src or "/" in dst:
            iss.error(where, "locality lb failover only specify region")
        if "*" in src or "*" in dst:
            iss.error(where, "locality lb failover region should not contain '*' wildcard")
        failover.append((src, dst))
    priority = f.get_str_list(iss, spec, "failoverPriority", path)
    if distribute and failover:
        iss.error(path, "can not simultaneously specify 'distribute' and 'failover'")
    if failover and priority:
        for label in priority:
            if label in _TOPOLOGY_LABELS:
                iss.error(
                    f.join(path, "failoverPriority"),
                    f"can not simultaneously set 'failover' and topology label {label!r}",
                )
    if (failover or priority) and not has_outlier:
        iss.warn(path, "outlier detection policy must be provided for failover")
    return LocalityLb(enabled, tuple(distribute), tuple(failover), tuple(priority))


def _load_balancer(
    iss: Issues, spec: Mapping[str, Any], path: str, has_outlier: bool
) -> LoadBalancer:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset({"simple", "consistentHash", "localityLbSetting", "warmup"}),
        frozenset({"warmupDurationSecs", "zoneAwareLbSetting"}),
    )
    simple = _enum(iss, spec, "simple", path, SIMPLE_LB)
    raw_hash = f.get_map(iss, spec, "consistentHash", path)
    if simple is not None and raw_hash is not None:
        iss.error(path, "only one of simple or consistentHash may be set")
    ch = None
    if raw_hash is not None:
        ch = _consistent_hash(iss, raw_hash, f.join(path, "consistentHash"))
    loc = None
    raw_loc = f.get_map(iss, spec, "localityLbSetting", path)
    if raw_loc is not None:
        loc = _locality(iss, raw_loc, f.join(path, "localityLbSetting"), has_outlier)
    warm = None
    raw_warm = f.get_map(iss, spec, "warmup", path)
    if raw_warm is not None:
        wp = f.join(path, "warmup")
        _warn_unknown(
            iss, raw_warm, wp, frozenset({"duration", "minimumPercent", "aggression"}), frozenset()
        )
        dur = _duration(iss, raw_warm, "duration", wp)
        if dur is None and raw_warm.get("duration") is None:
            iss.error(f.join(wp, "duration"), "is required")
        minimum = _number(iss, raw_warm, "minimumPercent", wp)
        if minimum is not None and not 0 <= minimum <= 100:
            iss.error(f.join(wp, "minimumPercent"), "must be in range 0..100")
        aggression = _number(iss, raw_warm, "aggression", wp)
        if aggression is not None and aggression <= 0:
            iss.error(f.join(wp, "aggression"), "aggression should be greater than 0")
        if dur is not None:
            warm = Warmup(dur, minimum, aggression)
    return LoadBalancer(simple, ch, loc, warm)


_TLS_KEYS = frozenset(
    {
        "mode",
        "clientCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "sni",
        "subjectAltNames",
        "insecureSkipVerify",
    }
)


def _tls(iss: Issues, spec: Mapping[str, Any], path: str) -> ClientTls:
    _warn_unknown(iss, spec, path, _TLS_KEYS, frozenset({"caCrl"}))
    mode = _enum(iss, spec, "mode", path, TLS_MODES) or "DISABLE"
    sans: tuple[str, ...] | None = None
    if spec.get("subjectAltNames") is not None:
        sans = tuple(f.get_str_list(iss, spec, "subjectAltNames", path))
    tls = ClientTls(
        mode=mode,
        client_certificate=f.get_str(iss, spec, "clientCertificate", path) or "",
        private_key=f.get_str(iss, spec, "privateKey", path) or "",
        ca_certificates=f.get_str(iss, spec, "caCertificates", path) or "",
        credential_name=f.get_str(iss, spec, "credentialName", path) or "",
        sni=f.get_str(iss, spec, "sni", path) or "",
        subject_alt_names=sans,
        insecure_skip_verify=bool(f.get_bool(iss, spec, "insecureSkipVerify", path)),
    )
    if tls.credential_name.startswith("configmap://"):
        iss.warn(f.join(path, "credentialName"), "configmap:// credentials " + UNSUPPORTED)
    if tls.insecure_skip_verify:
        if mode == "SIMPLE" and (tls.ca_certificates or tls.credential_name or sans is not None):
            iss.error(
                path,
                "cannot specify caCertificates or credentialName or subjectAltNames "
                "when insecureSkipVerify is set true",
            )
        if mode == "MUTUAL" and (tls.ca_certificates or sans is not None):
            iss.error(
                path,
                "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is set true",
            )
    if mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
        if tls.client_certificate or tls.ca_certificates or tls.private_key:
            iss.error(
                path,
                "cannot specify client certificates or CA certificate if credentialName is set",
            )
    elif mode == "MUTUAL":
        if not tls.client_certificate:
            iss.error(
                f.join(path, "clientCertificate"), "client certificate required for mutual tls"
            )
        if not tls.private_key:
            iss.error(f.join(path, "privateKey"), "private key required for mutual tls")
    return tls


def _parts(
    iss: Issues, spec: Mapping[str, Any], path: str
) -> tuple[LoadBalancer | None, ConnectionPool | None, OutlierDetection | None, ClientTls | None]:
    raw_od = f.get_map(iss, spec, "outlierDetection", path)
    od = None if raw_od is None else _outlier(iss, raw_od, f.join(path, "outlierDetection"))
    raw_cp = f.get_map(iss, spec, "connectionPool", path)
    cp = None if raw_cp is None else _connection_pool(iss, raw_cp, f.join(path, "connectionPool"))
    raw_lb = f.get_map(iss, spec, "loadBalancer", path)
    lb = (
        None
        if raw_lb is None
        else _load_balancer(iss, raw_lb, f.join(path, "loadBalancer"), od is not None)
    )
    raw_tls = f.get_map(iss, spec, "tls", path)
    tls = None if raw_tls is None else _tls(iss, raw_tls, f.join(path, "tls"))
    return lb, cp, od, tls


def _port_policy(iss: Issues, spec: Mapping[str, Any], path: str) -> PortPolicy | None:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset({"port", "loadBalancer", "connectionPool", "outlierDetection", "tls"}),
        frozenset(),
    )
    raw_port = f.get_map(iss, spec, "port", path)
    number = None
    if raw_port is None:
        iss.error(f.join(path, "port"), "portTrafficPolicy must have valid port")
    else:
        pp = f.join(path, "port")
        _warn_unknown(iss, raw_port, pp, frozenset({"number"}), frozenset())
        number = f.get_port(iss, raw_port, "number", pp, required=True)
    lb, cp, od, tls = _parts(iss, spec, path)
    if lb is None and cp is None and od is None and tls is None:
        iss.error(path, "port traffic policy must have at least one field")
    if number is None:
        return None
    return PortPolicy(number, lb, cp, od, tls)


def _traffic_policy(iss: Issues, spec: Mapping[str, Any], path: str) -> TrafficPolicy:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset(
            {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings"}
        ),
        frozenset({"tunnel", "proxyProtocol", "retryBudget"}),
    )
    if not any(v is not None for v in spec.values()):
        iss.error(path, "traffic policy must have at least one field")
    lb, cp, od, tls = _parts(iss, spec, path)
    ports: list[PortPolicy] = []
    seen: set[int] = set()
    pl_path = f.join(path, "portLevelSettings")
    for where, item in f.items(iss, f.get_list(iss, spec, "portLevelSettings", path), pl_path):
        pp = _port_policy(iss, item, where)
        if pp is None:
            continue
        if pp.port in seen:
            # istiod uses the first entry for a port.
            iss.warn(where, f"port {pp.port} already has settings; this entry is ignored")
            continue
        seen.add(pp.port)
        ports.append(pp)
    return TrafficPolicy(lb, cp, od, tls, tuple(ports))


def _export_to(
    iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef, selector: bool
) -> tuple[str, ...]:
    values = f.get_str_list(iss, spec, "exportTo", path)
    where = f.join(path, "exportTo")
    seen: set[str] = set()
    for v in values:
        key = ref.namespace if v == "." else v
        if key in seen:
            iss.error(where, f"duplicate entries in exportTo: {v!r}")
        seen.add(key)
        if v not in (".", "*") and not f.is_dns1123_label(v):
            iss.error(where, f"{v!r} is not '.', '*' or a namespace name")
    if "*" in values and len(values) > 1:
        iss.error(where, "cannot have both public (*) and non-public exportTo values")
    if selector and values:
        if ref.namespace in seen:
            if len(seen) > 1:
                iss.error(
                    where,
                    "destination rule with workload selector cannot have "
                    "multiple entries in exportTo",
                )
        else:
            iss.error(
                where,
                "destination rule with workload selector cannot have exportTo "
                "beyond current namespace",
            )
    return tuple(values)


def parse(
    iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef
) -> DestinationRule | None:
    _warn_unknown(
        iss,
        spec,
        path,
        frozenset({"host", "subsets", "trafficPolicy", "exportTo", "workloadSelector"}),
        frozenset(),
    )
    host = f.get_str(iss, spec, "host", path, required=True)
    if host is not None and not f.is_hostname(host, wildcard=True):
        iss.error(f.join(path, "host"), f"{host!r} is not a valid host name")
    selector: Mapping[str, str] | None = None
    raw_sel = f.get_map(iss, spec, "workloadSelector", path)
    if raw_sel is not None:
        sp = f.join(path, "workloadSelector")
        _warn_unknown(iss, raw_sel, sp, frozenset({"matchLabels"}), frozenset())
        labels = f.get_str_map(iss, raw_sel, "matchLabels", sp)
        for k, v in labels.items():
            if not k or "*" in k or "*" in v:
                iss.error(f.join(sp, "matchLabels"), f"invalid selector {k}={v}")
        if not labels:
            iss.warn(sp, "workload selector specified without labels")
        selector = frozen_map(labels)
    tp = None
    raw_tp = f.get_map(iss, spec, "trafficPolicy", path)
    if raw_tp is not None:
        tp = _traffic_policy(iss, raw_tp, f.join(path, "trafficPolicy"))
    subsets: list[Subset] = []
    names: set[str] = set()
    sub_path = f.join(path, "subsets")
    for where, item in f.items(iss, f.get_list(iss, spec, "subsets", path), sub_path):
        _warn_unknown(iss, item, where, frozenset({"name", "labels", "trafficPolicy"}), frozenset())
        name = f.get_str(iss, item, "name", where, required=True)
        if name is not None:
            if not f.is_dns1123_label(name):
                iss.error(f.join(where, "name"), f"subset name is invalid: {name!r}")
            if name in names:
                iss.error(f.join(where, "name"), f"duplicate subset names: {name}")
            names.add(name)
        labels = f.get_str_map(iss, item, "labels", where)
        sub_tp = None
        raw_sub_tp = f.get_map(iss, item, "trafficPolicy", where)
        if raw_sub_tp is not None:
            sub_tp = _traffic_policy(iss, raw_sub_tp, f.join(where, "trafficPolicy"))
        if name is not None:
            subsets.append(Subset(name, frozen_map(labels), sub_tp))
    export_to = _export_to(iss, spec, path, ref, selector is not None)
    if host is None:
        return None
    return DestinationRule(host, tuple(subsets), tp, export_to, selector)
