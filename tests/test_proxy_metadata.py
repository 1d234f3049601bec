"""Node metadata as a real pilot-agent sends it, parsed as istiod does.

`REAL` is what pilot-agent (Istio 1.31-dev, built by tools/istio/build.sh) sent
xdsd in tests/test_istio_proxy.py, ports aside: objects are JSON Structs, so
numbers arrive as floats; LABELS come from the downward API file; the
injector's ISTIO_META_* become top-level keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.meshgen import istio_config, write_docs
from xdsd.model.proxy import CLUSTER_LABEL, NETWORK_LABEL, InterceptionMode, parse_proxy
from xdsd.offline import load_snapshot
from xdsd.translate.sidecar_scope import scope_for

NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
REAL: dict[str, Any] = {
    "LABELS": {"version": "v1", "app": "client"},
    "CLUSTER_ID": "remote-1",
    "DNS_PROXY_ADDR": "127.0.0.1:34841",
    "NAMESPACE": "shop",
    "METADATA_DISCOVERY": "false",
    "ANNOTATIONS": {"traffic.sidecar.istio.io/excludeInterfaces": "eth0"},
    "INTERCEPTION_MODE": "NONE",
    "PROXY_CONFIG": {
        "drainDuration": "1s",
        "proxyAdminPort": 36419.0,
        "statNameLength": 189.0,
        "serviceCluster": "istio-proxy",
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "concurrency": 1.0,
        "discoveryAddress": "127.0.0.1:32845",
        "terminationDrainDuration": "0s",
        "configPath": "./etc/istio/proxy",
        "statusPort": 50895.0,
    },
    "NAME": "client-0",
    "ENVOY_STATUS_PORT": 58605.0,
    "WORKLOAD_IDENTITY_SOCKET_FILE": "socket",
    "PILOT_SAN": ["127.0.0.1"],
    "ISTIO_VERSION": "1.31-dev",
    "OWNER": "kubernetes://apis/apps/v1/namespaces/shop/deployments/client",
    "ENVOY_SKIP_DEPRECATED_LOGS": "true",
    "ENVOY_PROMETHEUS_PORT": 46617.0,
    "MESH_ID": "mesh1",
    "INSTANCE_IPS": "127.0.0.1",
    "SERVICE_ACCOUNT": "client",
    "WORKLOAD_NAME": "client",
}


def test_the_real_agents_metadata_is_parsed() -> None:
    proxy = parse_proxy(NODE, REAL)
    assert proxy.id == "client-0.shop" and proxy.namespace == "shop"
    assert proxy.ip_addresses == ("127.0.0.1",)
    assert proxy.interception_mode is InterceptionMode.NONE
    assert proxy.cluster_id == "remote-1"
    assert proxy.mesh_id == "mesh1"
    assert proxy.istio_version == "1.31-dev"
    assert proxy.workload_name == "client"
    assert proxy.service_account == "client"
    assert proxy.owner == "kubernetes://apis/apps/v1/namespaces/shop/deployments/client"
    assert proxy.proxy_config["discoveryAddress"] == "127.0.0.1:32845"
    assert proxy.proxy_config["statusPort"] == 50895
    # The pod's labels plus the cluster label istiod adds (setTopologyLabels).
    assert dict(proxy.labels) == {"app": "client", "version": "v1", CLUSTER_LABEL: "remote-1"}


def test_topology_labels_as_istiod_adds_them() -> None:
    proxy = parse_proxy(NODE, {"LABELS": {"app": "a"}, "NETWORK": "net-1"})
    assert dict(proxy.labels) == {
        "app": "a",
        CLUSTER_LABEL: "Kubernetes",  # istiod's default cluster id
        NETWORK_LABEL: "net-1",
    }
    # A pod's own network label wins over NETWORK.
    proxy = parse_proxy(NODE, {"LABELS": {NETWORK_LABEL: "net-2"}, "NETWORK": "net-1"})
    assert proxy.labels[NETWORK_LABEL] == "net-2"
    # Objects as JSON strings (older agents) are read too.
    proxy = parse_proxy(NODE, {"LABELS": '{"app": "b"}', "PROXY_CONFIG": '{"concurrency": 2}'})
    assert proxy.labels["app"] == "b" and proxy.proxy_config == {"concurrency": 2}


async def test_a_sidecar_selecting_the_cluster_label_applies_to_the_real_agent(
    tmp_path: Path,
) -> None:
    """workloadSelector on topology.istio.io/cluster selects a proxy by its CLUSTER_ID,
    as with istiod (the agent does not send that label itself)."""
    write_docs(
        tmp_path / "mesh.yaml",
        [
            istio_config(
                "Sidecar",
                "remote-only",
                "shop",
                {
                    "workloadSelector": {"labels": {CLUSTER_LABEL: "remote-1"}},
                    "egress": [{"hosts": ["./*"]}],
                },
            )
        ],
    )
    snapshot = await load_snapshot(tmp_path)
    assert scope_for(snapshot, parse_proxy(NODE, REAL)).name == "remote-only"
    other = dict(REAL, CLUSTER_ID="config-1")
    assert scope_for(snapshot, parse_proxy(NODE, other)).name == "default-sidecar"
