"""VirtualService TCP and TLS routes for sidecar outbound listeners (istiod core/tls.go).

For a service's TCP chain (buildSidecarOutboundTCPFilterChainOpts): VirtualServices
bound to the mesh whose hosts match the service, in index order; the first `tcp`
route without a match, or with a matching match (port, sourceLabels,
sourceNamespace, gateways) that has no destinationSubnets, replaces the default
destination; matches with destinationSubnets add chains with those prefix ranges.

For TLS/HTTPS ports (buildSidecarOutboundTLSFilterChainOpts): every matching `tls`
route match adds a chain matching its sniHosts (and destinationSubnets), once per
(sniHosts, subnets); without any, the default chain stays.

Destinations: one -> tcp_proxy `cluster` (stat prefix = cluster); several ->
`weighted_clusters` of those with weight > 0 (stat prefix "NAME.NAMESPACE").
"""

from __future__ import annotations

import ipaddress

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.model.istio.virtualservice import MESH_GATEWAY, L4Match, RouteDestination
from xdsd.model.types import Protocol, Service
from xdsd.translate import _common as c
from xdsd.translate import vs_index
from xdsd.translate.context import ProxyContext
from xdsd.translate.vs_http import host_matches

FilterChain = listener_components_pb2.FilterChain
Filter = listener_components_pb2.Filter
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


def _service_of(ctx: ProxyContext, cluster: str) -> tuple[Service, int] | None:
    parts = cluster.split("|")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    for s in ctx.services:
        if s.hostname == parts[3]:
            return s, int(parts[1])
    return None


def _configs_for(ctx: ProxyContext, hostname: str) -> list[vs_index.ResolvedVS]:
    """istiod getConfigsForHost over the proxy's mesh VirtualServices."""
    out = []
    for v in vs_index.for_gateway(ctx.snapshot, ctx.namespace, MESH_GATEWAY):
        if any(host_matches(h, hostname) for h in v.spec.hosts):
            out.append(v)
    return out


def _l4_match(ctx: ProxyContext, m: L4Match, port: int) -> bool:
    """istiod matchTCP / matchTLS for a sidecar (gateway "mesh")."""
    if m.gateways and MESH_GATEWAY not in m.gateways:
        return False
    labels = ctx.proxy.labels
    if not all(labels.get(k) == v for k, v in m.source_labels):
        return False
    if m.port and m.port != port:
        return False
    return not m.source_namespace or m.source_namespace == ctx.namespace


def _cluster(ctx: ProxyContext, rd: RouteDestination, port: int) -> str:
    """istiod GetDestinationCluster with the proxy's view of the destination service."""
    dest = rd.destination
    svc = next((s for s in ctx.services if s.hostname == dest.host), None)
    if dest.port is not None:
        p = dest.port
    elif svc is not None and len(svc.ports) == 1:
        p = svc.ports[0].port
    else:
        p = port
    return c.outbound_cluster_name(p, dest.host, dest.subset)


def _tcp_proxy(
    ctx: ProxyContext, vs: vs_index.ResolvedVS, routes: tuple[RouteDestination, ...], port: int
) -> listener_components_pb2.Filter:
    if len(routes) == 1:
        cluster = _cluster(ctx, routes[0], port)
        tp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    else:
        tp = tcp_proxy_pb2.TcpProxy(stat_prefix=f"{vs.name}.{vs.namespace}")
        for rd in routes:
            if rd.weight > 0:
                tp.weighted_clusters.clusters.append(
                    tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(
                        name=_cluster(ctx, rd, port), weight=rd.weight
                    )
                )
    return Filter(name=TCP_PROXY_FILTER, typed_config=c.pack(tp))


def _cidr(value: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(net.network_address), prefix_len=c.uint32(net.prefixlen)
    )


def tcp_chains(
    ctx: ProxyContext, cluster: str
) -> tuple[listener_components_pb2.Filter | None, list[listener_components_pb2.FilterChain]]:
    """(the filter replacing the default tcp_proxy, or None; extra destination-subnet chains)."""
    found = _service_of(ctx, cluster)
    if found is None:
        return None, []
    svc, port = found
    extra: list[listener_components_pb2.FilterChain] = []
    for vs in _configs_for(ctx, svc.hostname):
        for tcp in vs.spec.tcp:
            if not tcp.route:
                continue
            if not tcp.match:
                return _tcp_proxy(ctx, vs, tcp.route, port), extra
            subnets: list[str] = []
            for m in tcp.match:
                if not _l4_match(ctx, m, port):
                    continue
                if not m.destination_subnets:
                    return _tcp_proxy(ctx, vs, tcp.route, port), extra
                subnets += m.destination_subnets
            if subnets:
                extra.append(
                    FilterChain(
                        filter_chain_match=listener_components_pb2.FilterChainMatch(
                            prefix_ranges=[_cidr(s) for s in subnets]
                        ),
                        filters=[_tcp_proxy(ctx, vs, tcp.route, port)],
                    )
                )
    return None, extra


def tls_chains(ctx: ProxyContext, cluster: str) -> list[listener_components_pb2.FilterChain]:
    """SNI chains from `tls` routes for a TLS/HTTPS service port ([] = keep the default)."""
    found = _service_of(ctx, cluster)
    if found is None:
        return []
    svc, port = found
    sp = svc.port_by_number(port)
    if sp is None or sp.protocol not in (Protocol.TLS, Protocol.HTTPS):
        return []
    out: list[listener_components_pb2.FilterChain] = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for vs in _configs_for(ctx, svc.hostname):
        for tls in vs.spec.tls:
            if not tls.route:
                continue
            for m in tls.match:
                if not _l4_match(ctx, m, port):
                    continue
                key = (m.sni_hosts, m.destination_subnets)
                if key in seen:
                    continue
                seen.add(key)
                fcm = listener_components_pb2.FilterChainMatch(server_names=list(m.sni_hosts))
                fcm.prefix_ranges.extend(_cidr(s) for s in m.destination_subnets)
                out.append(
                    FilterChain(
                        filter_chain_match=fcm, filters=[_tcp_proxy(ctx, vs, tls.route, port)]
                    )
                )
    return out
