"""Sidecar ingress listeners: their inbound clusters and, when bound, their own listeners.

As istiod (listener_inbound.go buildInboundChainConfigs/inboundCustomListener,
cluster.go buildInboundClustersFromSidecar, cluster_builder.go buildInboundCluster):

- Each `ingress` entry makes cluster `inbound|PORT||`: STATIC to `defaultEndpoint`
  (`127.0.0.1:P`/`[::1]:P` loopback; `0.0.0.0:P`/`[::]:P` the instance IP;
  `unix://PATH` a socket), or ORIGINAL_DST without one. Clusters not sending to
  loopback bind their upstream side to 127.0.0.6 so iptables lets them by.
- With captureMode NONE (or on a NONE-mode proxy, captureMode DEFAULT) the entry is a
  real listener `BIND_PORT` on `bind` (default: the proxy's first global unicast IP,
  else the wildcard). Otherwise it is a filter chain of virtualInbound (planned in
  ProxyContext.inbound).
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import Message

from xdsd.translate import _common as c
from xdsd.translate import clusters, inbound, listeners
from xdsd.translate.context import InboundPort, ProxyContext
from xdsd.translate.sidecar_scope import IngressPlan

Generator = Callable[[ProxyContext], list[tuple[str, Message]]]
UNIX_PREFIX = "unix://"


def _address(endpoint: str, port: int) -> address_pb2.Address:
    if endpoint.startswith(UNIX_PREFIX):
        return address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint[len(UNIX_PREFIX) :]))
    return c.socket_address(endpoint, port)


def ingress_cluster(ctx: ProxyContext, plan: IngressPlan) -> cluster_pb2.Cluster:
    base = InboundPort(plan.port, plan.protocol, plan.port, (), ctx.namespace)
    cl = clusters.inbound_cluster(ctx, base)  # ORIGINAL_DST, bound to 127.0.0.6
    if not plan.endpoint:
        return cl
    cl.type = cluster_pb2.Cluster.STATIC
    cl.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST  # MeshConfig default load balancer
    cl.ClearField("cleanup_interval")
    cl.load_assignment.CopyFrom(
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=cl.name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=_address(plan.endpoint, plan.endpoint_port)
                            )
                        )
                    ]
                )
            ],
        )
    )
    if plan.endpoint in (c.LOCALHOST_V4, c.LOCALHOST_V6):
        cl.ClearField("upstream_bind_config")
    return cl


def ingress_listener(ctx: ProxyContext, plan: IngressPlan) -> listener_pb2.Listener:
    ls = listener_pb2.Listener(
        name=plan.name,
        address=_address(plan.bind, plan.port),
        traffic_direction=base_pb2.INBOUND,
        continue_on_listener_filters_timeout=True,
        listener_filters_timeout=c.seconds(0),  # MeshConfig protocolDetectionTimeout default
        filter_chains=inbound.port_chains(ctx, plan.name, plan.port, plan.protocol),
    )
    ls.listener_filters.extend(inbound.listener_inspectors(ls.filter_chains))
    return ls


def _merge(
    base: list[tuple[str, Message]], extra: list[tuple[str, Message]]
) -> list[tuple[str, Message]]:
    out = dict(base)
    out.update(extra)
    return sorted(out.items())


def with_ingress_clusters(generate: Generator) -> Generator:
    """CDS plus the clusters of the Sidecar's ingress listeners (replacing inbound|PORT||)."""

    def gen(ctx: ProxyContext) -> list[tuple[str, Message]]:
        base = generate(ctx)
        if not ctx.ingress or not ctx.is_sidecar:
            return base
        return _merge(
            base, [(c.inbound_cluster_name(p.port), ingress_cluster(ctx, p)) for p in ctx.ingress]
        )

    return gen


def with_ingress_listeners(generate: Generator) -> Generator:
    """LDS plus the Sidecar's bound ingress listeners."""

    def gen(ctx: ProxyContext) -> list[tuple[str, Message]]:
        base = generate(ctx)
        if not ctx.ingress or not ctx.is_sidecar:
            return base
        bound = [(p.name, ingress_listener(ctx, p)) for p in ctx.ingress if p.bind_to_port]
        # Outbound listeners keep their names even when generated apart (the inbound part).
        taken = {name for name, _ in base} | listeners.outbound_listener_names(ctx)
        return _merge(base, [(n, m) for n, m in bound if n not in taken])

    return gen
