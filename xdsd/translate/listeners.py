"""LDS: virtualOutbound/virtualInbound (iptables modes) and per-port outbound listeners."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xdsd.model.proxy import InterceptionMode
from xdsd.translate import _common as c
from xdsd.translate import vs_tcp
from xdsd.translate.context import ListenerPlan, OutboundPolicy, ProxyContext

Listener = listener_pb2.Listener
FilterChain = listener_components_pb2.FilterChain
FilterChainMatch = listener_components_pb2.FilterChainMatch
Filter = listener_components_pb2.Filter
ListenerFilter = listener_components_pb2.ListenerFilter
HCM = hcm_pb2.HttpConnectionManager

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"
TLS_INSPECTOR_FILTER = "envoy.filters.listener.tls_inspector"
HTTP_INSPECTOR_FILTER = "envoy.filters.listener.http_inspector"


def _hcm(
    stat_prefix: str,
    *,
    rds: str | None = None,
    route_config: route_pb2.RouteConfiguration | None = None,
    http2: bool = False,
    inbound: bool = False,
    security: Sequence[hcm_pb2.HttpFilter] = (),
) -> listener_components_pb2.Filter:
    """An HTTP connection manager with istiod's defaults (buildHTTPConnectionManager).

    `inbound`: a sidecar's inbound side, which tells the app the peer's identity
    (x-forwarded-client-cert, as istiod's sidecar inbound HCM). `security`: the
    authentication and authorization filters, ahead of the rest.
    """
    hcm = HCM(
        codec_type=HCM.AUTO,
        stat_prefix=stat_prefix,
        use_remote_address=wrappers_pb2.BoolValue(value=False),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        path_with_escaped_slashes_action=HCM.KEEP_UNCHANGED,
        upgrade_configs=[HCM.UpgradeConfig(upgrade_type="websocket")],
        stream_idle_timeout=c.seconds(0),
        http_filters=[
            *security,
            # istiod: empty fault and CORS filters, configured per route (VirtualService).
            hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=c.pack(fault_pb2.HTTPFault())),
            hcm_pb2.HttpFilter(name=CORS_FILTER, typed_config=c.pack(cors_pb2.Cors())),
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=c.pack(router_pb2.Router())),
        ],
    )
    if inbound:
        hcm.forward_client_cert_details = HCM.APPEND_FORWARD
        hcm.set_current_client_cert_details.CopyFrom(
            HCM.SetCurrentClientCertDetails(
                subject=wrappers_pb2.BoolValue(value=True), dns=True, uri=True
            )
        )
    if rds is not None:
        hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=c.ads_config_source(), route_config_name=rds))
    elif route_config is not None:
        hcm.route_config.CopyFrom(route_config)
    if http2:
        hcm.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    return Filter(name=HCM_FILTER, typed_config=c.pack(hcm))


def _tcp_proxy(cluster: str, stat_prefix: str | None = None) -> listener_components_pb2.Filter:
    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix or cluster, cluster=cluster)
    return Filter(name=TCP_PROXY_FILTER, typed_config=c.pack(tp))


def _listener_filter(name: str, config: Message) -> listener_components_pb2.ListenerFilter:
    return ListenerFilter(name=name, typed_config=c.pack(config))


def _http_alpn_match(port: int | None = None) -> listener_components_pb2.FilterChainMatch:
    m = FilterChainMatch(
        application_protocols=list(c.PLAINTEXT_HTTP_ALPNS), transport_protocol=c.RAW_BUFFER
    )
    if port is not None:
        m.destination_port.value = port
    return m


def _egress_cluster(ctx: ProxyContext) -> str:
    if ctx.outbound_policy is OutboundPolicy.ALLOW_ANY:
        return c.PASSTHROUGH_CLUSTER
    return c.BLACKHOLE_CLUSTER


def _passthrough_chain(ctx: ProxyContext) -> listener_components_pb2.FilterChain:
    """istiod's fallthrough chain of per-port outbound listeners."""
    return FilterChain(
        name=c.PASSTHROUGH_FILTER_CHAIN,
        filter_chain_match=FilterChainMatch(),
        filters=[_tcp_proxy(_egress_cluster(ctx))],
    )


def dedupe_chains(chains: list[listener_components_pb2.FilterChain]) -> None:
    """Drop what an earlier chain already matches, in place (the first definition wins).

    Envoy rejects a whole listener when two chains match the same traffic ("has the
    same matching rules defined"); services, ServiceEntries and VirtualService tls
    routes on one port may all name one SNI host. istiod merges them the same way.
    """
    claimed: dict[bytes, set[str]] = {}
    keep: list[listener_components_pb2.FilterChain] = []
    for chain in chains:
        rest = FilterChainMatch()
        rest.CopyFrom(chain.filter_chain_match)
        rest.ClearField("server_names")
        key = rest.SerializeToString(deterministic=True)
        taken = claimed.setdefault(key, set())
        names = list(chain.filter_chain_match.server_names) or [""]
        fresh = [n for n in names if n not in taken]
        if not fresh:
            continue
        taken.update(fresh)
        if fresh != names:
            del chain.filter_chain_match.server_names[:]
            chain.filter_chain_match.server_names.extend(fresh)
        keep.append(chain)
    del chains[:]
    chains.extend(keep)


def outbound_listener(ctx: ProxyContext, plan: ListenerPlan) -> listener_pb2.Listener:
    ls = Listener(
        name=plan.name,
        address=c.socket_address(plan.address, plan.port),
        traffic_direction=base_pb2.OUTBOUND,
        continue_on_listener_filters_timeout=True,
        listener_filters_timeout=c.seconds(0),  # MeshConfig protocolDetectionTimeout default
    )
    if not plan.bind_to_port:
        ls.bind_to_port.value = False
    if plan.sni:
        ls.listener_filters.append(
            _listener_filter(TLS_INSPECTOR_FILTER, tls_inspector_pb2.TlsInspector())
        )
    if plan.http_sniff:
        ls.listener_filters.append(
            _listener_filter(HTTP_INSPECTOR_FILTER, http_inspector_pb2.HttpInspector())
        )
    tcp_chain = FilterChain(filters=[_tcp_proxy(plan.tcp_cluster)]) if plan.tcp_cluster else None
    if plan.http_route is not None:
        http_chain = FilterChain(
            filters=[_hcm(f"outbound_{plan.name}", rds=plan.http_route)],
        )
        if plan.http_sniff:
            http_chain.filter_chain_match.CopyFrom(_http_alpn_match())
            ls.filter_chains.append(http_chain)
            ls.default_filter_chain.CopyFrom(tcp_chain or _passthrough_chain(ctx))
        else:
            ls.filter_chains.append(http_chain)
        return ls
    for server_name, cluster in plan.sni:
        routed = vs_tcp.tls_chains(ctx, cluster)  # VirtualService tls routes replace it
        if routed:
            ls.filter_chains.extend(routed)
            continue
        ls.filter_chains.append(
            FilterChain(
                filter_chain_match=FilterChainMatch(server_names=[server_name]),
                filters=[_tcp_proxy(cluster)],
            )
        )
    if tcp_chain is not None and plan.tcp_cluster:
        # VirtualService tcp routes (or tls routes of a TLS service on its own VIP).
        routed = vs_tcp.tls_chains(ctx, plan.tcp_cluster)
        if routed:
            ls.filter_chains.extend(routed)
            tcp_chain = None
            if not plan.sni:
                ls.listener_filters.append(
                    _listener_filter(TLS_INSPECTOR_FILTER, tls_inspector_pb2.TlsInspector())
                )
        else:
            replacement, subnets = vs_tcp.tcp_chains(ctx, plan.tcp_cluster)
            if replacement is not None:
                tcp_chain = FilterChain(filters=[replacement])
            ls.filter_chains.extend(subnets)
    if tcp_chain is not None:
        if plan.sni:
            ls.default_filter_chain.CopyFrom(tcp_chain)
        else:
            ls.filter_chains.append(tcp_chain)
    elif plan.passthrough_default:
        ls.default_filter_chain.CopyFrom(_passthrough_chain(ctx))
    dedupe_chains(ls.filter_chains)
    return ls


def virtual_outbound(ctx: ProxyContext) -> listener_pb2.Listener:
    return Listener(
        name=c.VIRTUAL_OUTBOUND,
        address=c.socket_address(ctx.wildcard, c.PROXY_LISTEN_PORT),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        transparent=(
            wrappers_pb2.BoolValue(value=True) if ctx.mode is InterceptionMode.TPROXY else None
        ),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            # Never pass traffic aimed at 15001 itself back to 15001.
            FilterChain(
                name=c.VIRTUAL_OUTBOUND_BLACKHOLE,
                filter_chain_match=FilterChainMatch(destination_port=c.uint32(c.PROXY_LISTEN_PORT)),
                filters=[_tcp_proxy(c.BLACKHOLE_CLUSTER)],
            ),
            FilterChain(
                name=c.VIRTUAL_OUTBOUND_CATCHALL_TCP,
                filters=[_tcp_proxy(_egress_cluster(ctx))],
            ),
        ],
    )


def _port_ranges(ports: Sequence[int]) -> listener_components_pb2.ListenerFilterChainMatchPredicate:
    Predicate = listener_components_pb2.ListenerFilterChainMatchPredicate
    rules = [
        Predicate(destination_port_range=range_pb2.Int32Range(start=p, end=p + 1)) for p in ports
    ]
    if len(rules) == 1:
        return rules[0]
    return Predicate(or_match=Predicate.MatchSet(rules=rules))


def generate_outbound_listeners(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """A sidecar's outbound listeners and virtualOutbound: shared by a namespace."""
    if not ctx.is_sidecar:
        return []
    out: dict[str, Message] = {plan.name: outbound_listener(ctx, plan) for plan in ctx.listeners}
    if ctx.mode is not InterceptionMode.NONE:
        out[c.VIRTUAL_OUTBOUND] = virtual_outbound(ctx)
    return sorted(out.items())


def outbound_listener_names(ctx: ProxyContext) -> frozenset[str]:
    """Names generate_outbound_listeners uses (without generating them)."""
    names = {plan.name for plan in ctx.listeners}
    if ctx.is_sidecar and ctx.mode is not InterceptionMode.NONE:
        names.add(c.VIRTUAL_OUTBOUND)
    return frozenset(names)
