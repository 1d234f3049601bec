"""CDS: outbound service clusters, inbound clusters, BlackHole/Passthrough clusters."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from xdsd.model.proxy import InterceptionMode
from xdsd.model.types import Protocol
from xdsd.translate import _common as c
from xdsd.translate.auto_mtls import apply_auto_mtls
from xdsd.translate.context import ClusterKind, InboundPort, OutboundCluster, ProxyContext
from xdsd.translate.destination_rule import apply_cluster_policy
from xdsd.translate.sni_dnat import sni_dnat_clusters

Cluster = cluster_pb2.Cluster
HttpProtocolOptions = http_protocol_options_pb2.HttpProtocolOptions


def _circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    """istiod's defaults: every threshold at max uint32 (Envoy's own are 1024/3)."""
    big = c.uint32(c.MAX_UINT32)
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=big,
                max_pending_requests=big,
                max_requests=big,
                max_retries=big,
                track_remaining=True,
            )
        ]
    )


def _protocol_options(cluster: cluster_pb2.Cluster, protocol: Protocol) -> None:
    """HTTP/2 upstream for HTTP2/GRPC ports; downstream protocol for sniffed ports (sidecars)."""
    if c.is_http2(protocol):
        opts = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    elif protocol is Protocol.AUTO:
        opts = HttpProtocolOptions(
            use_downstream_protocol_config=HttpProtocolOptions.UseDownstreamHttpConfig(
                http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
            )
        )
    else:
        return
    cluster.typed_extension_protocol_options[c.HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(c.pack(opts))


# Envoy's DNS cluster (STRICT_DNS, or LOGICAL_DNS with all addresses in one endpoint).
DNS_CLUSTER_EXTENSION = "envoy.cluster.dns"


def _dns_lookup_family(ctx: ProxyContext) -> int:
    if ctx.ip_family == "v6":
        return int(dns_pb2.V6_ONLY)
    if ctx.ip_family == "dual":
        return int(dns_pb2.ALL)
    return int(dns_pb2.V4_ONLY)


def _dns_cluster_type(ctx: ProxyContext, logical: bool) -> cluster_pb2.Cluster.CustomClusterType:
    """A DNS cluster as Envoy's DnsCluster extension, with istiod's DNS settings (60 s
    refresh, the records' TTL respected, the proxy's IP family; LOGICAL_DNS: one endpoint
    for all addresses). istiod still sets them on the Cluster itself (type STRICT_DNS /
    LOGICAL_DNS), fields Envoy has deprecated and warns about on every update."""
    return cluster_pb2.Cluster.CustomClusterType(
        name=DNS_CLUSTER_EXTENSION,
        typed_config=c.pack(
            dns_cluster_pb2.DnsCluster(
                dns_refresh_rate=c.seconds(c.DNS_REFRESH_RATE_S),
                respect_dns_ttl=True,
                dns_lookup_family=_dns_lookup_family(ctx),
                all_addresses_in_single_endpoint=logical,
            )
        ),
    )


def _service_metadata(oc: OutboundCluster) -> base_pb2.Metadata:
    """filter_metadata.istio: the services behind the cluster (istiod addTelemetryMetadata)."""
    md = base_pb2.Metadata()
    istio = struct_pb2.Struct()
    svc = istio.get_or_create_list("services").add_struct()
    svc.update(
        {"host": oc.service.hostname, "name": oc.service.name, "namespace": oc.service.namespace}
    )
    istio["default_original_port"] = oc.port.port
    md.filter_metadata["istio"].CopyFrom(istio)
    return md


def outbound_cluster(ctx: ProxyContext, oc: OutboundCluster) -> cluster_pb2.Cluster:
    cl = Cluster(
        name=oc.name,
        connect_timeout=c.seconds(c.CONNECT_TIMEOUT_S),
        circuit_breakers=_circuit_breakers(),
        common_lb_config=Cluster.CommonLbConfig(),
        metadata=_service_metadata(oc),
    )
    if oc.kind is not ClusterKind.ORIGINAL_DST:
        cl.lb_policy = Cluster.LEAST_REQUEST  # MeshConfig default load balancer
    if oc.kind is ClusterKind.EDS:
        cl.type = Cluster.EDS
        cl.eds_cluster_config.CopyFrom(
            Cluster.EdsClusterConfig(service_name=oc.name, eds_config=c.ads_config_source())
        )
    elif oc.kind is ClusterKind.ORIGINAL_DST:
        cl.type = Cluster.ORIGINAL_DST
        cl.lb_policy = Cluster.CLUSTER_PROVIDED
    else:
        cl.cluster_type.CopyFrom(_dns_cluster_type(ctx, oc.kind is ClusterKind.LOGICAL_DNS))
        cl.load_assignment.CopyFrom(
            endpoint_pb2.ClusterLoadAssignment(
                cluster_name=oc.name,
                endpoints=[
                    endpoint_components_pb2.LocalityLbEndpoints(
                        lb_endpoints=[
                            endpoint_components_pb2.LbEndpoint(
                                endpoint=endpoint_components_pb2.Endpoint(
                                    address=c.socket_address(host, port)
                                ),
                                load_balancing_weight=c.uint32(1),
                            )
                            for host, port in oc.dns_targets
                        ]
                    )
                ],
            )
        )
    _protocol_options(cl, oc.port.protocol)
    apply_cluster_policy(ctx, oc, cl)  # DestinationRule traffic policy, if any
    apply_auto_mtls(ctx, oc, cl)  # ISTIO_MUTUAL to endpoints with a sidecar, if no DR TLS
    return cl


def inbound_cluster(ctx: ProxyContext, ip: InboundPort) -> cluster_pb2.Cluster:
    """inbound|PORT||: ORIGINAL_DST to the pod IP, bound to 127.0.0.6 so iptables lets it by.

    istiod's default inbound traffic policy (PASSTHROUGH) sends inbound traffic to the
    original destination (the pod IP and target port) rather than to 127.0.0.1.
    """
    cl = Cluster(
        name=c.inbound_cluster_name(ip.port),
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=c.seconds(c.CONNECT_TIMEOUT_S),
        circuit_breakers=_circuit_breakers(),
        common_lb_config=Cluster.CommonLbConfig(),
        cleanup_interval=c.seconds(c.MAX_DURATION_S),
        upstream_bind_config=_bind_config(ctx),
    )
    _protocol_options(cl, ip.protocol)
    return cl


def _bind_config(ctx: ProxyContext) -> address_pb2.BindConfig:
    src = c.INBOUND_PASSTHROUGH_BIND_V6 if ctx.ip_family == "v6" else c.INBOUND_PASSTHROUGH_BIND_V4
    bind = address_pb2.BindConfig(
        source_address=address_pb2.SocketAddress(address=src, port_value=0)
    )
    if ctx.ip_family == "dual":
        bind.extra_source_addresses.add().address.CopyFrom(
            address_pb2.SocketAddress(address=c.INBOUND_PASSTHROUGH_BIND_V6, port_value=0)
        )
    return bind


def blackhole_cluster() -> cluster_pb2.Cluster:
    return Cluster(
        name=c.BLACKHOLE_CLUSTER,
        type=Cluster.STATIC,
        connect_timeout=c.seconds(c.CONNECT_TIMEOUT_S),
        lb_policy=Cluster.ROUND_ROBIN,
    )


def passthrough_cluster() -> cluster_pb2.Cluster:
    cl = Cluster(
        name=c.PASSTHROUGH_CLUSTER,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=c.seconds(c.CONNECT_TIMEOUT_S),
        circuit_breakers=_circuit_breakers(),
    )
    # istiod: passthrough speaks whatever the downstream spoke; idle HTTP connections
    # are closed after 300s.
    opts = HttpProtocolOptions(
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=c.seconds(c.PASSTHROUGH_IDLE_TIMEOUT_S)
        ),
        use_downstream_protocol_config=HttpProtocolOptions.UseDownstreamHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
        ),
    )
    cl.typed_extension_protocol_options[c.HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(c.pack(opts))
    return cl


def inbound_passthrough_cluster(ctx: ProxyContext) -> cluster_pb2.Cluster:
    cl = passthrough_cluster()
    cl.name = c.INBOUND_PASSTHROUGH_CLUSTER
    cl.upstream_bind_config.CopyFrom(_bind_config(ctx))
    return cl


def generate_outbound_clusters(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """Outbound clusters, BlackHole and (sidecars) Passthrough: shared by a namespace."""
    out: dict[str, Message] = {oc.name: outbound_cluster(ctx, oc) for oc in ctx.clusters}
    out[c.BLACKHOLE_CLUSTER] = blackhole_cluster()
    if ctx.is_sidecar:
        out[c.PASSTHROUGH_CLUSTER] = passthrough_cluster()
    else:
        for name, oc in sni_dnat_clusters(ctx):  # AUTO_PASSTHROUGH gateway servers
            cl = Cluster()
            cl.CopyFrom(out[oc.name])
            cl.name = name
            cl.ClearField("transport_socket")  # the client's own mTLS passes through
            cl.ClearField("transport_socket_matches")
            # Its own assignment (istiod): this network's mTLS endpoints only.
            if cl.HasField("eds_cluster_config"):
                cl.eds_cluster_config.service_name = name
            out[name] = cl
    # Gateways: outbound clusters and BlackHoleCluster only (istiod buildClusters).
    return sorted(out.items())


def generate_inbound_clusters(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """A sidecar's inbound clusters (its own workload's ports) and InboundPassthrough."""
    if not ctx.is_sidecar:
        return []
    out: dict[str, Message] = {}
    # NONE mode without a Sidecar ingress: no inbound clusters (istiod buildInboundClusters),
    # since the app itself owns its ports and nothing redirects inbound traffic to Envoy.
    if ctx.mode is not InterceptionMode.NONE:
        for ip in ctx.inbound:
            out[c.inbound_cluster_name(ip.port)] = inbound_cluster(ctx, ip)
    # istiod adds it for every sidecar, NONE mode included.
    out[c.INBOUND_PASSTHROUGH_CLUSTER] = inbound_passthrough_cluster(ctx)
    return sorted(out.items())


def generate_clusters(ctx: ProxyContext) -> list[tuple[str, Message]]:
    return sorted(generate_outbound_clusters(ctx) + generate_inbound_clusters(ctx))


def eds_cluster_names(ctx: ProxyContext) -> list[str]:
    return sorted(oc.name for oc in ctx.clusters if oc.kind is ClusterKind.EDS)
