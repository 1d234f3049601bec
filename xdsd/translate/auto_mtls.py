"""Auto mTLS: clients speak Istio mTLS to endpoints that have a sidecar.

As istiod (cluster_tls.go buildUpstreamTLSSettings/applyUpstreamTLSSettings,
PushContext.BestEffortInferServiceMTLSMode): when no DestinationRule sets TLS
for a mesh-internal destination whose namespace (else mesh) PeerAuthentication
is not DISABLE, the cluster gets `transport_socket_matches`: ISTIO_MUTUAL for
endpoints whose metadata says `tlsMode: istio` (pods labelled
`security.istio.io/tlsMode: istio`) unless their own PeerAuthentication (workload
and port) is DISABLE, plaintext for the rest. A passthrough
(ORIGINAL_DST) cluster has no endpoint metadata: it speaks mTLS only when every
endpoint has a sidecar.

Unlike istiod, the matches are only added while some endpoint of the cluster
has a sidecar: traffic is the same (unlabelled endpoints match plaintext), and a
plain Envoy without an SDS agent never waits for certificates it cannot get.
A service's first sidecar endpoint therefore changes its cluster, which makes
that change a full push (`endpoints_need_mtls` tells the push engine).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import struct_pb2

from xdsd.model.istio.destinationrule import ClientTls
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import TLS_MODE_LABEL, Endpoint, Location
from xdsd.translate import _common as c
from xdsd.translate.context import ClusterKind, OutboundCluster, ProxyContext
from xdsd.translate.destination_rule import _tls_context, effective_policy, subset_endpoints
from xdsd.translate.peer_authn import DISABLE, namespace_mtls, workload_mtls

TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
TLS_MODE_KEY = "tlsMode"
ISTIO = "istio"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"


def has_sidecar(ep: Endpoint) -> bool:
    return ep.labels.get(TLS_MODE_LABEL) == ISTIO


def takes_mtls(snapshot: MeshSnapshot, ep: Endpoint) -> bool:
    """The endpoint has a sidecar and its own PeerAuthentication (workload and port) does
    not DISABLE mTLS: clients send it mTLS (istiod's endpoint builder mtlsChecker)."""
    if not has_sidecar(ep):
        return False
    return workload_mtls(snapshot, ep.namespace, ep.labels).for_port(ep.port) != DISABLE


def endpoints_need_mtls(snapshot: MeshSnapshot, endpoints: Iterable[Endpoint]) -> bool:
    return any(takes_mtls(snapshot, e) for e in endpoints)


def endpoint_match_metadata(md: base_pb2.Metadata) -> None:
    """Endpoint metadata the cluster's transport socket matches select on."""
    s = struct_pb2.Struct()
    s[TLS_MODE_KEY] = ISTIO
    md.filter_metadata[TRANSPORT_SOCKET_MATCH].CopyFrom(s)


def apply_auto_mtls(ctx: ProxyContext, oc: OutboundCluster, cl: cluster_pb2.Cluster) -> None:
    if cl.HasField("transport_socket") or oc.service.location is not Location.MESH_INTERNAL:
        return
    policy = effective_policy(oc.rule, oc.port.port, oc.subset) if oc.rule is not None else None
    if policy is not None and policy.tls is not None:
        return  # the DestinationRule's own TLS settings (DISABLE included) win
    if namespace_mtls(ctx.snapshot, oc.service.namespace) == DISABLE:
        return
    if oc.kind in (ClusterKind.STRICT_DNS, ClusterKind.LOGICAL_DNS):
        return  # resolved hosts carry no endpoint metadata
    eps = subset_endpoints(oc, ctx.snapshot.endpoints_for(oc.service, oc.port.port))
    if oc.kind is ClusterKind.ORIGINAL_DST:
        if not eps or not all(takes_mtls(ctx.snapshot, e) for e in eps):
            return
    elif not endpoints_need_mtls(ctx.snapshot, eps):
        return
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    if c.HTTP_PROTOCOL_OPTIONS_KEY in cl.typed_extension_protocol_options:
        cl.typed_extension_protocol_options[c.HTTP_PROTOCOL_OPTIONS_KEY].Unpack(opts)
    context = _tls_context(ctx, oc, ClientTls(mode="ISTIO_MUTUAL"), opts)
    assert context is not None
    tls = base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=c.pack(context))
    if oc.kind is ClusterKind.ORIGINAL_DST:
        cl.transport_socket.CopyFrom(tls)
        return
    match = struct_pb2.Struct()
    match[TLS_MODE_KEY] = ISTIO
    cl.transport_socket_matches.extend(
        [
            cluster_pb2.Cluster.TransportSocketMatch(
                name=f"tlsMode-{ISTIO}", match=match, transport_socket=tls
            ),
            cluster_pb2.Cluster.TransportSocketMatch(
                name="tlsMode-disabled",
                match=struct_pb2.Struct(),
                transport_socket=base_pb2.TransportSocket(
                    name=RAW_BUFFER_SOCKET, typed_config=c.pack(raw_buffer_pb2.RawBuffer())
                ),
            ),
        ]
    )
