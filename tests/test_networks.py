"""Multi-network: networks, east-west gateways and split-horizon EDS (istiod semantics).

Two clusters as the Kubernetes source fills their stores: `c1` (network n1, the config
cluster) and `c2` (network n2). A sidecar in n1 gets n1's endpoints directly and one
endpoint per n2 gateway, weighted by n2's endpoints behind it, with `tlsMode: istio`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import yaml
from envoy.config.endpoint.v3 import endpoint_pb2

from tests.meshgen import endpoint_slice, istio_config, pod, service
from tests.test_build_multicluster import kube_store, namespace
from xdsd.model.build import build_snapshot
from xdsd.model.networks import network_problems, network_view, parse_mesh_networks
from xdsd.model.proxy import Proxy, parse_proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.translate.generate import ENDPOINT_TYPE, GENERATORS, parts, proxy_context

NS = "shop"
HOST = f"reviews.{NS}.svc.cluster.local"
NET = "topology.istio.io/network"
SIDECAR = {"security.istio.io/tlsMode": "istio"}
CLUSTER = f"outbound|9080||{HOST}"


def gateway_service(
    network: str | None,
    *,
    lb: Sequence[Mapping[str, str]] = (),
    external_ips: Sequence[str] = (),
    port: int = 15443,
    name: str = "istio-eastwestgateway",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    doc = service(name, "istio-system", [("tls", port)], selector={"istio": "eastwestgateway"})
    doc["metadata"]["labels"] = {**({NET: network} if network else {}), **(labels or {})}
    doc["spec"]["type"] = "LoadBalancer"
    if external_ips:
        doc["spec"]["externalIPs"] = list(external_ips)
    doc["status"] = {"loadBalancer": {"ingress": [dict(i) for i in lb]}}
    return doc


def reviews(ips: Sequence[str], *, mtls: bool = True, slice_name: str = "reviews-1") -> list[Any]:
    docs: list[Any] = [service("reviews", NS, [("http", 9080)], selector={"app": "reviews"})]
    for i, ip in enumerate(ips):
        labels = {"app": "reviews", **(SIDECAR if mtls else {})}
        docs.append(pod(f"{slice_name}-{i}", NS, ip, labels))
    docs.append(endpoint_slice(slice_name, NS, "reviews", "http", 9080, ips))
    return docs


def mesh_networks(networks: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"meshNetworks": yaml.safe_dump({"networks": dict(networks)})},
    }


def build(c1: list[Any], c2: list[Any]) -> MeshSnapshot:
    return build_snapshot(
        kube_store("c1", c1),
        generation=1,
        remotes={"c2": kube_store("c2", c2)},
        config_cluster_id="c1",
    )


def two_networks(
    c1_extra: Sequence[Any] = (),
    c2_extra: Sequence[Any] = (),
    *,
    c1_ips: Sequence[str] = ("10.1.0.1",),
    c2_ips: Sequence[str] = ("10.2.0.1", "10.2.0.2", "10.2.0.3"),
    c2_mtls: bool = True,
) -> MeshSnapshot:
    c1 = [
        namespace("istio-system", {NET: "n1"}),
        *reviews(c1_ips),
        gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
        *c1_extra,
    ]
    c2 = [
        namespace("istio-system", {NET: "n2"}),
        *reviews(c2_ips, mtls=c2_mtls, slice_name="reviews-2"),
        gateway_service("n2", lb=[{"ip": "192.0.2.2"}]),
        *c2_extra,
    ]
    return build(c1, c2)


def proxy(network: str = "n1", cluster: str = "c1", kind: str = "sidecar") -> Proxy:
    ip = "10.1.0.9"
    meta: dict[str, Any] = {"NAMESPACE": NS, "CLUSTER_ID": cluster}
    if network:
        meta["NETWORK"] = network
    return parse_proxy(f"{kind}~{ip}~client-0.{NS}~{NS}.svc.cluster.local", meta)


def cla(s: MeshSnapshot, p: Proxy, name: str = CLUSTER) -> endpoint_pb2.ClusterLoadAssignment:
    out = dict(GENERATORS[ENDPOINT_TYPE](proxy_context(s, p)))
    msg = out[name]
    assert isinstance(msg, endpoint_pb2.ClusterLoadAssignment)
    return msg


def hosts(c: endpoint_pb2.ClusterLoadAssignment) -> dict[str, int]:
    """address:port -> load balancing weight, over every locality group."""
    return {
        f"{lb.endpoint.address.socket_address.address}:"
        f"{lb.endpoint.address.socket_address.port_value}": lb.load_balancing_weight.value
        for g in c.endpoints
        for lb in g.lb_endpoints
    }


def lb_of(c: endpoint_pb2.ClusterLoadAssignment, addr: str) -> Any:
    for g in c.endpoints:
        for lb in g.lb_endpoints:
            sa = lb.endpoint.address.socket_address
            if f"{sa.address}:{sa.port_value}" == addr:
                return lb
    raise AssertionError(f"{addr} not in {hosts(c)}")


def test_own_network_direct_other_network_through_its_gateway_weighted() -> None:
    s = two_networks()
    view = network_view(s)
    assert [(g.address, g.port, g.network, g.cluster) for g in view.gateways] == [
        ("192.0.2.1", 15443, "n1", "c1"),
        ("192.0.2.2", 15443, "n2", "c2"),
    ]
    c = cla(s, proxy("n1"))
    # n1's pod directly; n2's three pods behind one gateway endpoint of weight 3.
    assert hosts(c) == {"10.1.0.1:9080": 1, "192.0.2.2:15443": 3}
    # And the other way round, from n2.
    assert hosts(cla(s, proxy("n2", "c2"))) == {
        "10.2.0.1:9080": 1,
        "10.2.0.2:9080": 1,
        "10.2.0.3:9080": 1,
        "192.0.2.1:15443": 1,
    }


def test_gateway_endpoint_has_istio_tls_mode_and_its_cluster() -> None:
    s = two_networks()
    gw = lb_of(cla(s, proxy("n1")), "192.0.2.2:15443")
    md = gw.metadata.filter_metadata
    assert md["envoy.transport_socket_match"]["tlsMode"] == "istio"
    assert md["istio"]["workload"] == ";;;;c2"
    # The client's cluster speaks mTLS to endpoints with that metadata (auto mTLS).
    clusters = dict(
        GENERATORS["type.googleapis.com/envoy.config.cluster.v3.Cluster"](
            proxy_context(s, proxy("n1"))
        )
    )
    cl = clusters[CLUSTER]
    assert [m.name for m in cl.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]


def test_weights_split_among_several_gateways_scaled_by_their_lcm() -> None:
    # Two gateway addresses for n2 (LoadBalancer IP and an externalIP): each n2
    # endpoint's weight is scaled by lcm(1, 2) = 2 and split between the two.
    c2_gw = gateway_service("n2", lb=[{"ip": "192.0.2.2"}], external_ips=["192.0.2.3"])
    s = build(
        [
            namespace("istio-system", {NET: "n1"}),
            *reviews(["10.1.0.1"]),
            gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
        ],
        [
            namespace("istio-system", {NET: "n2"}),
            *reviews(["10.2.0.1", "10.2.0.2", "10.2.0.3"], slice_name="r2"),
            c2_gw,
        ],
    )
    assert network_view(s).scale == 2
    assert hosts(cla(s, proxy("n1"))) == {
        "10.1.0.1:9080": 2,
        "192.0.2.2:15443": 3,
        "192.0.2.3:15443": 3,
    }


def test_network_without_a_gateway_is_dropped_and_endpoints_without_mtls_too() -> None:
    s = two_networks(c2_mtls=False)
    # n2's pods have no sidecar: SNI routing through a gateway needs mTLS.
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1}
    # Without n2's gateway, its endpoints are unreachable from n1: dropped.
    c2 = [namespace("istio-system", {NET: "n2"}), *reviews(["10.2.0.1"], slice_name="r2")]
    c1 = [
        namespace("istio-system", {NET: "n1"}),
        *reviews(["10.1.0.1"]),
        gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
    ]
    s = build(c1, c2)
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1}
    # n2 still reaches n1 through n1's gateway.
    assert hosts(cla(s, proxy("n2", "c2"))) == {"10.2.0.1:9080": 1, "192.0.2.1:15443": 1}


def test_no_gateway_anywhere_means_one_flat_network() -> None:
    c1 = [namespace("istio-system", {NET: "n1"}), *reviews(["10.1.0.1"])]
    c2 = [namespace("istio-system", {NET: "n2"}), *reviews(["10.2.0.1"], slice_name="r2")]
    s = build(c1, c2)
    assert not network_view(s).enabled
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1, "10.2.0.1:9080": 1}


def test_endpoints_and_proxies_without_a_network() -> None:
    # c2's namespace has no network label: its endpoints are everyone's (istiod).
    c2 = [namespace("istio-system", {}), *reviews(["10.2.0.1"], slice_name="r2")]
    c1 = [
        namespace("istio-system", {NET: "n1"}),
        *reviews(["10.1.0.1"]),
        gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
    ]
    s = build(c1, c2)
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1, "10.2.0.1:9080": 1}
    # A proxy without a network goes through the gateway of a network that has one.
    assert hosts(cla(s, proxy(""))) == {"10.2.0.1:9080": 1, "192.0.2.1:15443": 1}


def test_pod_label_wins_over_the_namespace_network() -> None:
    c2_docs = reviews(["10.2.0.1", "10.2.0.2"], slice_name="r2")
    c2_docs[1]["metadata"]["labels"][NET] = "n1"  # this pod says it is on n1
    s = build(
        [
            namespace("istio-system", {NET: "n1"}),
            *reviews(["10.1.0.1"]),
            gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
        ],
        [
            namespace("istio-system", {NET: "n2"}),
            *c2_docs,
            gateway_service("n2", lb=[{"ip": "192.0.2.2"}]),
        ],
    )
    assert hosts(cla(s, proxy("n1"))) == {
        "10.1.0.1:9080": 1,
        "10.2.0.1:9080": 1,
        "192.0.2.2:15443": 1,
    }


def test_mesh_networks_from_registry_and_from_cidr() -> None:
    # No namespace labels: networks come from MeshNetworks only. c2 by registry,
    # c1 by CIDR; gateways: n2 by registryServiceName (its LoadBalancer IP, port
    # 15443 from MeshNetworks), n1 by a fixed address.
    nets = mesh_networks(
        {
            "n1": {
                "endpoints": [{"fromCidr": "10.1.0.0/16"}],
                "gateways": [{"address": "192.0.2.10", "port": 15443}],
            },
            "n2": {
                "endpoints": [{"fromRegistry": "c2"}],
                "gateways": [
                    {
                        "registryServiceName": "istio-eastwestgateway.istio-system.svc.cluster.local",
                        "port": 15443,
                    }
                ],
            },
        }
    )
    c1 = [*reviews(["10.1.0.1"]), nets]
    c2 = [
        *reviews(["10.2.0.1", "10.2.0.2"], slice_name="r2"),
        gateway_service(None, lb=[{"ip": "192.0.2.2"}]),
    ]
    s = build(c1, c2)
    view = network_view(s)
    assert [(g.address, g.network, g.cluster) for g in view.gateways] == [
        ("192.0.2.10", "n1", ""),
        ("192.0.2.2", "n2", "c2"),
    ]
    assert not network_problems(s)
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1, "192.0.2.2:15443": 2}
    assert hosts(cla(s, proxy("n2", "c2"))) == {
        "10.2.0.1:9080": 1,
        "10.2.0.2:9080": 1,
        "192.0.2.10:15443": 1,
    }


def test_gateway_address_forms() -> None:
    # LoadBalancer IP, then externalIPs; a hostname is not resolved (reported);
    # a gatewayPort label moves the port; a Service without that port is no gateway.
    c2 = [
        gateway_service(
            "n2",
            lb=[{"hostname": "gw.example.com"}, {"ip": "192.0.2.2"}],
            external_ips=["192.0.2.3"],
        ),
        gateway_service(
            "n3",
            lb=[{"ip": "192.0.2.4"}],
            port=16443,
            name="gw-n3",
            labels={"networking.istio.io/gatewayPort": "16443"},
        ),
        gateway_service("n4", lb=[{"ip": "192.0.2.5"}], port=443, name="gw-n4"),
    ]
    s = build([], c2)
    assert [(g.address, g.port, g.network) for g in network_view(s).gateways] == [
        ("192.0.2.2", 15443, "n2"),
        ("192.0.2.3", 15443, "n2"),
        ("192.0.2.4", 16443, "n3"),
    ]
    found = {(p.object, p.path): p.message for p in network_problems(s)}
    assert (
        "not resolved"
        in found[("Service istio-system/istio-eastwestgateway", "status.loadBalancer.ingress")]
    )
    assert "has no port 15443" in found[("Service istio-system/gw-n4", "spec.ports")]


def test_mesh_networks_problems_have_field_paths() -> None:
    nets = parse_mesh_networks(
        {
            "networks": {
                "n1": {
                    "endpoints": [
                        {"fromCidr": "10.1.0.0/33"},
                        {"fromRegistry": "c1", "fromCidr": "10.0.0.0/8"},
                    ],
                    "gateways": [
                        {"address": "192.0.2.1"},
                        {"registryServiceName": "gw", "port": 15443},
                    ],
                },
                "n2": "nope",
            }
        }
    )
    paths = {p: m for p, m, _ in nets.problems}
    base = "data.meshNetworks.networks"
    assert "not a CIDR" in paths[f"{base}.n1.endpoints[0].fromCidr"]
    assert "exactly one" in paths[f"{base}.n1.endpoints[1]"]
    assert "required" in paths[f"{base}.n1.gateways[0].port"]
    assert "fully qualified" in paths[f"{base}.n1.gateways[1].registryServiceName"]
    assert "mapping" in paths[f"{base}.n2"]
    # The bare map form (Helm's meshNetworks value) reads the same.
    bare = parse_mesh_networks({"n1": {"endpoints": [{"fromRegistry": "c1"}]}})
    assert [n.name for n in bare.networks] == ["n1"] and not bare.problems


def test_mesh_networks_problems_reach_validation_on_the_configmap() -> None:
    cm = mesh_networks({"n1": {"endpoints": [{"fromCidr": "bad"}]}})
    s = build([cm], [])
    (p,) = [p for p in network_problems(s) if p.severity == "error"]
    assert p.object == "ConfigMap istio-system/istio"
    assert p.path == "data.meshNetworks.networks.n1.endpoints[0].fromCidr"


def test_eds_is_per_network_not_per_proxy() -> None:
    s = two_networks()
    a, b = (
        proxy("n1"),
        parse_proxy(
            f"sidecar~10.1.0.77~other-0.{NS}~{NS}.svc.cluster.local",
            {"NAMESPACE": NS, "CLUSTER_ID": "c1", "NETWORK": "n1"},
        ),
    )
    n2 = proxy("n2", "c1")
    keys = []
    for p in (a, b, n2):
        ctx = proxy_context(s, p)
        (part,) = parts(ctx, ENDPOINT_TYPE)
        keys.append(part.key(ctx))
    ka, kb, k2 = keys
    assert ka == kb and ka != k2


def test_locality_failover_keeps_the_gateway_in_its_endpoints_locality() -> None:
    """istiod puts the gateway endpoint in the locality group of the endpoints behind it,
    so locality failover (outlier detection on) prefers the proxy's own locality."""
    c1 = [
        namespace("istio-system", {NET: "n1"}),
        *reviews(["10.1.0.1"]),
        gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
    ]
    c2 = [
        namespace("istio-system", {NET: "n2"}),
        *reviews(["10.2.0.1"], slice_name="r2"),
        gateway_service("n2", lb=[{"ip": "192.0.2.2"}]),
    ]
    for docs, region in ((c1, "east"), (c2, "west")):
        for d in docs:
            if d["kind"] == "Pod":
                d["metadata"]["labels"]["topology.kubernetes.io/region"] = region
    dr = istio_config(
        "DestinationRule",
        "reviews",
        NS,
        {"host": HOST, "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}},
    )
    c1.append(dr)
    client = pod(
        "client-0", NS, "10.1.0.9", {"app": "client", "topology.kubernetes.io/region": "east"}
    )
    c1.append(client)
    s = build(c1, c2)
    c = cla(s, proxy("n1"))
    groups = {(g.locality.region, g.priority): sorted(hosts_of(g)) for g in c.endpoints}
    assert groups == {("east", 0): ["10.1.0.1:9080"], ("west", 1): ["192.0.2.2:15443"]}


def hosts_of(g: Any) -> list[str]:
    return [
        f"{lb.endpoint.address.socket_address.address}:{lb.endpoint.address.socket_address.port_value}"
        for lb in g.lb_endpoints
    ]


def test_east_west_gateway_routes_sni_to_its_own_network_only() -> None:
    """A cross-network Gateway (AUTO_PASSTHROUGH on 15443, hosts *.local) on n2's
    gateway: its SNI-DNAT clusters' EDS are n2's own mTLS endpoints, never n1's gateway."""
    gw_pod = pod("eastwest-0", "istio-system", "10.2.0.50", {"istio": "eastwestgateway"})
    cross = istio_config(
        "Gateway",
        "cross-network-gateway",
        "istio-system",
        {
            "selector": {"istio": "eastwestgateway"},
            "servers": [
                {
                    "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                    "hosts": ["*.local"],
                }
            ],
        },
    )
    s = two_networks(c1_extra=[cross], c2_extra=[gw_pod])
    router = parse_proxy(
        "router~10.2.0.50~eastwest-0.istio-system~istio-system.svc.cluster.local",
        {
            "NAMESPACE": "istio-system",
            "CLUSTER_ID": "c2",
            "NETWORK": "n2",
            "LABELS": {"istio": "eastwestgateway"},
        },
    )
    ctx = proxy_context(s, router)
    listeners = dict(GENERATORS["type.googleapis.com/envoy.config.listener.v3.Listener"](ctx))
    (chain_names,) = [
        [list(fc.filter_chain_match.server_names) for fc in m.filter_chains]
        for n, m in listeners.items()
        if n == "0.0.0.0_15443"
    ]
    assert [f"outbound_.9080_._.{HOST}"] in chain_names
    sni = cla(s, router, f"outbound_.9080_._.{HOST}")
    assert hosts(sni) == {"10.2.0.1:9080": 1, "10.2.0.2:9080": 1, "10.2.0.3:9080": 1}
    # Its ordinary outbound cluster is split as for any proxy of n2.
    assert "192.0.2.1:15443" in hosts(cla(s, router))


@pytest.mark.parametrize("drop", ["gateway", "label"])
def test_removing_the_gateway_changes_only_the_other_networks_eds(drop: str) -> None:
    before = two_networks()
    c2_gw = [] if drop == "gateway" else [gateway_service(None, lb=[{"ip": "192.0.2.2"}])]
    c1 = [
        namespace("istio-system", {NET: "n1"}),
        *reviews(["10.1.0.1"]),
        gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
    ]
    c2 = [
        namespace("istio-system", {NET: "n2"}),
        *reviews(["10.2.0.1", "10.2.0.2", "10.2.0.3"], slice_name="reviews-2"),
        *c2_gw,
    ]
    after = build(c1, c2)
    assert hosts(cla(after, proxy("n1"))) == {"10.1.0.1:9080": 1}
    assert hosts(cla(after, proxy("n2", "c2"))) == hosts(cla(before, proxy("n2", "c2")))


def test_networkz_lists_networks_gateways_and_endpoint_counts() -> None:
    from xdsd.model.networks import describe_networks

    view = describe_networks(two_networks())
    assert view["splitHorizon"] is True
    assert view["clusterNetworks"] == {"c1": "n1", "c2": "n2"}
    nets = {n["network"]: n for n in view["networks"]}
    assert nets["n1"]["endpoints"] == 1 and nets["n2"]["endpoints"] == 3
    assert nets["n2"]["gateways"] == [
        {
            "address": "192.0.2.2",
            "port": 15443,
            "cluster": "c2",
            "source": "Service istio-system/istio-eastwestgateway in cluster c2",
        }
    ]


async def test_validate_reports_mesh_networks_problems_with_field_paths(tmp_path: Any) -> None:
    from xdsd.client import validate_paths

    cm = mesh_networks(
        {
            "n1": {
                "endpoints": [{"fromCidr": "10.1.0.0/99"}],
                "gateways": [{"registryServiceName": "gw.istio-system.svc.cluster.local"}],
            }
        }
    )
    cm["data"]["mesh"] = "{not: [yaml"
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(cm))
    found = {(p.path, p.severity) for p in await validate_paths([tmp_path])}
    base = "data.meshNetworks.networks.n1"
    assert (f"{base}.endpoints[0].fromCidr", "error") in found
    assert (f"{base}.gateways[0].port", "error") in found
    assert ("data.mesh", "error") in found  # MeshConfig that is not YAML is not ignored


