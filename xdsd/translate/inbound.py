"""Inbound filter chains with PeerAuthentication's mTLS and AuthorizationPolicy's RBAC.

As istiod (listener_inbound.go, filterchain_options.go, authn BuildInboundTLS):
each inbound port gets one filter chain per match option of its mTLS mode and
protocol. STRICT: TLS only; PERMISSIVE: mTLS (matched by Istio's ALPNs) and
plaintext; DISABLE: plaintext only. TLS chains terminate with the workload
certificate `default` and require a client certificate validated against
`ROOTCA` (both from the local agent over SDS), so the peer's SPIFFE ID is the
connection's authenticated principal for RBAC and goes to the app in
`x-forwarded-client-cert`. The same chains serve virtualInbound (iptables
modes) and the Sidecar's bound ingress listeners (NONE mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xdsd.model.proxy import InterceptionMode
from xdsd.model.types import Protocol
from xdsd.translate import _common as c
from xdsd.translate import ext_authz, listeners, rbac
from xdsd.translate.context import ProxyContext
from xdsd.translate.destination_rule import SDS_DEFAULT, SDS_ROOT, _sds
from xdsd.translate.jwt_authn import jwt_authn_filter
from xdsd.translate.peer_authn import DISABLE, PERMISSIVE, STRICT
from xdsd.translate.routes import inbound_route_configuration

FilterChain = listener_components_pb2.FilterChain
FilterChainMatch = listener_components_pb2.FilterChainMatch

TLS = "tls"
# ALPNs of Istio's client sidecars (listener.go): HTTP detected by the client, TCP.
MTLS_HTTP_ALPNS = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
ALL_ISTIO_MTLS_ALPNS = ("istio", "istio-peer-exchange", *MTLS_HTTP_ALPNS)
MTLS_TCP_ALPNS = ("istio-peer-exchange", "istio")
# What the server's TLS context offers (util.ALPNHttp, ALPNDownstreamWithMxc).
SERVER_ALPN_HTTP = ("h2", "http/1.1")
SERVER_ALPN_TCP = ("istio-peer-exchange", "h2", "http/1.1")
# authn utils.SupportedCiphers.
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
)


@dataclass(frozen=True)
class _Option:
    """One filter chain match option (istiod FilterChainMatchOptions)."""

    alpns: tuple[str, ...]
    transport: str
    http: bool
    tls: bool = False


_H, _T = True, False
_OPTIONS: dict[tuple[str, str], tuple[_Option, ...]] = {
    ("HTTP", STRICT): (_Option((), TLS, _H, True),),
    ("HTTP", PERMISSIVE): (
        _Option(ALL_ISTIO_MTLS_ALPNS, TLS, _H, True),
        _Option((), c.RAW_BUFFER, _H),
    ),
    ("HTTP", DISABLE): (_Option((), c.RAW_BUFFER, _H),),
    ("AUTO", STRICT): (_Option(MTLS_HTTP_ALPNS, TLS, _H, True), _Option((), TLS, _T, True)),
    ("AUTO", PERMISSIVE): (
        _Option(MTLS_HTTP_ALPNS, TLS, _H, True),
        _Option(c.PLAINTEXT_HTTP_ALPNS, c.RAW_BUFFER, _H),
        _Option(MTLS_TCP_ALPNS, TLS, _T, True),
        _Option((), c.RAW_BUFFER, _T),
        _Option((), TLS, _T),
    ),
    ("AUTO", DISABLE): (
        _Option(c.PLAINTEXT_HTTP_ALPNS, c.RAW_BUFFER, _H),
        _Option((), c.RAW_BUFFER, _T),
    ),
    ("TCP", STRICT): (_Option((), TLS, _T, True),),
    ("TCP", PERMISSIVE): (
        _Option(ALL_ISTIO_MTLS_ALPNS, TLS, _T, True),
        _Option((), TLS, _T),
        _Option((), c.RAW_BUFFER, _T),
    ),
    ("TCP", DISABLE): (_Option((), c.RAW_BUFFER, _T),),
}


def effective_mode(ctx: ProxyContext, port: int) -> str:
    """The port's mode as generated: PERMISSIVE needs a mesh workload (security_plan)."""
    mode = ctx.security.mtls.for_port(port)
    if mode == PERMISSIVE and not ctx.security.mesh_workload:
        return DISABLE
    return mode if mode in (STRICT, PERMISSIVE) else DISABLE


