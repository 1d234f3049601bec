"""Networks and their east-west gateways, as istiod's network manager sees them.

An endpoint's network is, in istiod's order: its Pod's `topology.istio.io/network`
label (or its namespace's, or its cluster's system namespace's: `build.py` sets
these), else MeshNetworks (`endpoints.fromRegistry` naming its cluster, else the
narrowest `fromCidr` holding its address).

Gateways (pilot/pkg/serviceregistry/kube/controller/network.go, model/network.go):

- a Service labelled `topology.istio.io/network` is that network's gateway on port
  `networking.istio.io/gatewayPort` (15443), if the Service has that port;
- MeshNetworks `gateways.registryServiceName` (+ `port`) names a Service of the
  clusters the same network lists in `fromRegistry`;
- MeshNetworks `gateways.address` (+ `port`) is a gateway of no cluster.

A Service gateway is reached at its external addresses (LoadBalancer ingress, then
externalIPs), one gateway per address, in the Service's own cluster. Hostnames are
not resolved (istiod with RESOLVE_HOSTNAME_GATEWAYS off): such a gateway is reported
and not used. Multi-network is on once any gateway exists (IsMultiNetworkEnabled).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from xdsd.model import fields as f
from xdsd.model.meshconfig import (
    NETWORKS_KEY,
    configmap_error,
    mesh_configmap,
    mesh_networks_doc,
)
from xdsd.model.parse import DEFAULT_CLUSTER_ID
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError, Endpoint, Service

NETWORK_LABEL = "topology.istio.io/network"
GATEWAY_PORT_LABEL = "networking.istio.io/gatewayPort"
DEFAULT_GATEWAY_PORT = 15443
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class NetworkGateway:
    """One address:port where a network's endpoints are reached from other networks."""

    address: str
    port: int
    network: str
    cluster: str  # "" for a MeshNetworks `address` gateway (istiod gives it none)
    source: str = field(default="", compare=False)  # what defined it, for debug output


@dataclass(frozen=True)
class EndpointRule:
    from_cidr: str = ""
    from_registry: str = ""


@dataclass(frozen=True)
class GatewayRule:
    port: int
    registry_service_name: str = ""
    address: str = ""


@dataclass(frozen=True)
class MeshNetwork:
    name: str
    path: str  # its field path, e.g. data.meshNetworks.networks.network1
    endpoints: tuple[EndpointRule, ...] = ()
    gateways: tuple[GatewayRule, ...] = ()


@dataclass(frozen=True)
class MeshNetworks:
    networks: tuple[MeshNetwork, ...] = ()
    # (field path below data.meshNetworks, message, severity)
    problems: tuple[tuple[str, str, str], ...] = ()


def parse_mesh_networks(doc: Mapping[str, Any]) -> MeshNetworks:
    """MeshNetworks from its YAML: `networks: {NAME: ...}`, or (Helm's `meshNetworks`
    value) the map of networks itself. Bad entries are left out, each reported."""
    iss = f.Issues("")
    base = f"data.{NETWORKS_KEY}"
    if "networks" in doc:
        raw = f.get_map(iss, doc, "networks", base)
        base = f.join(base, "networks")
    else:
        raw = doc
    out: list[MeshNetwork] = []
    for name in sorted(raw or {}, key=str):
        where = f.join(base, name)
        spec = raw[name] if raw else None
        if not isinstance(spec, Mapping):
            iss.error(
                where, f"must be a mapping with endpoints and gateways, not a {f.type_name(spec)}"
            )
            continue
        for key in sorted(set(spec) - {"endpoints", "gateways"}, key=str):
            iss.warn(f.join(where, key), "unknown field; ignored")
        out.append(
            MeshNetwork(
                str(name),
                where,
                _endpoint_rules(iss, spec, where),
                _gateway_rules(iss, spec, where),
            )
        )
    problems = tuple((p.path, p.message, p.severity) for p in iss.errors)
    return MeshNetworks(tuple(out), problems)


def _endpoint_rules(iss: f.Issues, spec: Mapping[Any, Any], where: str) -> tuple[EndpointRule, ...]:
    out: list[EndpointRule] = []
    for at, e in f.items(
        iss, f.get_list(iss, spec, "endpoints", where), f.join(where, "endpoints")
    ):
        cidr = f.get_str(iss, e, "fromCidr", at) or ""
        registry = f.get_str(iss, e, "fromRegistry", at) or ""
        if bool(cidr) == bool(registry):
            iss.error(at, "needs exactly one of fromCidr and fromRegistry")
            continue
        if cidr:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                iss.error(f.join(at, "fromCidr"), f"{cidr!r} is not a CIDR")
                continue
        if registry and not f.is_dns1123_label(registry):
            iss.error(f.join(at, "fromRegistry"), f"invalid registry name: {registry!r}")
            continue
        out.append(EndpointRule(cidr, registry))
    return tuple(out)


