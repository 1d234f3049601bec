"""EDS: one ClusterLoadAssignment per EDS cluster, empty when the service has no endpoints.

Endpoints go through split horizon first (`split_horizon`: other networks through
their gateways); a gateway's AUTO_PASSTHROUGH (SNI-DNAT) clusters get assignments
of their own: its own network's mTLS endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from xdsd.model.snapshot import MeshSnapshot, ServiceKey
from xdsd.model.types import Endpoint, Locality
from xdsd.translate import _common as c
from xdsd.translate.auto_mtls import endpoint_match_metadata, takes_mtls
from xdsd.translate.context import ClusterKind, ProxyContext
from xdsd.translate.destination_rule import apply_endpoint_policy, subset_endpoints
from xdsd.translate.sni_dnat import sni_dnat_clusters
from xdsd.translate.split_horizon import GatewayEndpoint, local_mtls_endpoints, split_endpoints

ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment


def _canonical(ep: Endpoint) -> tuple[str, str]:
    """Canonical service name and revision as Istio derives them from workload labels."""
    labels = ep.labels
    name = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or ep.workload_name
    )
    rev = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return name, "" if rev == "latest" else rev


def _metadata(ep: Endpoint, mtls: bool) -> base_pb2.Metadata | None:
    """filter_metadata.istio.workload = "NAME;NAMESPACE;CANONICAL;REVISION;CLUSTER" (istiod),
    and the tlsMode the cluster's transport socket matches read (auto mTLS)."""
    if isinstance(ep, GatewayEndpoint):
        # istiod: tlsMode istio and a workload of no name, in the gateway's cluster.
        md = base_pb2.Metadata()
        endpoint_match_metadata(md)
        md.filter_metadata["istio"].CopyFrom(struct_pb2.Struct())
        md.filter_metadata["istio"]["workload"] = f";;;;{ep.cluster_id}"
        return md
    if not ep.workload_name:
        return None
    name, rev = _canonical(ep)
    md = base_pb2.Metadata()
    if mtls:
        endpoint_match_metadata(md)
    istio = struct_pb2.Struct()
    istio["workload"] = ";".join((ep.workload_name, ep.namespace, name, rev, ep.cluster_id))
    md.filter_metadata["istio"].CopyFrom(istio)
    return md


def _address(ep: Endpoint) -> address_pb2.Address:
    """ServiceEntry endpoints may be unix domain sockets (`unix:///path`): a pipe address."""
    if ep.address.startswith("unix://"):
        return address_pb2.Address(pipe=address_pb2.Pipe(path=ep.address[len("unix://") :]))
    return c.socket_address(ep.address, ep.port)


def _lb_endpoint(ep: Endpoint, mtls: bool) -> endpoint_components_pb2.LbEndpoint:
    lb = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_address(ep)),
        health_status=health_check_pb2.HEALTHY if ep.healthy else health_check_pb2.UNHEALTHY,
        load_balancing_weight=c.uint32(max(1, ep.weight)),
    )
    md = _metadata(ep, mtls)
    if md is not None:
        lb.metadata.CopyFrom(md)
    return lb


def _locality_key(loc: Locality) -> tuple[str, str, str]:
    return (loc.region, loc.zone, loc.subzone)


def load_assignment(
    name: str, endpoints: Iterable[Endpoint], snapshot: MeshSnapshot | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """`snapshot`: for whether each endpoint takes mTLS (its PeerAuthentication)."""
    groups: dict[tuple[str, str, str], list[Endpoint]] = {}
    for ep in endpoints:
        groups.setdefault(_locality_key(ep.locality), []).append(ep)
    cla = ClusterLoadAssignment(cluster_name=name)
    for key in sorted(groups):
        eps = sorted(groups[key], key=lambda e: (e.address, e.port, e.workload_name))
        lle = cla.endpoints.add()
        if any(key):
            lle.locality.region, lle.locality.zone, lle.locality.sub_zone = key
        lle.lb_endpoints.extend(
            _lb_endpoint(e, snapshot is not None and _mtls(snapshot, e)) for e in eps
        )
        lle.load_balancing_weight.value = sum(max(1, e.weight) for e in eps)
    return cla


def _mtls(snapshot: MeshSnapshot, ep: Endpoint) -> bool:
    return isinstance(ep, GatewayEndpoint) or takes_mtls(snapshot, ep)


def generate_endpoints(
    ctx: ProxyContext, only: frozenset[ServiceKey] | None = None
) -> list[tuple[str, Message]]:
    """Every EDS cluster's assignment, or only those of the services in `only`."""
    out: list[tuple[str, Message]] = []
    for oc in ctx.clusters:
        if oc.kind is not ClusterKind.EDS:
            continue
        if only is not None and (oc.service.hostname, oc.service.namespace) not in only:
            continue
        # DestinationRule subsets filter by labels; locality policies set weights/priorities.
        eps = subset_endpoints(oc, ctx.snapshot.endpoints_for(oc.service, oc.port.port))
        eps = split_endpoints(ctx, eps)
        cla = load_assignment(oc.name, eps, ctx.snapshot)
        apply_endpoint_policy(ctx, oc, cla, eps)
        out.append((oc.name, cla))
    if not ctx.is_sidecar:
        for name, oc in sni_dnat_clusters(ctx):
            if only is not None and (oc.service.hostname, oc.service.namespace) not in only:
                continue
            eps = subset_endpoints(oc, ctx.snapshot.endpoints_for(oc.service, oc.port.port))
            eps = local_mtls_endpoints(ctx, eps)
            cla = load_assignment(name, eps, ctx.snapshot)
            apply_endpoint_policy(ctx, oc, cla, eps)
            out.append((name, cla))
    return sorted(out, key=lambda item: item[0])