def test_failover_priority_on_the_network_label_prefers_the_own_network() -> None:
    """failoverPriority reads the endpoint's network and cluster (istiod AugmentLabels) and
    the gateway endpoint's (its network): n1's pod first, n2's gateway after it."""
    dr = istio_config(
        "DestinationRule",
        "reviews",
        NS,
        {
            "host": HOST,
            "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 1},
                "loadBalancer": {
                    "localityLbSetting": {"failoverPriority": ["topology.istio.io/network"]}
                },
            },
        },
    )
    client = pod("client-0", NS, "10.1.0.9", {"app": "client"})
    s = two_networks(c1_extra=[dr, client])
    c = cla(s, proxy("n1"))
    by_priority = {g.priority: sorted(hosts_of(g)) for g in c.endpoints}
    assert by_priority == {0: ["10.1.0.1:9080"], 1: ["192.0.2.2:15443"]}


def test_a_single_stack_proxy_uses_gateways_of_its_ip_family() -> None:
    c2_gw = gateway_service("n2", lb=[{"ip": "2001:db8::2"}])
    s = build(
        [
            namespace("istio-system", {NET: "n1"}),
            *reviews(["10.1.0.1"]),
            gateway_service("n1", lb=[{"ip": "192.0.2.1"}]),
        ],
        [namespace("istio-system", {NET: "n2"}), *reviews(["10.2.0.1"], slice_name="r2"), c2_gw],
    )
    assert hosts(cla(s, proxy("n1"))) == {"10.1.0.1:9080": 1}  # IPv4 proxy, IPv6 gateway


