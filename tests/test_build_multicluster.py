"""Several Kubernetes clusters in one snapshot: services merged by hostname,
endpoints from every cluster with their cluster id, network and locality."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from tests.envoy_static import sidecar
from tests.meshgen import endpoint_slice, istio_config, pod, service
from xdsd.model.build import build_snapshot
from xdsd.model.objects import NodeInfo
from xdsd.model.parse import parse_documents
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigChange, ConfigStore, FileContent
from xdsd.model.types import AddressView, Endpoint, Locality, Service
from xdsd.translate.generate import ENDPOINT_TYPE, GENERATORS, proxy_context

NS = "shop"
HOST = f"reviews.{NS}.svc.cluster.local"
REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
SUBZONE = "topology.istio.io/subzone"
NETWORK = "topology.istio.io/network"


def source_of(cluster_id: str, doc: Mapping[str, Any]) -> str:
    meta = doc["metadata"]
    return f"{cluster_id}:{doc['kind']}/{meta.get('namespace', '')}/{meta['name']}"


def kube_store(cluster_id: str, docs: list[dict[str, Any]]) -> ConfigStore:
    """A store filled as the Kubernetes source fills it: one "file" per object."""
    store = ConfigStore()
    files = []
    for doc in docs:
        src = source_of(cluster_id, doc)
        files.append(FileContent(src, parse_documents([doc], src, cluster_id=cluster_id)))
    store.apply(ConfigChange(tuple(files), synced=True))
    return store


def node(name: str, labels: Mapping[str, str], ready: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels)},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def namespace(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def on_node(doc: dict[str, Any], node_name: str) -> dict[str, Any]:
    doc["spec"]["nodeName"] = node_name
    return doc


def slice_on(doc: dict[str, Any], pod_name: str, node_name: str) -> dict[str, Any]:
    for ep in doc["endpoints"]:
        ep["targetRef"] = {
            "kind": "Pod",
            "name": pod_name,
            "namespace": doc["metadata"]["namespace"],
        }
        ep["nodeName"] = node_name
    return doc


def svc_of(s: MeshSnapshot, host: str = HOST) -> Service:
    return next(x for x in s.services if x.hostname == host)


def eps(s: MeshSnapshot, port: int, host: str = HOST) -> list[Endpoint]:
    return list(s.endpoints_for(svc_of(s, host), port))


def reviews(ports: list[tuple[str, int]], cluster_ip: str = "") -> dict[str, Any]:
    return service("reviews", NS, ports, selector={"app": "reviews"}, cluster_ip=cluster_ip)


def two_clusters() -> tuple[ConfigStore, dict[str, ConfigStore]]:
    config = kube_store(
        "main",
        [
            reviews([("http", 9080)], cluster_ip="10.0.0.1"),
            on_node(pod("reviews-a", NS, "127.0.0.11", {"app": "reviews"}), "n1"),
            node("n1", {REGION: "eu", ZONE: "eu-1", SUBZONE: "rack1"}),
            node("n2", {REGION: "eu", ZONE: "eu-9"}),
        ],
    )
    west = kube_store(
        "west",
        [
            reviews([("http", 9080), ("grpc", 9090)], cluster_ip="10.1.0.1"),
            on_node(pod("reviews-b", NS, "127.0.0.12", {"app": "reviews"}), "n1"),
            # Same node name as in "main", other labels: a pod sees its own cluster's node.
            node("n1", {REGION: "us", ZONE: "us-2"}),
        ],
    )
    return config, {"west": west}


def test_one_service_for_a_hostname_in_two_clusters_with_ports_unioned() -> None:
    config, remotes = two_clusters()
    s = build_snapshot(config, generation=1, remotes=remotes, config_cluster_id="main")
    assert [x.hostname for x in s.services] == [HOST]
    merged = svc_of(s)
    assert [(p.name, p.port) for p in merged.ports] == [("http", 9080), ("grpc", 9090)]
    assert merged.clusters == ("main", "west")
    # The config cluster's definition comes first (its ClusterIP).
    assert merged.addresses == ("10.0.0.1",)
    got = {(e.address, e.cluster_id, e.locality) for e in eps(s, 9080)}
    assert got == {
        ("127.0.0.11", "main", Locality("eu", "eu-1", "rack1")),
        ("127.0.0.12", "west", Locality("us", "us-2")),
    }
    # The port only "west" defines has only west's endpoints.
    assert [(e.address, e.cluster_id) for e in eps(s, 9090)] == [("127.0.0.12", "west")]
    # Workloads of every cluster are known (proxies find themselves by IP).
    assert {(w.name, w.cluster_id) for w in s.workloads} == {
        ("reviews-a", "main"),
        ("reviews-b", "west"),
    }
    assert s.workloads_by_ip("127.0.0.12")[0].locality == Locality("us", "us-2")


def test_eds_groups_endpoints_by_locality_with_cluster_ids_in_metadata() -> None:
    config, remotes = two_clusters()
    s = build_snapshot(config, generation=1, remotes=remotes, config_cluster_id="main")
    ctx = proxy_context(s, sidecar())
    clas: dict[str, endpoint_pb2.ClusterLoadAssignment] = dict(GENERATORS[ENDPOINT_TYPE](ctx))
    cla = clas[f"outbound|9080||{HOST}"]
    by_locality = {
        (le.locality.region, le.locality.zone, le.locality.sub_zone): [
            (
                lb.endpoint.address.socket_address.address,
                lb.metadata.filter_metadata["istio"]["workload"].split(";")[-1],
            )
            for lb in le.lb_endpoints
        ]
        for le in cla.endpoints
    }
    assert by_locality == {
        ("eu", "eu-1", "rack1"): [("127.0.0.11", "main")],
        ("us", "us-2", ""): [("127.0.0.12", "west")],
    }


def test_a_service_only_in_a_remote_cluster_is_served() -> None:
    config = kube_store("main", [])
    west = kube_store(
        "west",
        [
            service("ratings", NS, [("http", 9080)]),
            endpoint_slice("ratings-x", NS, "ratings", "http", 9080, ["127.0.0.21"]),
        ],
    )
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    host = f"ratings.{NS}.svc.cluster.local"
    assert svc_of(s, host).clusters == ("west",)
    assert [(e.address, e.cluster_id) for e in eps(s, 9080, host)] == [("127.0.0.21", "west")]


def test_endpoints_need_the_service_in_their_own_cluster() -> None:
    # A slice in "west" for a Service that only "main" has is not an endpoint of it.
    config = kube_store("main", [service("ratings", NS, [("http", 9080)])])
    west = kube_store(
        "west", [endpoint_slice("ratings-x", NS, "ratings", "http", 9080, ["127.0.0.21"])]
    )
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    assert eps(s, 9080, f"ratings.{NS}.svc.cluster.local") == []


def test_slice_endpoints_get_their_nodes_locality_in_their_cluster() -> None:
    config = kube_store(
        "main",
        [
            reviews([("http", 9080)]),
            node("n1", {REGION: "eu", ZONE: "eu-1"}),
        ],
    )
    west = kube_store(
        "west",
        [
            reviews([("http", 9080)]),
            on_node(pod("reviews-b", NS, "127.0.0.12", {"app": "reviews"}), "w1"),
            slice_on(
                endpoint_slice("reviews-w", NS, "reviews", "http", 9080, ["127.0.0.12"]),
                "reviews-b",
                "w1",
            ),
            # No pod for this address: the slice's nodeName still gives the locality.
            slice_on(
                endpoint_slice("reviews-w2", NS, "reviews", "http", 9080, ["127.0.0.13"]),
                "gone",
                "n1",
            ),
            node("w1", {REGION: "us", ZONE: "us-1"}),
            node("n1", {REGION: "us", ZONE: "us-7"}),
        ],
    )
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    got = {(e.address, e.cluster_id, e.locality) for e in eps(s, 9080)}
    assert got == {
        ("127.0.0.12", "west", Locality("us", "us-1")),
        # n1 of "west", not n1 of "main".
        ("127.0.0.13", "west", Locality("us", "us-7")),
    }


def test_network_from_pod_label_else_namespace_else_root_namespace() -> None:
    def cluster(cluster_id: str, prefix: str, extra: list[dict[str, Any]]) -> ConfigStore:
        return kube_store(
            cluster_id,
            [
                reviews([("http", 9080)]),
                pod("labelled", NS, f"{prefix}.1", {"app": "reviews", NETWORK: "net-pod"}),
                pod("plain", NS, f"{prefix}.2", {"app": "reviews"}),
                *extra,
            ],
        )

    main = cluster("main", "127.0.1", [namespace(NS, {NETWORK: "net-ns"})])
    west = cluster("west", "127.0.2", [namespace("istio-system", {NETWORK: "net-west"})])
    east = cluster("east", "127.0.3", [])
    s = build_snapshot(
        main, generation=1, remotes={"west": west, "east": east}, config_cluster_id="main"
    )
    assert {(e.cluster_id, e.address, e.network) for e in eps(s, 9080)} == {
        ("main", "127.0.1.1", "net-pod"),
        ("main", "127.0.1.2", "net-ns"),
        ("west", "127.0.2.1", "net-pod"),
        ("west", "127.0.2.2", "net-west"),
        ("east", "127.0.3.1", "net-pod"),
        ("east", "127.0.3.2", ""),
    }


def test_istio_config_comes_from_the_config_cluster_only() -> None:
    route = [{"route": [{"destination": {"host": "reviews"}}]}]
    vs = istio_config("VirtualService", "r", NS, {"hosts": ["reviews"], "http": route})
    config = kube_store("main", [reviews([("http", 9080)])])
    west = kube_store("west", [vs, reviews([("http", 9080)])])
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    assert s.configs_of("VirtualService") == ()
    config.apply(
        ConfigChange((FileContent("main:vs", parse_documents([vs], "main:vs", cluster_id="main")),))
    )
    s = build_snapshot(config, generation=2, remotes={"west": west}, config_cluster_id="main")
    assert [c.name for c in s.configs_of("VirtualService")] == ["r"]


def test_untagged_objects_are_tagged_by_their_store() -> None:
    # Objects parsed without cluster_id (the folder's defaults) still carry the
    # id of the store they were found in.
    west = ConfigStore()
    west.apply_file(
        "w.yaml",
        [reviews([("http", 9080)]), pod("reviews-b", NS, "127.0.0.12", {"app": "reviews"})],
    )
    config = ConfigStore()
    config.apply_file(
        "c.yaml",
        [reviews([("http", 9080)]), pod("reviews-a", NS, "127.0.0.11", {"app": "reviews"})],
    )
    s = build_snapshot(config, generation=1, remotes={"west": west})
    assert {(e.address, e.cluster_id) for e in eps(s, 9080)} == {
        ("127.0.0.11", "Kubernetes"),
        ("127.0.0.12", "west"),
    }
    assert svc_of(s).clusters == ("Kubernetes", "west")


def test_folder_defaults_are_unchanged() -> None:
    store = ConfigStore()
    store.apply_file(
        "a.yaml",
        [reviews([("http", 9080)]), pod("reviews-a", NS, "127.0.0.11", {"app": "reviews"})],
    )
    s = build_snapshot(store, generation=1)
    assert svc_of(s).clusters == ()
    assert [e.cluster_id for e in eps(s, 9080)] == ["Kubernetes"]
    assert s.stale_clusters == frozenset()


def test_parse_tags_objects_with_their_cluster() -> None:
    docs = [
        reviews([("http", 9080)]),
        on_node(pod("p", NS, "127.0.0.1", {"app": "reviews"}), "n1"),
        endpoint_slice("s", NS, "reviews", "http", 9080, ["127.0.0.1"]),
        node("n1", {REGION: "r", ZONE: "z"}),
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "we", "namespace": NS},
            "spec": {"address": "10.9.9.9"},
        },
    ]
    result = parse_documents(docs, "x", cluster_id="c1")
    assert result.errors == ()
    by_kind = {o.ref.kind: o for o in result.objects}
    assert by_kind["Service"].clusters == ("c1",)  # type: ignore[union-attr]
    assert by_kind["Pod"].cluster_id == "c1"  # type: ignore[union-attr]
    assert by_kind["Pod"].node_name == "n1"  # type: ignore[union-attr]
    assert by_kind["EndpointSlice"].cluster_id == "c1"  # type: ignore[union-attr]
    assert by_kind["WorkloadEntry"].cluster_id == "c1"  # type: ignore[union-attr]
    assert by_kind["Node"] == NodeInfo(by_kind["Node"].ref, Locality("r", "z"), "c1")
    untagged = {o.ref.kind: o for o in parse_documents(docs, "x").objects}
    assert untagged["Pod"].cluster_id == "Kubernetes"  # type: ignore[union-attr]
    assert untagged["Service"].clusters == ()  # type: ignore[union-attr]


def test_node_status_churn_changes_nothing_in_the_store() -> None:
    store = kube_store("main", [node("n1", {REGION: "eu", ZONE: "eu-1"})])
    before = store.generation
    updated = node("n1", {REGION: "eu", ZONE: "eu-1"}, ready="False")
    updated["metadata"]["resourceVersion"] = "99"
    src = source_of("main", updated)
    store.apply(
        ConfigChange((FileContent(src, parse_documents([updated], src, cluster_id="main")),))
    )
    assert store.generation == before
    relabelled = node("n1", {REGION: "eu", ZONE: "eu-2"})
    store.apply(
        ConfigChange((FileContent(src, parse_documents([relabelled], src, cluster_id="main")),))
    )
    assert store.generation == before + 1


def test_stale_clusters_keep_their_endpoints_and_are_recorded() -> None:
    config, remotes = two_clusters()
    s = build_snapshot(
        config, generation=1, remotes=remotes, config_cluster_id="main", stale=frozenset({"west"})
    )
    assert s.stale_clusters == {"west"}
    assert {e.cluster_id for e in eps(s, 9080)} == {"main", "west"}


def test_remote_store_errors_are_reported() -> None:
    config = kube_store("main", [])
    bad = service("bad", NS, [("http", 70000)])
    west = kube_store("west", [bad])
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    assert [e.object for e in s.errors] == [f"Service {NS}/bad"]
    assert s.errors[0].source.startswith("west:")


def test_conflicting_port_names_across_clusters_are_reported() -> None:
    config = kube_store("main", [reviews([("http", 9080)])])
    west = kube_store("west", [reviews([("http", 9081)])])
    s = build_snapshot(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    assert [p.port for p in svc_of(s).ports] == [9080]
    assert any("conflicts" in e.message and e.severity == "warning" for e in s.errors)


def test_the_build_is_deterministic_whatever_the_remote_order() -> None:
    config, remotes = two_clusters()
    east = kube_store("east", [reviews([("http", 9080)])])
    a = build_snapshot(config, generation=1, remotes={**remotes, "east": east})
    b = build_snapshot(config, generation=1, remotes={"east": east, **remotes})
    assert a.services == b.services
    assert a.endpoints == b.endpoints
    assert a.workloads == b.workloads


def test_each_cluster_keeps_its_own_cluster_ip() -> None:
    """A Service in two clusters: a proxy gets its own cluster's VIP (istiod's per-cluster
    addresses) in TCP listener names, HTTP route domains and the DNS name table."""
    from xdsd.model.proxy import parse_proxy
    from xdsd.translate.generate import LISTENER_TYPE, ROUTE_TYPE

    a = kube_store("a", [service("db", NS, [("tcp", 5432), ("http", 8080)], cluster_ip="10.0.0.9")])
    b = kube_store("b", [service("db", NS, [("tcp", 5432), ("http", 8080)], cluster_ip="10.1.0.9")])
    s = build_snapshot(a, remotes={"b": b}, config_cluster_id="a", generation=1)
    (db,) = [x for x in s.services if x.name == "db"]
    assert db.addresses == ("10.0.0.9",) and db.addresses_for(AddressView("b")) == ("10.1.0.9",)

    def seen(cluster: str) -> tuple[set[str], set[str]]:
        proxy = parse_proxy(
            f"sidecar~10.9.0.1~c-0.{NS}~{NS}.svc.cluster.local",
            {"NAMESPACE": NS, "CLUSTER_ID": cluster},
        )
        ctx = proxy_context(s, proxy)
        listeners = {n for n, _ in GENERATORS[LISTENER_TYPE](ctx)}
        domains = {
            d
            for _, rc in GENERATORS[ROUTE_TYPE](ctx)
            for vh in rc.virtual_hosts
            for d in vh.domains
        }
        return listeners, domains

    listeners_a, domains_a = seen("a")
    listeners_b, domains_b = seen("b")
    assert "10.0.0.9_5432" in listeners_a and "10.1.0.9_5432" not in listeners_a
    assert "10.1.0.9_5432" in listeners_b and "10.0.0.9_5432" not in listeners_b
    assert "10.0.0.9" in domains_a and "10.1.0.9" not in domains_a
    assert "10.1.0.9" in domains_b and "10.0.0.9" not in domains_b
