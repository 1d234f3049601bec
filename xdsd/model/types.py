"""Immutable values of the mesh model: neither Kubernetes objects nor Envoy protos.

Every stage after `sources/` reads these. They are frozen so a snapshot can be
shared by concurrent pushes without copies or locks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})
# Set by Istio's injector on pods with a sidecar: clients send them mTLS (auto mTLS).
TLS_MODE_LABEL = "security.istio.io/tlsMode"


def frozen_map(values: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy of a label/annotation map (shared empty map for none)."""
    if not values:
        return EMPTY_LABELS
    return MappingProxyType(dict(values))


class Protocol(enum.Enum):
    """Port protocols as Istio names them (see istio.io "protocol selection")."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    UDP = "UDP"
    MONGO = "Mongo"
    MYSQL = "MySQL"
    REDIS = "Redis"
    # Unnamed / unknown ports: Istio sniffs the protocol on the connection.
    AUTO = "auto"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_http2(self) -> bool:
        """Upstream speaks HTTP/2 (the cluster gets HTTP/2 protocol options)."""
        return self in (Protocol.HTTP2, Protocol.GRPC)


class Resolution(enum.Enum):
    """How a client finds the addresses of a service (ServiceEntry.resolution)."""

    STATIC = "STATIC"  # endpoints known to the control plane (Kubernetes, STATIC SE) -> EDS
    DNS = "DNS"  # Envoy resolves the hosts (STRICT_DNS)
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"  # LOGICAL_DNS
    NONE = "NONE"  # pass through to the original destination


class Location(enum.Enum):
    MESH_INTERNAL = "MESH_INTERNAL"
    MESH_EXTERNAL = "MESH_EXTERNAL"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where a config object came from: enough to name it in an error or status."""

    kind: str
    namespace: str
    name: str
    source: str = ""  # e.g. "examples/mesh.yaml#2" (file and document index)

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}{where}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol
    # Kubernetes targetPort: a number, a container port name, or None (= port).
    target_port: int | str | None = None


@dataclass(frozen=True, slots=True)
class AddressView:
    """Which addresses of a service a proxy sees (istiod GetAllAddressesForProxy): its own
    cluster's ClusterIPs, and auto-allocated ServiceEntry addresses when its agent
    captures DNS. The default view is the addresses every proxy shares."""

    cluster_id: str = ""
    auto_allocated: bool = False
    # The proxy's IP family ("v4", "v6", "dual"): which allocated addresses it gets.
    ip_family: str = "dual"


@dataclass(frozen=True)
class Service:
    """A service as Istio's registry knows it: a Kubernetes Service or a ServiceEntry host."""

    hostname: str  # FQDN, e.g. "reviews.default.svc.cluster.local", or a SE host (may be "*.x.com")
    namespace: str
    name: str  # Kubernetes name, or the ServiceEntry's name
    ports: tuple[ServicePort, ...]
    ref: ObjectRef
    # ClusterIP (Kubernetes) or SE addresses; empty for headless/none.
    addresses: tuple[str, ...] = ()
    resolution: Resolution = Resolution.STATIC
    location: Location = Location.MESH_INTERNAL
    # exportTo values: "*" (all), "." (own namespace), "~" (none), or namespace names.
    export_to: frozenset[str] = frozenset({"*"})
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    # Label selector for workloads (Kubernetes spec.selector / SE workloadSelector).
    selector: Mapping[str, str] | None = None
    # Kubernetes Service of type ExternalName: its DNS target.
    external_name: str | None = None
    headless: bool = False
    # Kubernetes clusters defining this Service (merged by hostname across clusters);
    # empty for ServiceEntries and for config read from a folder.
    clusters: tuple[str, ...] = ()
    # Each cluster's own ClusterIPs where they differ from `addresses` (the first
    # cluster's): istiod gives a proxy its own cluster's VIP of a multi-cluster Service.
    cluster_addresses: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # A ServiceEntry host without addresses: the IPv4 and IPv6 address allocated to it
    # (istiod's IP auto-allocation, xdsd.model.autoalloc). Only proxies whose agent
    # captures DNS use them: they resolve the host to these and get listeners on them.
    auto_addresses: tuple[str, ...] = ()

    def addresses_for(self, view: AddressView) -> tuple[str, ...]:
        """The service's addresses as a proxy with this view sees them."""
        for cid, addrs in self.cluster_addresses:
            if cid == view.cluster_id:
                return addrs
        if not self.addresses and view.auto_allocated:
            if view.ip_family == "dual":
                return self.auto_addresses
            v6 = view.ip_family == "v6"
            return tuple(a for a in self.auto_addresses if (":" in a) == v6)
        return self.addresses

    def port_by_number(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None

    def port_by_name(self, name: str) -> ServicePort | None:
        for p in self.ports:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True)
class Endpoint:
    """One address:port serving one port of one service."""

    address: str  # IP, or a hostname for DNS ServiceEntries
    port: int  # the port the workload listens on (target port resolved)
    service_port: int  # the service port this endpoint serves
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    service_account: str = ""  # "" when unknown
    namespace: str = ""
    workload_name: str = ""
    cluster_id: str = "Kubernetes"
    network: str = ""
    locality: Locality = Locality()
    healthy: bool = True
    weight: int = 1


@dataclass(frozen=True)
class Workload:
    """A Pod or a WorkloadEntry: something a proxy can run beside."""

    name: str
    namespace: str
    address: str
    ref: ObjectRef
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    service_account: str = "default"
    ready: bool = True
    # Pod container ports by name, for resolving named targetPorts.
    named_ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # WorkloadEntry ports override (port name -> number).
    port_overrides: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    cluster_id: str = "Kubernetes"
    network: str = ""
    locality: Locality = Locality()
    weight: int = 1
    # The owning workload (a Deployment's name for its pods); "" = same as name.
    workload_name: str = ""
    # The Node a Pod runs on (spec.nodeName): its topology labels give the locality.
    node_name: str = ""


@dataclass(frozen=True)
class ConfigObject:
    """An Istio config object kept as validated-but-untranslated spec.

    Later stages (traffic management, security) interpret `spec`. It is a deep
    read-only structure: Mappings are MappingProxyType and lists are tuples.
    """

    ref: ObjectRef
    group: str  # e.g. "networking.istio.io"
    version: str  # e.g. "v1"
    spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    annotations: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    generation: int = 0
    # metadata.creationTimestamp (RFC 3339, "" when absent): Istio resolves conflicts
    # between equal policies by age, oldest first (`istio_order`).
    created: str = ""
    # The typed, validated form (xdsd.model.istio.*) for kinds that have one.
    # Derived from spec, so it takes no part in equality.
    typed: Any = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True, slots=True)
class ConfigError:
    """A problem with one config object, named precisely enough to fix it."""

    source: str  # file path and document index, or "cluster/namespace" for Kubernetes
    object: str  # "Kind namespace/name", or "" when the document has none
    path: str  # field path, e.g. "spec.ports[0].port"
    message: str
    severity: str = "error"  # "error" | "warning" (unsupported field, unknown kind)

    def __str__(self) -> str:
        # "SOURCE: OBJECT at PATH: MESSAGE", leaving out the parts a problem lacks.
        where = " ".join(p for p in (self.object, f"at {self.path}" if self.path else "") if p)
        return (
            f"{self.source}: {where}: {self.message}" if where else f"{self.source}: {self.message}"
        )
