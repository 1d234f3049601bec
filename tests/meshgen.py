"""Builders for Kubernetes/Istio YAML documents used by the tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


def service(
    name: str,
    ns: str,
    ports: Iterable[tuple[str, int]] | Iterable[tuple[str, int, int | str]],
    *,
    selector: Mapping[str, str] | None = None,
    cluster_ip: str = "",
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    spec_ports = []
    for p in ports:
        entry: dict[str, Any] = {"name": p[0], "port": p[1]}
        if len(p) > 2:
            entry["targetPort"] = p[2]  # type: ignore[misc]
        spec_ports.append(entry)
    spec: dict[str, Any] = {"ports": spec_ports}
    if selector is not None:
        spec["selector"] = dict(selector)
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def pod(
    name: str,
    ns: str,
    ip: str,
    labels: Mapping[str, str],
    *,
    ports: Mapping[str, int] | None = None,
    ready: bool = True,
    service_account: str = "default",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [
                {
                    "name": "app",
                    "ports": [{"name": k, "containerPort": v} for k, v in (ports or {}).items()],
                }
            ],
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def endpoint_slice(
    name: str, ns: str, service_name: str, port_name: str, port: int, ips: Iterable[str]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def write_docs(path: Path, docs: Iterable[Mapping[str, Any]]) -> Path:
    """Write documents atomically (rename) so a poller never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    tmp.replace(path)
    return path


def istio_config(
    kind: str,
    name: str,
    ns: str,
    spec: Mapping[str, Any],
    *,
    api_version: str = "networking.istio.io/v1",
) -> dict[str, Any]:
    """An Istio config object (VirtualService, DestinationRule, Gateway, Sidecar, ...)."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": dict(spec),
    }


def tls_secret(
    name: str, ns: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None = None
) -> dict[str, Any]:
    """A kubernetes.io/tls Secret (what a Gateway's credentialName names); `ca_pem`
    adds ca.crt, the client CA of a MUTUAL server."""
    import base64

    data = {"tls.crt": cert_pem, "tls.key": key_pem}
    if ca_pem is not None:
        data["ca.crt"] = ca_pem
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
