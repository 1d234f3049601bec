"""A connected proxy's identity, parsed from its Envoy node id and metadata.

Istio node ids have exactly four parts: ``TYPE~IP~POD.NAMESPACE~DOMAIN``
(``sidecar~10.1.0.5~reviews-v1-abc.default~default.svc.cluster.local``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    interception_mode: InterceptionMode = InterceptionMode.REDIRECT

    @property
    def id(self) -> str:
        """Istio's short proxy id, ``POD.NAMESPACE`` (used by debug APIs)."""
        return f"{self.pod_name}.{self.namespace}"

    @property
    def ip(self) -> str:
        return self.ip_addresses[0] if self.ip_addresses else ""


def _str(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def _labels(meta: Mapping[str, Any]) -> Mapping[str, str]:
    raw = meta.get("LABELS")
    if isinstance(raw, str):  # some agents send LABELS as a JSON string
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, Mapping):
        return EMPTY_LABELS
    return frozen_map({str(k): str(v) for k, v in raw.items()})


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
    return Proxy(
        node_id=node_id,
        type=ptype,
        ip_addresses=tuple(ips),
        pod_name=pod,
        namespace=namespace,
        dns_domain=domain,
        labels=_labels(meta),
        service_account=_str(meta, "SERVICE_ACCOUNT"),
        cluster_id=_str(meta, "CLUSTER_ID") or "Kubernetes",
        network=_str(meta, "NETWORK"),
        mesh_id=_str(meta, "MESH_ID"),
        istio_version=_str(meta, "ISTIO_VERSION"),
        workload_name=_str(meta, "WORKLOAD_NAME"),
        interception_mode=mode,
    )
