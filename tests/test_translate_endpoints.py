"""EDS: one ClusterLoadAssignment per EDS cluster, localities, health, metadata."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from tests.envoy_static import ep, sample_mesh, sidecar, snapshot, svc
from xdsd.model.types import Protocol
from xdsd.translate.generate import ENDPOINT_TYPE, GENERATORS, eds_cluster_names, proxy_context


def clas(snap) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:  # type: ignore[no-untyped-def]
    return dict(GENERATORS[ENDPOINT_TYPE](proxy_context(snap, sidecar())))  # type: ignore[arg-type]


def test_every_eds_cluster_gets_an_assignment_even_without_endpoints() -> None:
    snap = sample_mesh()
    got = clas(snap)
    assert sorted(got) == eds_cluster_names(proxy_context(snap, sidecar()))
    empty = got["outbound|3306||mysql.default.svc.cluster.local"]
    assert empty.cluster_name == "outbound|3306||mysql.default.svc.cluster.local"
    assert len(empty.endpoints) == 0
    # DNS / ORIGINAL_DST clusters are not served over EDS.
    assert "outbound|443||api.example.com" not in got


def test_localities_health_weights_and_metadata() -> None:
    cla = clas(sample_mesh())["outbound|9080||reviews.default.svc.cluster.local"]
    assert [(le.locality.region, le.locality.zone) for le in cla.endpoints] == [
        ("r1", "z1"),
        ("r1", "z2"),
    ]
    first, second = (le.lb_endpoints[0] for le in cla.endpoints)
    assert first.endpoint.address.socket_address.address == "10.1.0.5"
    assert first.endpoint.address.socket_address.port_value == 9081  # target port
    assert first.health_status == health_check_pb2.HEALTHY
    assert second.health_status == health_check_pb2.UNHEALTHY
    assert first.load_balancing_weight.value == 1
    assert cla.endpoints[0].load_balancing_weight.value == 1
    assert (
        first.metadata.filter_metadata["istio"]["workload"]
        == "reviews-v1;default;reviews-v1;;Kubernetes"
    )


def test_canonical_labels_in_workload_metadata() -> None:
    s = svc("a.default.svc.cluster.local", "default", [("http", 80, Protocol.HTTP)])
    e = ep("10.0.0.1", 8080, 80, workload="a-1", labels={"app": "a", "version": "v2"})
    cla = clas(snapshot([s], [(s, 80, [e])]))["outbound|80||a.default.svc.cluster.local"]
    assert (
        cla.endpoints[0].lb_endpoints[0].metadata.filter_metadata["istio"]["workload"]
        == "a-1;default;a;v2;Kubernetes"
    )


def test_endpoint_order_is_stable() -> None:
    s = svc("a.default.svc.cluster.local", "default", [("http", 80, Protocol.HTTP)])
    eps = [ep(f"10.0.0.{i}", 80, 80) for i in (3, 1, 2)]
    one = clas(snapshot([s], [(s, 80, eps)]))
    two = clas(snapshot([s], [(s, 80, list(reversed(eps)))]))
    key = "outbound|80||a.default.svc.cluster.local"
    assert one[key].SerializeToString(deterministic=True) == two[key].SerializeToString(
        deterministic=True
    )
    assert [
        e.endpoint.address.socket_address.address for e in one[key].endpoints[0].lb_endpoints
    ] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