def _listener_protocol(protocol: Protocol) -> str:
    if protocol.is_http:
        return "HTTP"
    return "AUTO" if protocol is Protocol.AUTO else "TCP"


def downstream_tls(http: bool) -> tls_pb2.DownstreamTlsContext:
    common = tls_pb2.CommonTlsContext(
        alpn_protocols=SERVER_ALPN_HTTP if http else SERVER_ALPN_TCP,
        tls_params=common_pb2.TlsParameters(
            cipher_suites=CIPHERS,
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        ),
    )
    common.tls_certificate_sds_secret_configs.append(_sds(SDS_DEFAULT))
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()
    combined.validation_context_sds_secret_config.CopyFrom(_sds(SDS_ROOT))
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )


def _transport_socket(http: bool) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=c.pack(downstream_tls(http))
    )


def http_security_filters(ctx: ProxyContext) -> list[hcm_pb2.HttpFilter]:
    """jwt_authn, then CUSTOM/AUDIT/DENY/ALLOW authorization (istiod's order)."""
    out: list[hcm_pb2.HttpFilter] = []
    jwt = jwt_authn_filter(ctx)
    if jwt is not None:
        out.append(jwt)
    authz = ctx.security.authz
    if authz.custom:
        out.extend(ext_authz.http_filters(ctx.snapshot, authz.custom))
    out.extend(rbac.http_filters(authz))
    return out


def network_security_filters(ctx: ProxyContext) -> list[listener_components_pb2.Filter]:
    authz = ctx.security.authz
    out = ext_authz.network_filters(ctx.snapshot, authz.custom) if authz.custom else []
    return out + rbac.network_filters(authz)


def inbound_chains(
    ctx: ProxyContext,
    *,
    name: str,
    port: int,
    protocol: Protocol,
    cluster: str,
    route_config: route_pb2.RouteConfiguration,
    http_name: str | None = None,
    http_stat_prefix: str | None = None,
    tcp_stat_prefix: str | None = None,
) -> list[listener_components_pb2.FilterChain]:
    """The chains of one inbound port (`port` 0: any, the passthrough chains)."""
    mode = effective_mode(ctx, port)
    options = _OPTIONS[(_listener_protocol(protocol), mode)]
    # Built once for all the port's chains (copied into each by the HCM/filter lists).
    http_filters = http_security_filters(ctx) if any(o.http for o in options) else []
    net_filters = network_security_filters(ctx) if not all(o.http for o in options) else []
    chains: list[listener_components_pb2.FilterChain] = []
    for opt in options:
        match = FilterChainMatch(application_protocols=opt.alpns, transport_protocol=opt.transport)
        if port:
            match.destination_port.value = port
        if opt.http:
            filters = [
                listeners._hcm(
                    http_stat_prefix or f"inbound_{name}",
                    route_config=route_config,
                    http2=c.is_http2(protocol),
                    inbound=True,
                    security=http_filters,
                )
            ]
        else:
            filters = [*net_filters, listeners._tcp_proxy(cluster, tcp_stat_prefix)]
        chain = FilterChain(
            name=(http_name or name) if opt.http else name,
            filter_chain_match=match,
            filters=filters,
        )
        if opt.tls:
            chain.transport_socket.CopyFrom(_transport_socket(opt.http))
        chains.append(chain)
    return chains


def port_chains(
    ctx: ProxyContext, name: str, port: int, protocol: Protocol
) -> list[listener_components_pb2.FilterChain]:
    """The chains of one of the workload's ports, to inbound|PORT||."""
    cluster = c.inbound_cluster_name(port)
    return inbound_chains(
        ctx,
        name=name,
        port=port,
        protocol=protocol,
        cluster=cluster,
        route_config=inbound_route_configuration(cluster, port, protocol),
    )


def _port_predicate(
    ports: Sequence[int],
) -> listener_components_pb2.ListenerFilterChainMatchPredicate:
    return listeners._port_ranges(ports)


