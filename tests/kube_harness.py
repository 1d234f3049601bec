"""Helpers for running xdsd against KubeApiServer instances (one per cluster).

Objects look as a real cluster has them: Services, Pods scheduled on Nodes with
topology labels, EndpointSlices (there is no controller in the test server, so
the tests write them) whose endpoints name their Pod and Node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.kube.apiserver import KubeApiServer
from tests.meshgen import pod, service
from xdsd.app import AppSettings, XdsdApp
from xdsd.ca.authority import DevCerts
from xdsd.push.debounce import DebounceSettings
from xdsd.security import SecuritySettings
from xdsd.server.grpc_server import GrpcSettings
from xdsd.sources.kube import Backoff

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
# Fast, deterministic reconnects (no jitter) for tests.
TEST_BACKOFF = Backoff(initial=0.05, maximum=0.4, jitter=0.0)


def kube_settings(
    tmp_path: Path,
    api: KubeApiServer,
    *,
    cluster_id: str = "main",
    xds_port: int = 0,
    **kw: Any,
) -> AppSettings:
    """Settings for xdsd reading the config cluster `api` through a kubeconfig file."""
    kubeconfig = tmp_path / f"{cluster_id}.kubeconfig"
    kubeconfig.write_text(api.kubeconfig_yaml(cluster_id))
    defaults: dict[str, Any] = {
        "xds": GrpcSettings(port=xds_port, shutdown_grace_s=0.2),
        "admin_port": 0,
        "poll_interval": 0.05,
        "debounce": DebounceSettings(quiet=0.02, max_delay=1.0),
        "remote_sync_timeout": 10.0,
        "kube_backoff": TEST_BACKOFF,
    }
    defaults.update(kw)
    return AppSettings(kubeconfig=kubeconfig, cluster_id=cluster_id, **defaults)


def node(name: str, region: str, zone: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {REGION: region, ZONE: zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def namespace(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
    }


def kube_pod(
    name: str, ns: str, ip: str, labels: Mapping[str, str], node_name: str
) -> dict[str, Any]:
    doc = pod(name, ns, ip, labels)
    doc["spec"]["nodeName"] = node_name
    doc["status"]["phase"] = "Running"
    return doc


def endpoint_slice(
    name: str,
    ns: str,
    service_name: str,
    port_name: str,
    port: int,
    endpoints: Sequence[tuple[str, str, str]],
) -> dict[str, Any]:
    """An EndpointSlice as the controller writes it; endpoints are (ip, pod, node)."""
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
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod_name, "namespace": ns},
                "nodeName": node_name,
            }
            for ip, pod_name, node_name in endpoints
        ],
    }


def workload(
    api: KubeApiServer,
    *,
    svc: str,
    ns: str,
    port_name: str,
    port: int,
    pods: Iterable[tuple[str, str, str]],
    slice_name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """A Service with its Pods (name, ip, node) and their EndpointSlice in one cluster."""
    pods = list(pods)
    selector = {"app": svc}
    api.apply(service(svc, ns, [(port_name, port)], selector=selector))
    for name, ip, node_name in pods:
        api.apply(kube_pod(name, ns, ip, {**selector, **(labels or {})}, node_name))
    api.apply(
        endpoint_slice(
            slice_name or f"{svc}-1",
            ns,
            svc,
            port_name,
            port,
            [(ip, name, node_name) for name, ip, node_name in pods],
        )
    )


def established_connections(port: int) -> int:
    """Open client TCP connections of this process's host to 127.0.0.1:`port` (Linux)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def metric(app: XdsdApp, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def cluster_state(app: XdsdApp, cluster_id: str) -> dict[str, Any] | None:
    for st in app.clusterz()["clusters"]:
        if st["cluster"] == cluster_id:
            return dict(st)
    return None


def endpoints_of(app: XdsdApp, hostname: str) -> dict[str, str]:
    """address:port -> cluster, for a service in the current snapshot."""
    out: dict[str, str] = {}
    for svc in app.registryz():
        if svc["hostname"] == hostname:
            for port in svc["ports"]:
                for ep in port["endpoints"]:
                    out[ep["address"]] = ep["cluster"]
    return out


_ENVOY_HOST = re.compile(r"^(?P<cluster>[^:]+)::(?P<addr>[\d.]+:\d+)::(?P<key>\w+)::(?P<value>.*)$")


def envoy_hosts(clusters_text: str, cluster_name: str) -> dict[str, dict[str, str]]:
    """Envoy /clusters (text): address -> {health_flags, zone, region, ...} of one cluster."""
    out: dict[str, dict[str, str]] = {}
    for line in clusters_text.splitlines():
        m = _ENVOY_HOST.match(line)
        if m and m["cluster"] == cluster_name:
            out.setdefault(m["addr"], {})[m["key"]] = m["value"]
    return out


def ca_settings(
    config_dir: Path, certs: DevCerts, token_review_kubeconfig: Path, xds: GrpcSettings, **kw: Any
) -> AppSettings:
    """xdsd on a config folder with its CA (the dev certs' root) and TokenReview against a
    test API server: what real pilot-agents and istioctl talk to, in the Istio tests."""
    defaults: dict[str, Any] = {
        "admin_port": -1,
        "poll_interval": 0.05,
        "debounce": DebounceSettings(quiet=0.02, max_delay=1.0),
    }
    defaults.update(kw)
    return AppSettings(
        config_dir=config_dir,
        xds=xds,
        security=SecuritySettings(
            authenticate=True,
            ca_cert_file=certs.root_cert,
            ca_key_file=certs.root_key,
            token_review_kubeconfig=token_review_kubeconfig,
        ),
        **defaults,
    )