def test_requested_network_view_limits_what_a_proxy_sees() -> None:
    """Istio's east-west gateway sets ISTIO_META_REQUESTED_NETWORK_VIEW to its network: it
    sees that network's endpoints (and those of none), never another's or its gateway."""
    s = two_networks()
    meta = {"NAMESPACE": "istio-system", "CLUSTER_ID": "c2", "NETWORK": "n2"}
    node = "router~10.2.0.50~eastwest-0.istio-system~istio-system.svc.cluster.local"
    plain = parse_proxy(node, meta)
    viewed = parse_proxy(node, {**meta, "REQUESTED_NETWORK_VIEW": "n2"})
    assert viewed.network_view == ("n2",)
    assert "192.0.2.1:15443" in hosts(cla(s, plain))
    assert hosts(cla(s, viewed)) == {"10.2.0.1:9080": 1, "10.2.0.2:9080": 1, "10.2.0.3:9080": 1}
    # A sidecar viewing n1 only, without split horizon mattering: n2 is invisible.
    viewer = parse_proxy(
        f"sidecar~10.1.0.9~client-0.{NS}~{NS}.svc.cluster.local",
        {"NAMESPACE": NS, "CLUSTER_ID": "c1", "NETWORK": "n1", "REQUESTED_NETWORK_VIEW": "n1"},
    )
    assert hosts(cla(s, viewer)) == {"10.1.0.1:9080": 1}
