"""Gateway (networking.istio.io): typed and validated.

Checks follow istiod's validation (pkg/config/validation/validation.go
ValidateGateway, validateServer, validateServerPort, validateServerBind,
validateTLSOptions; agent.ValidateNamespaceSlashWildcardHostname; the cipher
list of pkg/config/security). Every problem names its field path; an error
rejects the object (its last good version stays served). Fields and modes we
read but do not translate yet get a "not supported yet" warning.

Server hosts keep the written form ("ns/host", "./host", "*/host", "host"); the
gateway translation resolves "." against the Gateway's namespace as istiod's
sanitizeServerHostNamespace does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.types import ObjectRef

# ServerTLSSettings.TLSmode; the proto default (0) is PASSTHROUGH.
TLS_MODES = (
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
)
UNSUPPORTED_MODES: dict[str, str] = {}
# ServerTLSSettings.TLSProtocol, in enum order (Envoy's TlsParameters uses the same order).
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")

# istio pkg/config/protocol Parse (case-insensitive) -> canonical name.
PROTOCOLS = {
    "tcp": "TCP",
    "udp": "UDP",
    "grpc": "GRPC",
    "grpc-web": "GRPC-Web",
    "http": "HTTP",
    "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2",
    "https": "HTTPS",
    "tls": "TLS",
    "mongo": "Mongo",
    "redis": "Redis",
    "mysql": "MySQL",
}
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})

# pkg/config/security ValidCipherSuites.
VALID_CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
        "DES-CBC3-SHA",
    }
)

UNIX_PREFIX = "unix://"

_GATEWAY_KEYS = frozenset({"selector", "servers"})
_SERVER_KEYS = frozenset({"port", "bind", "hosts", "tls", "name"})
_SERVER_UNSUPPORTED = frozenset({"defaultEndpoint"})
_PORT_KEYS = frozenset({"number", "protocol", "name", "targetPort"})
_TLS_KEYS = frozenset(
    {
        "httpsRedirect",
        "mode",
        "serverCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "subjectAltNames",
        "minProtocolVersion",
        "maxProtocolVersion",
        "cipherSuites",
    }
)
_TLS_UNSUPPORTED = frozenset(
    {
        "credentialNames",
        "tlsCertificates",
        "caCertCredentialName",
        "caCrl",
        "verifyCertificateSpki",
        "verifyCertificateHash",
        "ecdhCurves",
        "insecureSkipVerify",
    }
)


@dataclass(frozen=True, slots=True)
class ServerPort:
    number: int
    name: str
    protocol: str  # canonical (PROTOCOLS values)

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def is_tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS


@dataclass(frozen=True, slots=True)
class ServerTLS:
    https_redirect: bool = False
    mode: str = "PASSTHROUGH"
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    min_protocol_version: str = "TLS_AUTO"
    max_protocol_version: str = "TLS_AUTO"
    cipher_suites: tuple[str, ...] = ()  # valid, deduplicated (istiod FilterCipherSuites)

    @property
    def is_passthrough(self) -> bool:
        return self.mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH")

    @property
    def requires_client_cert(self) -> bool:
        return self.mode in ("MUTUAL", "ISTIO_MUTUAL")

    @property
    def validates_client(self) -> bool:
        return self.mode in ("MUTUAL", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")


@dataclass(frozen=True, slots=True)
class Server:
    port: ServerPort
    hosts: tuple[str, ...]
    bind: str = ""
    tls: ServerTLS | None = None
    name: str = ""

    @property
    def is_passthrough(self) -> bool:
        return self.tls is not None and self.tls.is_passthrough

    @property
    def is_https_terminating(self) -> bool:
        """istio gateway.IsHTTPSServerWithTLSTermination."""
        return (
            self.tls is not None and self.port.protocol == "HTTPS" and not self.tls.is_passthrough
        )

    @property
    def is_http_server(self) -> bool:
        """istio gateway.IsHTTPServer: plain HTTP, or HTTPS with termination."""
        return self.port.is_http or self.is_https_terminating

    @property
    def is_tls_server(self) -> bool:
        """istio gateway.IsTLSServer: TLS settings on a non-HTTP port."""
        return self.tls is not None and not self.port.is_http


@dataclass(frozen=True)
class Gateway:
    # None: no selector (applies to every gateway proxy); else sorted label pairs.
    selector: tuple[tuple[str, str], ...] | None
    servers: tuple[Server, ...]

    def selects(self, labels: Mapping[str, str]) -> bool:
        if self.selector is None:
            return True
        return all(labels.get(k) == v for k, v in self.selector)


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


def _check_host_part(iss: Issues, host: str, where: str) -> None:
    """agent validateSidecarOrGatewayHostnamePart with isGateway=true."""
    if host != "*" and "." not in host:
        iss.error(where, f"short names (non FQDN) are not allowed: {host!r}")
        return
    if f.is_ip(host):
        return
    if "*" in host[1:] or (host.startswith("*") and host != "*" and not host.startswith("*.")):
        iss.error(where, f"partial wildcard {host!r} not allowed")
        return
    if not f.is_hostname(host, wildcard=True) or host.endswith("."):
        iss.error(where, f"invalid host {host!r}")


def _check_server_host(iss: Issues, host: str, where: str) -> None:
    """agent.ValidateNamespaceSlashWildcardHostname(host, isGateway=true)."""
    ns, sep, name = host.partition("/")
    if not sep:
        _check_host_part(iss, host, where)
        return
    if not ns or not name:
        iss.error(where, "config namespace and dnsName in host entry cannot be empty")
        return
    if ns not in ("*", ".") and not f.is_dns1123_label(ns):
        iss.error(where, f"invalid namespace value {ns!r} in gateway")
    if "/" in name:
        iss.error(where, f"invalid host {host!r}")
        return
    _check_host_part(iss, name, where)


def _port(iss: Issues, raw: Mapping[Any, Any], path: str, bind: str) -> ServerPort | None:
    m = f.get_map(iss, raw, "port", path, required=True)
    if m is None:
        return None
    p = f.join(path, "port")
    _keys(iss, m, p, _PORT_KEYS)
    unix = bind.startswith(UNIX_PREFIX)
    number = f.get_int(iss, m, "number", p, lo=0 if unix else 1, hi=65535, required=not unix)
    if unix and number:
        iss.error(f.join(p, "number"), "port number must be 0 for unix domain socket")
    proto_raw = f.get_str(iss, m, "protocol", p) or ""
    protocol = PROTOCOLS.get(proto_raw.lower())
    if protocol is None:
        iss.error(
            f.join(p, "protocol"),
            f"invalid protocol {proto_raw!r}, supported protocols are HTTP, HTTP2, GRPC, "
            "GRPC-WEB, MONGO, REDIS, MYSQL, TCP, HTTPS, TLS",
        )
    name = f.get_str(iss, m, "name", p)
    if name is None:
        iss.error(f.join(p, "name"), "port name must be set")
    if m.get("targetPort"):
        iss.error(f.join(p, "targetPort"), "targetPort has no impact on Gateways")
    if number is None or protocol is None or name is None:
        return None
    return ServerPort(number, name, protocol)


def _tls(iss: Issues, raw: Mapping[Any, Any], path: str) -> ServerTLS | None:
    m = f.get_map(iss, raw, "tls", path)
    if m is None:
        return None
    p = f.join(path, "tls")
    _keys(iss, m, p, _TLS_KEYS, _TLS_UNSUPPORTED)
    redirect = f.get_bool(iss, m, "httpsRedirect", p) or False
    mode = f.get_str(iss, m, "mode", p) or "PASSTHROUGH"
    if mode not in TLS_MODES:
        iss.error(f.join(p, "mode"), f"{mode!r} is not one of {', '.join(TLS_MODES)}")
    elif mode in UNSUPPORTED_MODES:
        iss.warn(
            f.join(p, "mode"),
            f"{mode} not supported yet ({UNSUPPORTED_MODES[mode]}): the server is left out",
        )
    cert = f.get_str(iss, m, "serverCertificate", p) or ""
    key = f.get_str(iss, m, "privateKey", p) or ""
    ca = f.get_str(iss, m, "caCertificates", p) or ""
    cred = f.get_str(iss, m, "credentialName", p) or ""
    sans = tuple(f.get_str_list(iss, m, "subjectAltNames", p))
    versions: list[str] = []
    for key_name in ("minProtocolVersion", "maxProtocolVersion"):
        v = f.get_str(iss, m, key_name, p) or "TLS_AUTO"
        if v not in TLS_VERSIONS:
            iss.error(f.join(p, key_name), f"{v!r} is not one of {', '.join(TLS_VERSIONS)}")
            v = "TLS_AUTO"
        versions.append(v)
    min_v, max_v = versions
    if (
        min_v != "TLS_AUTO"
        and max_v != "TLS_AUTO"
        and TLS_VERSIONS.index(min_v) > TLS_VERSIONS.index(max_v)
    ):
        iss.error(p, f"minProtocolVersion {min_v} is above maxProtocolVersion {max_v}")
    raw_ciphers = f.get_str_list(iss, m, "cipherSuites", p)
    ciphers: list[str] = []
    invalid: set[str] = set()
    dup: set[str] = set()
    for cs in raw_ciphers:
        valid = cs == "ALL" or not cs[0].isalnum() or cs in VALID_CIPHER_SUITES
        if not valid:
            invalid.add(cs)
        elif cs in ciphers:
            dup.add(cs)
        else:
            ciphers.append(cs)
    if invalid:
        iss.warn(f.join(p, "cipherSuites"), f"ignoring invalid cipher suites: {sorted(invalid)}")
    if dup:
        iss.warn(f.join(p, "cipherSuites"), f"ignoring duplicate cipher suites: {sorted(dup)}")
    if min_v in ("TLSV1_0", "TLSV1_1") and not raw_ciphers:
        iss.warn(
            f.join(p, "minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they "
            "no longer include compatible ciphers.",
        )
    if cred and not _valid_credential(cred):
        iss.error(f.join(p, "credentialName"), f"invalid credential name {cred!r}")

    if mode == "ISTIO_MUTUAL":
        for field, value in (
            ("serverCertificate", cert),
            ("privateKey", key),
            ("caCertificates", ca),
            ("credentialName", cred),
        ):
            if value:
                iss.error(f.join(p, field), f"ISTIO_MUTUAL TLS cannot have associated {field}")
    else:
        if mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH") and (cert or key or ca or cred):
            iss.warn(p, f"{mode} mode does not use certificates, they will be ignored")
        if cred and cert and key:
            iss.error(
                p,
                "only one of credential_name, credential_names, server_certificate/private_key, "
                "tls_certificates should be specified",
            )
        if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not cred:
            prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
            if mode != "SIMPLE" and not ca:
                iss.error(f.join(p, "caCertificates"), f"{prefix} requires a client CA bundle")
            if not cert:
                iss.error(f.join(p, "serverCertificate"), f"{prefix} requires a server certificate")
            if not key:
                iss.error(f.join(p, "privateKey"), f"{prefix} requires a private key")
    return ServerTLS(
        https_redirect=redirect,
        mode=mode,
        server_certificate=cert,
        private_key=key,
        ca_certificates=ca,
        credential_name=cred,
        subject_alt_names=sans,
        min_protocol_version=min_v,
        max_protocol_version=max_v,
        cipher_suites=tuple(ciphers),
    )


def _valid_credential(name: str) -> bool:
    """credentialName: a Secret name, optionally "kubernetes://[NS/]NAME"."""
    for prefix in ("kubernetes://",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            ns, sep, rest = name.partition("/")
            if sep:
                return f.is_dns1123_label(ns) and f.is_dns1123_subdomain(rest)
            return f.is_dns1123_subdomain(name)
    if "://" in name:
        return False
    return f.is_dns1123_subdomain(name)


def _server(iss: Issues, raw: Mapping[Any, Any], path: str) -> Server | None:
    before = len(iss.errors)
    _keys(iss, raw, path, _SERVER_KEYS, _SERVER_UNSUPPORTED)
    hosts = f.get_str_list(iss, raw, "hosts", path)
    if not hosts:
        iss.error(f.join(path, "hosts"), "server config must contain at least one host")
    for i, h in enumerate(hosts):
        _check_server_host(iss, h, f"{f.join(path, 'hosts')}[{i}]")
    bind = f.get_str(iss, raw, "bind", path) or ""
    if bind.startswith(UNIX_PREFIX):
        iss.warn(
            f.join(path, "bind"),
            "unix domain socket binds not supported yet: the server is left out",
        )
    elif bind and not f.is_ip(bind):
        iss.error(f.join(path, "bind"), f"{bind!r} is not an IP address")
    port = _port(iss, raw, path, bind)
    tls = _tls(iss, raw, path)
    name = f.get_str(iss, raw, "name", path) or ""
    if port is not None:
        if port.is_tls and tls is None:
            iss.error(f.join(path, "tls"), "server must have TLS settings for HTTPS/TLS protocols")
        elif not port.is_tls and tls is not None:
            if port.is_http:
                if (
                    not tls.is_passthrough
                    or tls.ca_certificates
                    or tls.private_key
                    or tls.server_certificate
                ):
                    iss.error(
                        f.join(path, "tls"),
                        "server cannot have TLS settings for plain text HTTP ports",
                    )
            else:
                iss.error(
                    f.join(path, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports"
                )
        if port.protocol == "UDP":
            iss.warn(f.join(path, "port"), "UDP servers not supported yet: the server is left out")
    if any(e.severity == "error" for e in iss.errors[before:]) or port is None:
        return None
    return Server(port=port, hosts=tuple(hosts), bind=bind, tls=tls, name=name)


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> Gateway | None:
    _keys(iss, spec, path, _GATEWAY_KEYS)
    if not f.is_dns1123_label(ref.name):
        meta = (
            f.join(path[: -len("spec")].rstrip("."), "metadata")
            if path.endswith("spec")
            else "metadata"
        )
        iss.error(
            f.join(meta, "name"), f"invalid gateway name: {ref.name!r} (a DNS-1123 label, no dots)"
        )
    selector: tuple[tuple[str, str], ...] | None = None
    if spec.get("selector") is not None:
        selector = tuple(sorted(f.get_str_map(iss, spec, "selector", path).items()))
    servers: list[Server] = []
    raw_servers = f.get_list(iss, spec, "servers", path)
    if not raw_servers:
        iss.error(f.join(path, "servers"), "gateway must have at least one server")
    port_names: set[str] = set()
    server_names: set[str] = set()
    for p, item in f.items(iss, raw_servers, f.join(path, "servers")):
        s = _server(iss, item, p)
        if s is None:
            continue
        if s.port.name in port_names:
            iss.error(
                f.join(p, "port"),
                f"port names in servers must be unique: duplicate name {s.port.name}",
            )
        port_names.add(s.port.name)
        if s.name:
            if s.name in server_names:
                iss.warn(
                    f.join(p, "name"),
                    f"server name {s.name} is not unique in the gateway (stat prefix collision)",
                )
            server_names.add(s.name)
        if s.tls is not None and s.tls.https_redirect and not s.port.is_http:
            iss.warn(
                f.join(p, "tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            )
        servers.append(s)
    if iss.failed:
        return None
    return Gateway(selector=selector, servers=tuple(servers))