def _gateway_rules(iss: f.Issues, spec: Mapping[Any, Any], where: str) -> tuple[GatewayRule, ...]:
    out: list[GatewayRule] = []
    for at, g in f.items(iss, f.get_list(iss, spec, "gateways", where), f.join(where, "gateways")):
        name = f.get_str(iss, g, "registryServiceName", at) or ""
        address = f.get_str(iss, g, "address", at) or ""
        port = f.get_port(iss, g, "port", at, required=True)
        if "locality" in g:
            iss.warn(f.join(at, "locality"), "not used (istiod does not use it either)")
        if bool(name) == bool(address):
            iss.error(at, "needs exactly one of registryServiceName and address")
            continue
        if name and not (f.is_hostname(name) and "." in name):
            iss.error(f.join(at, "registryServiceName"), f"{name!r} is not a fully qualified name")
            continue
        if address and not f.is_ip(address):
            if f.is_hostname(address):
                iss.warn(
                    f.join(at, "address"),
                    f"hostname {address!r} is not resolved by xdsd; this gateway is not used",
                )
            else:
                iss.error(f.join(at, "address"), f"{address!r} is not an IP address or DNS name")
            continue
        if port is None:
            continue
        out.append(GatewayRule(port, name, address))
    return tuple(out)


@dataclass(frozen=True)
class NetworkView:
    """The mesh's networks at one snapshot (istiod's NetworkManager), built once."""

    gateways: tuple[NetworkGateway, ...] = ()  # usable ones, sorted (address, port)
    by_network: Mapping[str, tuple[NetworkGateway, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    by_network_cluster: Mapping[tuple[str, str], tuple[NetworkGateway, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # istiod's weight scale: the least common multiple of the gateway counts per
    # network and per (network, cluster), so each endpoint's weight splits evenly.
    scale: int = 1
    registry_networks: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cidrs: tuple[tuple[_Net, str], ...] = ()  # narrowest first
    mesh_networks: MeshNetworks = field(default_factory=MeshNetworks)
    problems: tuple[ConfigError, ...] = ()

    @property
    def enabled(self) -> bool:
        """Split-horizon EDS is on (istiod: some network has a gateway)."""
        return bool(self.gateways)

    def network_of(self, ep: Endpoint) -> str:
        if ep.network:
            return ep.network
        by_registry = self.registry_networks.get(ep.cluster_id)
        if by_registry:
            return by_registry
        if self.cidrs:
            try:
                ip = ipaddress.ip_address(ep.address)
            except ValueError:
                return ""
            for net, name in self.cidrs:
                if ip.version == net.version and ip in net:
                    return name
        return ""

    def gateways_for(self, network: str, cluster: str) -> tuple[NetworkGateway, ...]:
        """istiod selectNetworkGateways: the network's gateways in the endpoint's own
        cluster, else all of the network's."""
        return self.by_network_cluster.get((network, cluster)) or self.by_network.get(network, ())


def in_network(proxy_network: str, network: str) -> bool:
    """istiod Proxy.InNetwork: an unset network is everyone's."""
    return not proxy_network or not network or proxy_network == network


def network_view(snapshot: MeshSnapshot) -> NetworkView:
    return snapshot.derived(__name__, _build)


def _build(snapshot: MeshSnapshot) -> NetworkView:
    meshnets = parse_mesh_networks(mesh_networks_doc(snapshot))
    cm = mesh_configmap(snapshot)
    problems: list[ConfigError] = []
    if cm is not None:
        problems.extend(configmap_error(cm, p, m, s) for p, m, s in meshnets.problems)
    registry: dict[str, str] = {}
    cidrs: list[tuple[_Net, str]] = []
    # (service hostname, cluster) -> (network, port) of MeshNetworks registry gateways
    by_service: dict[tuple[str, str], list[tuple[str, int]]] = {}
    gateways: set[NetworkGateway] = set()
    for net in meshnets.networks:
        clusters = [e.from_registry for e in net.endpoints if e.from_registry]
        for cluster in clusters:
            # istiod: the first network naming a registry keeps it (a warning for the rest).
            registry.setdefault(cluster, net.name)
        cidrs.extend(
            (ipaddress.ip_network(e.from_cidr, strict=False), net.name)
            for e in net.endpoints
            if e.from_cidr
        )
        for g in net.gateways:
            if g.address:
                gateways.add(
                    NetworkGateway(g.address, g.port, net.name, "", f"meshNetworks {net.name}")
                )
            for cluster in clusters:
                by_service.setdefault((g.registry_service_name, cluster), []).append(
                    (net.name, g.port)
                )
    for svc in snapshot.external_services:
        gateways.update(_service_gateways(svc, by_service, problems))
    usable = tuple(sorted(gateways))
    by_net: dict[str, list[NetworkGateway]] = {}
    by_net_cluster: dict[tuple[str, str], list[NetworkGateway]] = {}
    for gw in usable:
        by_net.setdefault(gw.network, []).append(gw)
        by_net_cluster.setdefault((gw.network, gw.cluster), []).append(gw)
    scale = 1
    for group in (*by_net.values(), *by_net_cluster.values()):
        scale = math.lcm(scale, len(group))
    return NetworkView(
        gateways=usable,
        by_network=MappingProxyType({k: tuple(v) for k, v in by_net.items()}),
        by_network_cluster=MappingProxyType({k: tuple(v) for k, v in by_net_cluster.items()}),
        scale=scale,
        registry_networks=MappingProxyType(registry),
        cidrs=tuple(sorted(cidrs, key=lambda c: -c[0].prefixlen)),
        mesh_networks=meshnets,
        problems=tuple(problems),
    )


def _service_gateways(
    svc: Service,
    by_service: Mapping[tuple[str, str], list[tuple[str, int]]],
    problems: list[ConfigError],
) -> list[NetworkGateway]:
    cluster = svc.clusters[0] if svc.clusters else DEFAULT_CLUSTER_ID
    who = f"Service {svc.namespace}/{svc.name}"
    wanted: list[tuple[str, int]] = []
    network = svc.labels.get(NETWORK_LABEL, "")
    if network:
        port = DEFAULT_GATEWAY_PORT
        raw = svc.labels.get(GATEWAY_PORT_LABEL, "")
        if raw:
            if raw.isdigit() and 0 < int(raw) < 65536:
                port = int(raw)
            else:
                problems.append(
                    ConfigError(
                        svc.ref.source,
                        who,
                        f"metadata.labels[{GATEWAY_PORT_LABEL}]",
                        f"{raw!r} is not a port; using {DEFAULT_GATEWAY_PORT}",
                        "warning",
                    )
                )
        if svc.port_by_number(port) is None:
            problems.append(
                ConfigError(
                    svc.ref.source,
                    who,
                    "spec.ports",
                    f"labelled {NETWORK_LABEL}={network} but has no port {port}: "
                    "not a gateway of that network",
                    "warning",
                )
            )
            return []
        wanted.append((network, port))
    else:
        wanted.extend(by_service.get((svc.hostname, cluster), ()))
    out: list[NetworkGateway] = []
    for net, port in wanted:
        for addr in svc.external_addresses:
            if not f.is_ip(addr):
                problems.append(
                    ConfigError(
                        svc.ref.source,
                        who,
                        "status.loadBalancer.ingress",
                        f"hostname {addr!r} is not resolved by xdsd; "
                        f"not used as a gateway of network {net}",
                        "warning",
                    )
                )
                continue
            out.append(NetworkGateway(addr, port, net, cluster, f"{who} in cluster {cluster}"))
    return out


def network_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    """MeshNetworks and gateway Service problems, each with its field path."""
    view = network_view(snapshot)
    problems = list(view.problems)
    found = {s.hostname for s in snapshot.external_services}
    cm = mesh_configmap(snapshot)
    if cm is not None:
        for net in view.mesh_networks.networks:
            for i, g in enumerate(net.gateways):
                name = g.registry_service_name
                if name and name not in found:
                    problems.append(
                        configmap_error(
                            cm,
                            f"{net.path}.gateways[{i}].registryServiceName",
                            f"no Service {name} with an external address "
                            "(LoadBalancer ingress, externalIPs) yet",
                            "warning",
                        )
                    )
    return problems


def describe_networks(snapshot: MeshSnapshot) -> dict[str, Any]:
    """/debug/networkz: each network with its gateways and the endpoints it holds."""
    view = network_view(snapshot)
    counts: dict[str, int] = {}
    clusters: dict[str, set[str]] = {}
    for eps in snapshot.endpoints.values():
        for ep in eps:
            net = view.network_of(ep)
            counts[net] = counts.get(net, 0) + 1
            clusters.setdefault(net, set()).add(ep.cluster_id)
    names = sorted(
        set(counts) | set(view.by_network) | {n.name for n in view.mesh_networks.networks}
    )
    return {
        "splitHorizon": view.enabled,
        "weightScale": view.scale,
        "clusterNetworks": dict(sorted(snapshot.cluster_networks.items())),
        "meshNetworks": {
            "fromRegistry": dict(sorted(view.registry_networks.items())),
            "fromCidr": [{"cidr": str(net), "network": name} for net, name in view.cidrs],
        },
        "networks": [
            {
                "network": name,  # "" : endpoints without a network (everyone's)
                "endpoints": counts.get(name, 0),
                "clusters": sorted(clusters.get(name, ())),
                "gateways": [
                    {
                        "address": g.address,
                        "port": g.port,
                        "cluster": g.cluster,
                        "source": g.source,
                    }
                    for g in view.by_network.get(name, ())
                ],
            }
            for name in names
        ],
        "problems": [str(p) for p in network_problems(snapshot)],
    }
