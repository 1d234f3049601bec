"""AUTO_PASSTHROUGH gateway servers: SNI-DNAT routing of mesh mTLS (istiod's sni-dnat mode).

An east-west (or any) gateway server with TLS mode AUTO_PASSTHROUGH does not
terminate TLS: it reads the SNI a client sidecar set for Istio mTLS,
`outbound_.PORT_.SUBSET_.HOST`, and forwards the connection untouched to that
service's endpoints through a cluster of the same name (the endpoints of
`outbound|PORT|SUBSET|HOST`, no TLS of its own). So the client's mTLS reaches
the destination sidecar end to end.
"""

from __future__ import annotations

from xdsd.model.types import Protocol
from xdsd.translate.context import ClusterKind, OutboundCluster, ProxyContext
from xdsd.translate.gateway_plan import (
    GatewayServer,
    is_auto_passthrough,
    server_selects_host,
    sni_dnat_name,
)


def auto_passthrough_servers(ctx: ProxyContext) -> list[GatewayServer]:
    if ctx.gateway is None:
        return []
    return [gs for gl in ctx.gateway.listeners for gs in gl.servers if is_auto_passthrough(gs)]


def targets(ctx: ProxyContext, gs: GatewayServer) -> list[tuple[str, OutboundCluster]]:
    """(SNI = cluster name, the outbound cluster it stands for) for the server's hosts."""
    out: list[tuple[str, OutboundCluster]] = []
    for oc in ctx.clusters:
        if oc.kind is not ClusterKind.EDS or oc.port.protocol is Protocol.UDP:
            continue
        if server_selects_host(gs, oc.service.namespace, oc.service.hostname):
            out.append((sni_dnat_name(oc.port.port, oc.subset, oc.service.hostname), oc))
    return out


def sni_dnat_clusters(ctx: ProxyContext) -> list[tuple[str, OutboundCluster]]:
    seen: dict[str, OutboundCluster] = {}
    for gs in auto_passthrough_servers(ctx):
        for name, oc in targets(ctx, gs):
            seen.setdefault(name, oc)
    return sorted(seen.items(), key=lambda item: item[0])
