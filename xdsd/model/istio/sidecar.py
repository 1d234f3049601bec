"""Sidecar (networking.istio.io): typed and validated.

Validation follows istiod's ValidateSidecar (pkg/config/validation/validation.go:
validateSidecarEgressPortBindAndCaptureMode, validateSidecarIngressPortAndBind,
validateSidecarOutboundTrafficPolicy, agent.ValidateNamespaceSlashWildcardHostname).
Fields we accept but do not translate are reported as warnings naming their path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.protocol import parse_protocol
from xdsd.model.types import ObjectRef, Protocol, frozen_map

UNSUPPORTED = "not supported yet (ignored)"
UNIX_PREFIX = "unix://"
CAPTURE_MODES = ("DEFAULT", "IPTABLES", "NONE")
OUTBOUND_MODES = ("REGISTRY_ONLY", "ALLOW_ANY")
# Istio protocol names a Sidecar port may carry (protocol.Parse); HTTP_PROXY is Sidecar-only.
_PROTOCOLS = frozenset(
    {"http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "udp"}
)


@dataclass(frozen=True)
class ConnectionPool:
    """Sidecar connection pool settings, checked for shape only (not translated yet)."""

    spec: Mapping[str, Any]


_POOL_FIELDS = {
    "tcp": frozenset(
        {"maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration", "idleTimeout"}
    ),
    "http": frozenset(
        {
            "http1MaxPendingRequests",
            "http2MaxRequests",
            "maxRequestsPerConnection",
            "maxRetries",
            "idleTimeout",
            "h2UpgradePolicy",
            "useClientProtocol",
            "maxConcurrentStreams",
        }
    ),
}
_DURATION_FIELDS = frozenset({"connectTimeout", "maxConnectionDuration", "idleTimeout"})


def _connection_pool(iss: Issues, spec: Mapping[str, Any], path: str) -> ConnectionPool:
    """Shape checks as istiod validateConnectionPool: known sections, non-negative
    integers, duration strings; everything else is an error or an unknown-field warning."""
    _unknown(iss, spec, path, frozenset(_POOL_FIELDS))
    for section, known in _POOL_FIELDS.items():
        raw = f.get_map(iss, spec, section, path)
        if raw is None:
            continue
        sp = f.join(path, section)
        _unknown(iss, raw, sp, known)
        for key, value in raw.items():
            where = f.join(sp, str(key))
            if key in _DURATION_FIELDS:
                if not isinstance(value, str) or not value[:1].isdigit():
                    iss.error(where, "must be a duration such as '1s'")
            elif key == "h2UpgradePolicy":
                if value not in ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"):
                    iss.error(where, "must be one of DEFAULT, DO_NOT_UPGRADE, UPGRADE")
            elif key == "useClientProtocol":
                f.get_bool(iss, raw, key, sp)
            elif key == "tcpKeepalive":
                f.get_map(iss, raw, key, sp)
            elif key in known:
                f.get_int(iss, raw, key, sp, lo=0, hi=2**31 - 1)
    return ConnectionPool(spec)


@dataclass(frozen=True)
class SidecarPort:
    number: int  # 0: a unix domain socket listener (egress only)
    protocol: Protocol  # AUTO when unset (istiod protocol.Parse("") = Unsupported -> sniffing)
    name: str = ""
    http_proxy: bool = False  # protocol HTTP_PROXY


@dataclass(frozen=True)
class EgressHost:
    """One `NS/HOST` import. `namespace` is "*", "." or a name; `excluded` for `~NS/HOST`."""

    namespace: str
    host: str
    excluded: bool = False


@dataclass(frozen=True)
class EgressListener:
    port: SidecarPort | None  # None: the catch-all listener (every service port)
    bind: str
    capture_mode: str  # DEFAULT, IPTABLES, NONE
    hosts: tuple[EgressHost, ...]


@dataclass(frozen=True)
class IngressListener:
    port: SidecarPort
    bind: str
    capture_mode: str
    default_endpoint: str  # "127.0.0.1:PORT", "0.0.0.0:PORT", "[::1]:PORT", "unix://..." or ""
    connection_pool: ConnectionPool | None = None


@dataclass(frozen=True)
class EgressProxy:
    host: str
    port: int | None
    subset: str = ""


@dataclass(frozen=True)
class OutboundTrafficPolicy:
    mode: str  # REGISTRY_ONLY or ALLOW_ANY
    egress_proxy: EgressProxy | None = None


@dataclass(frozen=True)
class Sidecar:
    workload_selector: Mapping[str, str] | None  # None: applies to the whole namespace
    egress: tuple[EgressListener, ...]
    ingress: tuple[IngressListener, ...]
    outbound_traffic_policy: OutboundTrafficPolicy | None
    inbound_connection_pool: ConnectionPool | None = None


def _unknown(iss: Issues, spec: Mapping[str, Any], path: str, known: frozenset[str]) -> None:
    for key in spec:
        if key not in known:
            iss.warn(f.join(path, str(key)), "unknown field (ignored)")


def _enum(
    iss: Issues, spec: Mapping[str, Any], key: str, path: str, values: tuple[str, ...]
) -> str:
    text = f.get_str(iss, spec, key, path)
    if text is None:
        return values[0]
    if text not in values:
        iss.error(f.join(path, key), f"{text!r} must be one of {', '.join(values)}")
        return values[0]
    return text


def _port(
    iss: Issues, spec: Mapping[str, Any], path: str, *, allow_zero: bool
) -> SidecarPort | None:
    raw = f.get_map(iss, spec, "port", path)
    if raw is None:
        return None
    pp = f.join(path, "port")
    _unknown(iss, raw, pp, frozenset({"number", "protocol", "name", "targetPort"}))
    number = f.get_int(iss, raw, "number", pp, lo=0 if allow_zero else 1, hi=65535)
    if number is None and "number" not in raw:
        if allow_zero:
            number = 0  # proto3 default: a unix domain socket listener
        else:
            iss.error(f.join(pp, "number"), "is required")
    name = f.get_str(iss, raw, "name", pp) or ""
    if name and not f.is_dns1123_label(name):
        iss.error(f.join(pp, "name"), f"{name!r} must be a DNS-1123 label")
    text = f.get_str(iss, raw, "protocol", pp) or ""
    protocol = Protocol.AUTO
    http_proxy = False
    if text:
        if text.upper() == "HTTP_PROXY":
            http_proxy = True
            protocol = Protocol.HTTP
        elif text.lower() not in _PROTOCOLS:
            iss.error(f.join(pp, "protocol"), f"unrecognized protocol {text!r}")
        else:
            protocol = parse_protocol(text)
    if raw.get("targetPort") is not None:
        iss.error(f.join(pp, "targetPort"), "targetPort has no impact on Sidecars")
    if number is None:
        return None
    return SidecarPort(number, protocol, name, http_proxy)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _unix_path_ok(path: str) -> bool:
    # istiod ValidateUnixAddress: non-empty, absolute-ish path, no NUL.
    return bool(path) and "\x00" not in path and len(path) <= 108


def _host_part_ok(host: str) -> str | None:
    """The problem with the DNS part of an egress host (None when fine)."""
    if host != "*" and "." not in host:
        return "short names (non FQDN) are not allowed"
    if host == "*":
        return None
    if "*" in host[1:] or (host.startswith("*") and not host.startswith("*.")):
        return "partial wildcard is not allowed"
    if not f.is_hostname(host, wildcard=True):
        return f"{host!r} is not a valid domain name"
    return None


def _egress_hosts(iss: Issues, spec: Mapping[str, Any], path: str) -> tuple[EgressHost, ...]:
    where = f.join(path, "hosts")
    values = f.get_str_list(iss, spec, "hosts", path)
    if not values:
        iss.error(where, "egress listener must contain at least one host")
    out: list[EgressHost] = []
    seen: set[tuple[str, str]] = set()
    for i, h in enumerate(values):
        hp = f"{where}[{i}]"
        if h.count("/") != 1:
            iss.error(hp, f"{h!r}: host must be of form namespace/dnsName")
            continue
        ns, host = h.split("/", 1)
        if not ns or not host:
            iss.error(hp, f"{h!r}: config namespace and dnsName in host entry cannot be empty")
            continue
        excluded = ns.startswith("~")
        bare = ns[1:] if excluded else ns
        if bare not in ("", "*", ".") and not f.is_dns1123_label(bare):
            iss.error(hp, f"invalid namespace value {ns!r} in sidecar")
            continue
        problem = _host_part_ok(host)
        if problem is not None:
            iss.error(hp, problem)
            continue
        if excluded:
            bare = bare or "*"
        elif (bare, host) in seen or (host != "*" and (bare, "*") in seen):
            iss.warn(hp, f"duplicated egress host: {h}")
        seen.add((bare, host))
        out.append(EgressHost(bare, host.lower(), excluded))
    if ("*", "*") in seen and len({ns for ns, _ in seen}) != 1:
        iss.warn(where, "`*/*` host select all resources, no other hosts can be added")
    return tuple(out)


def _egress(iss: Issues, spec: Mapping[str, Any], path: str) -> tuple[EgressListener, ...]:
    raw = f.get_list(iss, spec, "egress", path)
    where = f.join(path, "egress")
    out: list[EgressListener] = []
    ports: set[int] = set()
    sockets: set[str] = set()
    catch_all = False
    items = list(f.items(iss, raw, where))
    for index, (ep, e) in enumerate(items):
        _unknown(iss, e, ep, frozenset({"port", "bind", "captureMode", "hosts"}))
        port = _port(iss, e, ep, allow_zero=True)
        bind = f.get_str(iss, e, "bind", ep) or ""
        capture = _enum(iss, e, "captureMode", ep, CAPTURE_MODES)
        if e.get("port") is None:
            if catch_all:
                iss.error(ep, "sidecar: egress can have only one listener with empty port")
                continue
            if index != len(items) - 1:
                iss.error(
                    ep, "sidecar: the egress listener with empty port should be the last listener"
                )
            catch_all = True
            if bind and not _is_ip(bind):
                iss.error(f.join(ep, "bind"), f"{bind!r} is not a valid IP address")
        elif port is not None:
            if port.number == 0:
                if not bind.startswith(UNIX_PREFIX):
                    iss.error(
                        f.join(ep, "bind"),
                        "sidecar: ports with 0 value must have a unix domain socket bind address",
                    )
                elif not _unix_path_ok(bind[len(UNIX_PREFIX) :]):
                    iss.error(f.join(ep, "bind"), f"{bind!r} is not a valid unix address")
                if capture == "IPTABLES":
                    iss.error(
                        f.join(ep, "captureMode"),
                        "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
                    )
                if bind in sockets:
                    iss.error(
                        f.join(ep, "bind"),
                        "sidecar: unix domain socket values for listeners must be unique",
                    )
                sockets.add(bind)
                iss.warn(f.join(ep, "bind"), f"unix domain socket egress listeners {UNSUPPORTED}")
            else:
                if bind and not _is_ip(bind):
                    iss.error(f.join(ep, "bind"), f"{bind!r} is not a valid IP address")
                if port.number in ports:
                    iss.error(
                        f.join(f.join(ep, "port"), "number"),
                        "sidecar: ports on IP bound listeners must be unique",
                    )
                ports.add(port.number)
            if port.http_proxy:
                iss.warn(f.join(f.join(ep, "port"), "protocol"), f"HTTP_PROXY {UNSUPPORTED}")
        hosts = _egress_hosts(iss, e, ep)
        out.append(
            EgressListener(port if e.get("port") is not None else None, bind, capture, hosts)
        )
    return tuple(out)


def _default_endpoint(iss: Issues, value: str, where: str) -> None:
    if value.startswith(UNIX_PREFIX):
        if not _unix_path_ok(value[len(UNIX_PREFIX) :]):
            iss.error(where, f"{value!r} is not a valid unix address")
        return
    host, sep, port = value.rpartition(":")
    if not sep:
        iss.error(where, f"{value!r}: missing port in address")
        return
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host not in ("", "127.0.0.1", "0.0.0.0", "::1", "::"):
        iss.error(
            where,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,"
            "[::1]:port,[::]:port,unix://filepath or unset",
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        iss.error(where, f"sidecar: defaultEndpoint port ({port}) must be a number in 1..65535")


def _ingress(iss: Issues, spec: Mapping[str, Any], path: str) -> tuple[IngressListener, ...]:
    where = f.join(path, "ingress")
    out: list[IngressListener] = []
    ports: set[int] = set()
    for ip, i in f.items(iss, f.get_list(iss, spec, "ingress", path), where):
        _unknown(
            iss,
            i,
            ip,
            frozenset({"port", "bind", "captureMode", "defaultEndpoint", "tls", "connectionPool"}),
        )
        if i.get("port") is None:
            iss.error(f.join(ip, "port"), "sidecar: port is required for ingress listeners")
            continue
        port = _port(iss, i, ip, allow_zero=False)
        bind = f.get_str(iss, i, "bind", ip) or ""
        if bind and not _is_ip(bind):
            iss.error(f.join(ip, "bind"), f"{bind!r} is not a valid IP address")
        capture = _enum(iss, i, "captureMode", ip, CAPTURE_MODES)
        endpoint = f.get_str(iss, i, "defaultEndpoint", ip) or ""
        if endpoint:
            _default_endpoint(iss, endpoint, f.join(ip, "defaultEndpoint"))
        tls = f.get_map(iss, i, "tls", ip)
        if tls is not None:
            # istiod applies ingress TLS only with ENABLE_TLS_ON_SIDECAR_INGRESS (off by default).
            iss.warn(f.join(ip, "tls"), UNSUPPORTED)
            if port is not None and port.protocol not in (Protocol.HTTPS, Protocol.TLS):
                iss.error(
                    f.join(ip, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports"
                )
        pool: ConnectionPool | None = None
        raw_pool = f.get_map(iss, i, "connectionPool", ip)
        if raw_pool is not None:
            pool = _connection_pool(iss, raw_pool, f.join(ip, "connectionPool"))
            iss.warn(f.join(ip, "connectionPool"), UNSUPPORTED)
        if port is None:
            continue
        if port.number in ports:
            iss.error(
                f.join(f.join(ip, "port"), "number"),
                "sidecar: ports on IP bound listeners must be unique",
            )
        ports.add(port.number)
        if port.http_proxy:
            iss.error(
                f.join(f.join(ip, "port"), "protocol"),
                "HTTP_PROXY is only valid for egress listeners",
            )
        out.append(IngressListener(port, bind, capture, endpoint, pool))
    return tuple(out)


def _outbound(iss: Issues, spec: Mapping[str, Any], path: str) -> OutboundTrafficPolicy | None:
    raw = f.get_map(iss, spec, "outboundTrafficPolicy", path)
    if raw is None:
        return None
    op = f.join(path, "outboundTrafficPolicy")
    _unknown(iss, raw, op, frozenset({"mode", "egressProxy"}))
    text = f.get_str(iss, raw, "mode", op)
    mode = "REGISTRY_ONLY"  # proto3 default (enum value 0)
    if text is not None:
        if text == "ALLOW_ANY_DYNAMIC_DNS":
            iss.error(
                f.join(op, "mode"),
                "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig",
            )
        elif text not in OUTBOUND_MODES:
            iss.error(f.join(op, "mode"), f"{text!r} must be one of {', '.join(OUTBOUND_MODES)}")
        else:
            mode = text
    proxy: EgressProxy | None = None
    raw_proxy = f.get_map(iss, raw, "egressProxy", op)
    if raw_proxy is not None:
        pp = f.join(op, "egressProxy")
        _unknown(iss, raw_proxy, pp, frozenset({"host", "subset", "port"}))
        if mode != "ALLOW_ANY":
            iss.error(
                pp,
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
            )
        host = f.get_str(iss, raw_proxy, "host", pp, required=True) or ""
        if host and not f.is_hostname(host):
            iss.error(f.join(pp, "host"), f"{host!r} is not a valid FQDN")
        number: int | None = None
        raw_port = f.get_map(iss, raw_proxy, "port", pp)
        if raw_port is None:
            iss.error(f.join(pp, "port"), "sidecar: egress_proxy port must be non-nil")
        else:
            number = f.get_port(iss, raw_port, "number", f.join(pp, "port"), required=True)
        subset = f.get_str(iss, raw_proxy, "subset", pp) or ""
        proxy = EgressProxy(host, number, subset)
        iss.warn(pp, UNSUPPORTED)
    return OutboundTrafficPolicy(mode, proxy)


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> Sidecar | None:
    _unknown(
        iss,
        spec,
        path,
        frozenset(
            {
                "workloadSelector",
                "egress",
                "ingress",
                "outboundTrafficPolicy",
                "inboundConnectionPool",
            }
        ),
    )
    selector: Mapping[str, str] | None = None
    raw_sel = f.get_map(iss, spec, "workloadSelector", path)
    if raw_sel is not None:
        sp = f.join(path, "workloadSelector")
        _unknown(iss, raw_sel, sp, frozenset({"labels"}))
        labels = f.get_str_map(iss, raw_sel, "labels", sp)
        if not labels:
            iss.warn(sp, "has no labels: the Sidecar applies to all workloads in the namespace")
        for k, v in labels.items():
            if not k or "*" in k or "*" in v:
                iss.error(f.join(f.join(sp, "labels"), k), "wildcards are not allowed in labels")
        selector = frozen_map(labels)
    egress = _egress(iss, spec, path)
    ingress = _ingress(iss, spec, path)
    outbound = _outbound(iss, spec, path)
    pool: ConnectionPool | None = None
    raw_pool = f.get_map(iss, spec, "inboundConnectionPool", path)
    if raw_pool is not None:
        pool = _connection_pool(iss, raw_pool, f.join(path, "inboundConnectionPool"))
        iss.warn(f.join(path, "inboundConnectionPool"), UNSUPPORTED)
    if not egress and not ingress and outbound is None and raw_pool is None:
        iss.error(path, "sidecar: empty configuration provided")
    return Sidecar(selector, egress, ingress, outbound, pool)
