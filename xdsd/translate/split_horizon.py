"""Split-horizon EDS: a proxy reaches other networks' endpoints through their gateways.

As istiod's EndpointsByNetworkFilter (pilot/pkg/xds/endpoints/ep_filters.go), once
some network has a gateway (`NetworkView.enabled`):

- endpoints of the proxy's own network, and endpoints or proxies without a network,
  are sent as they are (a proxy without a network still goes through a gateway to
  a network that has one);
- every endpoint weight is scaled by the view's `scale`; each other-network endpoint
  that takes mTLS gives its weight, split evenly, to the gateways of its network
  (those in its own cluster, else all of the network's); each gateway becomes one
  endpoint per locality group, weighted by the endpoints behind it, carrying
  `tlsMode: istio` (the client's cluster speaks mTLS to it, SNI
  `outbound_.PORT_.SUBSET_.HOST`, which the gateway's AUTO_PASSTHROUGH routes on);
- an other-network endpoint without mTLS is dropped (SNI routing needs it), and so
  is one whose network has gateways of the other IP family only (a single-stack
  proxy cannot reach them).

Where xdsd differs: an endpoint of a network with no gateway is dropped for proxies
of other networks. istiod's sidecar mode sends such a pod IP as if it were
reachable (its ambient mode drops it, as here); another network's pod IP is not
reachable, so removing a network's last gateway takes its endpoints away instead.

A proxy that asks for a network view (node metadata REQUESTED_NETWORK_VIEW, as
Istio's east-west gateway does for its own network) sees only endpoints of those
networks and of none, before anything else (istiod ProxyView).

The gateway endpoint stays in the locality group of the endpoints it stands for
(istiod does the same), so locality load balancing and failover treat it as being
where those endpoints are. EDS is per network (the part key has the network), never
per proxy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from types import MappingProxyType

from xdsd.model.networks import NETWORK_LABEL, NetworkGateway, in_network, network_view
from xdsd.model.proxy import CLUSTER_LABEL
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import Endpoint, Locality
from xdsd.translate.auto_mtls import takes_mtls
from xdsd.translate.context import ProxyContext


@dataclass(frozen=True)
class GatewayEndpoint(Endpoint):
    """An east-west gateway standing in for endpoints of its network (always mTLS)."""


def network_key(ctx: ProxyContext) -> Hashable:
    """What EDS reads of the proxy's network: its network while split horizon is on, and
    the networks it asked to see."""
    enabled = network_view(ctx.snapshot).enabled
    return (ctx.proxy.network if enabled else "", ctx.proxy.network_view)


def visible(ctx: ProxyContext, eps: Iterable[Endpoint]) -> list[Endpoint]:
    """istiod ProxyView: with REQUESTED_NETWORK_VIEW, endpoints of those networks and of
    none; else all."""
    wanted = ctx.proxy.network_view
    if not wanted:
        return list(eps)
    view = network_view(ctx.snapshot)
    return [e for e in eps if not view.network_of(e) or view.network_of(e) in wanted]


def split_endpoints(ctx: ProxyContext, eps: Iterable[Endpoint]) -> list[Endpoint]:
    snapshot = ctx.snapshot
    view = network_view(snapshot)
    eps = visible(ctx, eps)
    if not view.enabled:
        return eps
    local = ctx.proxy.network
    scale = view.scale
    out: list[Endpoint] = []
    shares: dict[tuple[Locality, NetworkGateway, int], int] = {}
    for ep in eps:
        net = view.network_of(ep)
        gateways = view.gateways_for(net, ep.cluster_id)
        weight = max(1, ep.weight) * scale
        through_gateway = bool(gateways) and (not in_network(local, net) or not local)
        if not through_gateway:
            if in_network(local, net):
                out.append(ep if scale == 1 else dataclasses.replace(ep, weight=weight))
            continue  # another network without a gateway: unreachable
        gateways = _reachable(gateways, ctx.ip_family)
        if not gateways or not takes_mtls(snapshot, ep):
            continue
        share = weight // len(gateways)
        for gw in gateways:
            key = (ep.locality, gw, ep.service_port)
            shares[key] = shares.get(key, 0) + share
    for (locality, gw, service_port), weight in sorted(
        shares.items(), key=lambda kv: (_loc(kv[0][0]), kv[0][1])
    ):
        out.append(gateway_endpoint(gw, service_port, locality, weight))
    return out


def _reachable(gateways: tuple[NetworkGateway, ...], family: str) -> tuple[NetworkGateway, ...]:
    """istiod filterGatewaysByIPFamily: a single-stack proxy uses gateways of its family
    (dual-stack: all)."""
    if family == "dual":
        return gateways
    want = 6 if family == "v6" else 4
    return tuple(g for g in gateways if ipaddress.ip_address(g.address).version == want)


def gateway_endpoint(
    gw: NetworkGateway, service_port: int, locality: Locality, weight: int
) -> GatewayEndpoint:
    # The labels failoverPriority reads (istiod AugmentLabels with the gateway's
    # cluster and network).
    labels = {NETWORK_LABEL: gw.network}
    if gw.cluster:
        labels[CLUSTER_LABEL] = gw.cluster
    return GatewayEndpoint(
        address=gw.address,
        port=gw.port,
        service_port=service_port,
        labels=MappingProxyType(labels),
        cluster_id=gw.cluster,
        network=gw.network,
        locality=locality,
        weight=max(1, weight),
    )


def local_mtls_endpoints(ctx: ProxyContext, eps: Iterable[Endpoint]) -> list[Endpoint]:
    """What a gateway's AUTO_PASSTHROUGH (SNI-DNAT) clusters reach: endpoints of its own
    network only (never another gateway) that take mTLS (istiod
    EndpointsWithMTLSFilter: passthrough traffic there is the client's mTLS)."""
    view = network_view(ctx.snapshot)
    local = ctx.proxy.network
    snapshot: MeshSnapshot = ctx.snapshot
    return [
        e
        for e in visible(ctx, eps)
        if in_network(local, view.network_of(e)) and takes_mtls(snapshot, e)
    ]


def _loc(loc: Locality) -> tuple[str, str, str]:
    return (loc.region, loc.zone, loc.subzone)