def listener_inspectors(
    chains: Sequence[listener_components_pb2.FilterChain],
) -> list[listener_components_pb2.ListenerFilter]:
    """TLS and HTTP inspectors where some chain needs them (istiod populateListenerFilters).

    A port whose chains need neither has them disabled, so server-first protocols
    on declared ports are not held up waiting for client bytes.
    """
    needs_tls: dict[int, bool] = {}
    needs_http: dict[int, bool] = {}
    for chain in chains:
        m = chain.filter_chain_match
        port = m.destination_port.value if m.HasField("destination_port") else 0
        needs_tls[port] = needs_tls.get(port, False) or m.transport_protocol == TLS
        http = any(a in c.PLAINTEXT_HTTP_ALPNS for a in m.application_protocols)
        needs_http[port] = needs_http.get(port, False) or http
    out: list[listener_components_pb2.ListenerFilter] = []
    for flags, filter_name, config in (
        (needs_tls, listeners.TLS_INSPECTOR_FILTER, tls_inspector_pb2.TlsInspector()),
        (needs_http, listeners.HTTP_INSPECTOR_FILTER, http_inspector_pb2.HttpInspector()),
    ):
        if not any(flags.values()):
            continue
        inspector = listeners._listener_filter(filter_name, config)
        if flags.get(0, False):
            # Any port may need it: off only where a declared port's chains do not.
            off = sorted(p for p, needed in flags.items() if p and not needed)
            if off:
                inspector.filter_disabled.CopyFrom(_port_predicate(off))
        else:
            # Only some declared ports need it: off everywhere else.
            on = sorted(p for p, needed in flags.items() if p and needed)
            inspector.filter_disabled.not_match.CopyFrom(_port_predicate(on))
        out.append(inspector)
    return out


def virtual_inbound(ctx: ProxyContext) -> listener_pb2.Listener:
    chains: list[listener_components_pb2.FilterChain] = [
        FilterChain(
            name=c.VIRTUAL_INBOUND_BLACKHOLE,
            filter_chain_match=FilterChainMatch(
                destination_port=c.uint32(c.PROXY_INBOUND_LISTEN_PORT)
            ),
            filters=[listeners._tcp_proxy(c.BLACKHOLE_CLUSTER)],
        )
    ]
    # Passthrough: traffic to ports no service declares (HTTP sniffed, and TCP); ports
    # with a port-level mode of their own get passthrough chains of that mode.
    passthrough_route = inbound_route_configuration(c.INBOUND_PASSTHROUGH_CLUSTER, 0, Protocol.AUTO)
    declared = {ip.port for ip in ctx.inbound}
    for port in (0, *sorted(p for p in ctx.security.mtls.ports if p not in declared)):
        chains.extend(
            inbound_chains(
                ctx,
                name=c.VIRTUAL_INBOUND,
                http_name=c.VIRTUAL_INBOUND_CATCHALL_HTTP,
                port=port,
                protocol=Protocol.AUTO,
                cluster=c.INBOUND_PASSTHROUGH_CLUSTER,
                route_config=passthrough_route,
                http_stat_prefix=c.INBOUND_PASSTHROUGH_CLUSTER,
            )
        )
    for ip in ctx.inbound:
        if ip.port in c.RESERVED_PORTS:
            continue
        chains.extend(
            port_chains(ctx, c.listener_name(ctx.wildcard, ip.port), ip.port, ip.protocol)
        )
    listeners.dedupe_chains(chains)
    return listener_pb2.Listener(
        name=c.VIRTUAL_INBOUND,
        address=c.socket_address(ctx.wildcard, c.PROXY_INBOUND_LISTEN_PORT),
        transparent=(
            wrappers_pb2.BoolValue(value=True) if ctx.mode is InterceptionMode.TPROXY else None
        ),
        traffic_direction=base_pb2.INBOUND,
        continue_on_listener_filters_timeout=True,
        listener_filters=[
            listeners._listener_filter(
                listeners.ORIGINAL_DST_FILTER, original_dst_pb2.OriginalDst()
            ),
            *listener_inspectors(chains),
        ],
        listener_filters_timeout=c.seconds(0),
        filter_chains=chains,
    )


def generate_inbound_listeners(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """virtualInbound, with chains per port of the sidecar's own workload."""
    if not ctx.is_sidecar or ctx.mode is InterceptionMode.NONE:
        return []
    return [(c.VIRTUAL_INBOUND, virtual_inbound(ctx))]
