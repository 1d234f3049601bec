"""A connected proxy's identity, parsed from its Envoy node id and metadata.

Istio node ids have exactly four parts: ``TYPE~IP~POD.NAMESPACE~DOMAIN``
(``sidecar~10.1.0.5~reviews-v1-abc.default~default.svc.cluster.local``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from xdsd.model.types import EMPTY_LABELS, frozen_map


class ProxyType(enum.Enum):
    SIDECAR = "sidecar"
    ROUTER = "router"


class InterceptionMode(enum.Enum):
    REDIRECT = "REDIRECT"
    TPROXY = "TPROXY"
    NONE = "NONE"


class NodeIdError(ValueError):
    """The node id or metadata cannot identify a proxy."""


@dataclass(frozen=True)
class Proxy:
    node_id: str
    type: ProxyType
    ip_addresses: tuple[str, ...]
    pod_name: str
    namespace: str
    dns_domain: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    service_account: str = ""
    cluster_id: str = "Kubernetes"
    network: str = ""
    mesh_id: str = ""
    istio_version: str = ""
    workload_name: str = ""
    # The workload's controller, e.g. kubernetes://apis/apps/v1/namespaces/NS/deployments/NAME.
    owner: str = ""
    # The agent's effective ProxyConfig (meshconfig.ProxyConfig as JSON; numbers are floats).
    proxy_config: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    interception_mode: InterceptionMode = InterceptionMode.REDIRECT
    # ISTIO_META_DNS_CAPTURE: the agent answers the pod's DNS from the NDS name table.
    dns_capture: bool = False

    @property
    def uses_auto_allocated_ips(self) -> bool:
        """istiod nodeUsesAutoallocatedIPs: with IP auto-allocation on (its default,
        PILOT_ENABLE_IP_AUTOALLOCATE; ISTIO_META_DNS_AUTO_ALLOCATE asked for it before),
        a proxy that captures DNS resolves and routes ServiceEntry hosts without
        addresses by their allocated addresses."""
        return self.dns_capture

    @property
    def id(self) -> str:
        """Istio's short proxy id, ``POD.NAMESPACE`` (used by debug APIs)."""
        return f"{self.pod_name}.{self.namespace}"

    @property
    def ip(self) -> str:
        return self.ip_addresses[0] if self.ip_addresses else ""


_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Labels istiod adds to a proxy's own (pilot/pkg/xds/ads.go setTopologyLabels, through
# labelutil.AugmentLabels): selectors may name them.
CLUSTER_LABEL = "topology.istio.io/cluster"
NETWORK_LABEL = "topology.istio.io/network"


def _str(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def _bool(meta: Mapping[str, Any], key: str) -> bool:
    # Istio's StringBool: "true"/"false" (any case) or a JSON boolean.
    value = meta.get(key)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _object(meta: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    raw = meta.get(key)
    if isinstance(raw, str):  # some agents send objects as JSON strings
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    return raw if isinstance(raw, Mapping) else None


def _labels(meta: Mapping[str, Any], cluster_id: str, network: str) -> Mapping[str, str]:
    raw = _object(meta, "LABELS") or {}
    labels = {str(k): str(v) for k, v in raw.items()}
    # pilot-agent sends the pod's labels; istiod adds the proxy's cluster (and its
    # network, unless a label names one) before matching selectors.
    if cluster_id:
        labels[CLUSTER_LABEL] = cluster_id
    if network and not labels.get(NETWORK_LABEL):
        labels[NETWORK_LABEL] = network
    return frozen_map(labels) if labels else EMPTY_LABELS


def parse_proxy(node_id: str, metadata: Mapping[str, Any] | None = None) -> Proxy:
    """Parse an Istio node id plus metadata; raise NodeIdError with the reason."""
    meta: Mapping[str, Any] = metadata or {}
    parts = node_id.split("~")
    if len(parts) != 4:
        raise NodeIdError(
            f"node id {node_id!r} must have 4 parts TYPE~IP~POD.NAMESPACE~DOMAIN, "
            f"found {len(parts)}"
        )
    type_s, ip, pod_ns, domain = parts
    try:
        ptype = ProxyType(type_s)
    except ValueError:
        raise NodeIdError(
            f"node id {node_id!r}: type {type_s!r} is not one of sidecar, router"
        ) from None
    pod, _, ns_from_id = pod_ns.partition(".")
    # Istio: namespace from metadata, else the first label of the DNS domain.
    namespace = _str(meta, "NAMESPACE") or domain.split(".")[0] or ns_from_id
    if not namespace:
        raise NodeIdError(f"node id {node_id!r}: no namespace in metadata, id or domain")
    ips: list[str] = []
    instance_ips = _str(meta, "INSTANCE_IPS")
    if instance_ips:
        ips.extend(a.strip() for a in instance_ips.split(",") if a.strip())
    if ip and ip not in ips:
        ips.insert(0, ip)
    mode_s = _str(meta, "INTERCEPTION_MODE") or "REDIRECT"
    try:
        mode = InterceptionMode(mode_s)
    except ValueError:
        raise NodeIdError(
            f"node metadata INTERCEPTION_MODE {mode_s!r} is not one of REDIRECT, TPROXY, NONE"
        ) from None
    cluster_id = _str(meta, "CLUSTER_ID") or "Kubernetes"
    network = _str(meta, "NETWORK")
    return Proxy(
        node_id=node_id,
        type=ptype,
        ip_addresses=tuple(ips),
        pod_name=pod,
        namespace=namespace,
        dns_domain=domain,
        labels=_labels(meta, cluster_id, network),
        service_account=_str(meta, "SERVICE_ACCOUNT"),
        cluster_id=cluster_id,
        network=network,
        mesh_id=_str(meta, "MESH_ID"),
        istio_version=_str(meta, "ISTIO_VERSION"),
        workload_name=_str(meta, "WORKLOAD_NAME"),
        owner=_str(meta, "OWNER"),
        proxy_config=MappingProxyType(dict(_object(meta, "PROXY_CONFIG") or {})),
        interception_mode=mode,
        dns_capture=_bool(meta, "DNS_CAPTURE"),
    )
