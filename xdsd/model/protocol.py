"""Port protocol selection, following Istio's documented rules.

See https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/:
a Kubernetes `protocol: UDP` port is UDP; otherwise `appProtocol` wins over the
port name; the name is read as ``<protocol>[-<suffix>]`` (case-insensitive);
anything else is sniffed (`Protocol.AUTO`).
"""

from __future__ import annotations

from xdsd.model.types import Protocol

_BY_NAME: dict[str, Protocol] = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "https": Protocol.HTTPS,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.GRPC_WEB,
    "mongo": Protocol.MONGO,
    "mysql": Protocol.MYSQL,
    "redis": Protocol.REDIS,
    "tcp": Protocol.TCP,
    "tls": Protocol.TLS,
    "udp": Protocol.UDP,
}

# Kubernetes' standard appProtocol values (KEP-3726), mapped as istiod maps them.
_KUBERNETES_APP_PROTOCOLS: dict[str, Protocol] = {
    "kubernetes.io/h2c": Protocol.HTTP2,  # HTTP/2 over cleartext
    "kubernetes.io/ws": Protocol.HTTP,  # WebSocket over cleartext
    "kubernetes.io/wss": Protocol.HTTPS,  # WebSocket over TLS
}

# Server-first protocols break under sniffing (the client waits for the server's
# greeting), so istiod treats these ports as TCP when nothing names a protocol.
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})


def parse_protocol(value: str) -> Protocol:
    """An explicit protocol name (ServiceEntry `protocol`, appProtocol); unknown -> AUTO."""
    return _BY_NAME.get(value.lower(), Protocol.AUTO)


def protocol_for(
    port_name: str | None,
    app_protocol: str | None,
    k8s_protocol: str | None = "TCP",
    *,
    port: int | None = None,
) -> Protocol:
    """The protocol of a Kubernetes Service port.

    `port` is optional: when given, the well-known server-first ports (SMTP,
    DNS, MySQL, MongoDB) fall back to TCP instead of AUTO, as istiod does.
    """
    if (k8s_protocol or "TCP").upper() == "UDP":
        return Protocol.UDP
    name = port_name or ""
    if app_protocol:
        known = _KUBERNETES_APP_PROTOCOLS.get(app_protocol)
        if known is not None:
            return known
        # appProtocol set: the port name is not consulted any more.
        name = app_protocol
    lowered = name.lower()
    # "grpc-web" contains the suffix separator, so test it before splitting.
    if lowered.startswith("grpc-web"):
        result = Protocol.GRPC_WEB
    else:
        result = _BY_NAME.get(lowered.split("-", 1)[0], Protocol.AUTO)
    if result is Protocol.AUTO and port in _WELL_KNOWN_TCP_PORTS:
        return Protocol.TCP
    return result
