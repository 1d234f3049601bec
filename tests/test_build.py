from __future__ import annotations

from typing import Any

from tests.meshgen import endpoint_slice, pod, service
from xdsd.model.build import build_snapshot
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.model.types import Locality, Service


def snap(*files: list[Any], **kw: Any) -> MeshSnapshot:
    store = ConfigStore()
    for i, docs in enumerate(files):
        store.apply_file(f"f{i}.yaml", docs)
    return build_snapshot(store, generation=7, **kw)


def svc_of(s: MeshSnapshot, host: str) -> Service:
    return next(x for x in s.services if x.hostname == host)


def eps(s: MeshSnapshot, host: str, port: int) -> list[tuple[str, int, bool]]:
    return [(e.address, e.port, e.healthy) for e in s.endpoints_for(svc_of(s, host), port)]


def se(name: str, ns: str = "shop", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def wle(
    name: str, ip: str, labels: dict[str, str], ns: str = "shop", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"address": ip, "labels": labels, **spec},
    }


HOST = "reviews.shop.svc.cluster.local"


def test_services_and_pods_without_endpoint_slices() -> None:
    ports: list[tuple[str, int, int | str]] = [("http", 9080, "http-api"), ("tcp-x", 7000, 7000)]
    s = snap(
        [
            service(
                "reviews",
                "shop",
                ports,
                selector={"app": "reviews"},
            ),
            pod(
                "r1",
                "shop",
                "10.0.0.1",
                {"app": "reviews", "v": "1"},
                ports={"http-api": 8080},
                service_account="rv",
            ),
            pod(
                "r2", "shop", "10.0.0.2", {"app": "reviews"}, ports={"other": 1}
            ),  # no http-api port
            pod(
                "r3", "shop", "10.0.0.3", {"app": "reviews"}, ports={"http-api": 8080}, ready=False
            ),
            pod("r4", "other", "10.0.0.4", {"app": "reviews"}, ports={"http-api": 8080}),
            pod("x1", "shop", "10.0.0.5", {"app": "ratings"}, ports={"http-api": 8080}),
        ]
    )
    assert s.generation == 7
    assert eps(s, HOST, 9080) == [("10.0.0.1", 8080, True)]
    assert eps(s, HOST, 7000) == [("10.0.0.1", 7000, True), ("10.0.0.2", 7000, True)]
    (ep,) = s.endpoints_for(svc_of(s, HOST), 9080)
    assert (ep.service_port, ep.service_account, ep.namespace, ep.workload_name) == (
        9080,
        "rv",
        "shop",
        "r1",
    )
    assert ep.labels == {"app": "reviews", "v": "1"}
    # Workloads include not-ready pods (a sidecar connects before its pod is ready).
    assert [w.name for w in s.workloads] == ["r4", "r1", "r2", "r3", "x1"]
    assert s.workloads_by_ip("10.0.0.3")[0].ready is False


def test_endpoint_slices_win_over_pod_selection_and_are_enriched() -> None:
    slice_ = endpoint_slice("reviews-1", "shop", "reviews", "http", 8080, ["10.0.0.1", "10.0.0.9"])
    slice_["endpoints"][0]["targetRef"] = {"kind": "Pod", "name": "r1", "namespace": "shop"}
    slice_["endpoints"][1]["conditions"] = {"ready": False}
    slice_["endpoints"][1]["zone"] = "z9"
    labels = {
        "app": "reviews",
        "topology.kubernetes.io/region": "r",
        "topology.kubernetes.io/zone": "z",
    }
    s = snap(
        [service("reviews", "shop", [("http", 9080)], selector={"app": "reviews"})],
        [
            slice_,
            pod("r1", "shop", "10.0.0.1", labels, service_account="rv"),
            pod("r2", "shop", "10.0.0.2", {"app": "reviews"}),  # not in the slice: ignored
        ],
    )
    assert eps(s, HOST, 9080) == [("10.0.0.1", 8080, True), ("10.0.0.9", 8080, False)]
    first, second = s.endpoints_for(svc_of(s, HOST), 9080)
    assert first.service_account == "rv" and first.locality == Locality("r", "z", "")
    assert first.labels["app"] == "reviews"
    assert second.service_account == "" and second.locality == Locality(zone="z9")


def test_slice_ports_are_matched_by_name_and_pods_found_by_ip() -> None:
    slice_ = endpoint_slice("reviews-1", "shop", "reviews", "grpc", 5000, ["10.0.0.1"])
    slice_["ports"].append({"name": "http", "port": 8080})
    s = snap(
        [
            service("reviews", "shop", [("http", 80), ("grpc", 90), ("admin", 91)]),
            slice_,
            pod("r1", "shop", "10.0.0.1", {"app": "reviews"}, service_account="rv"),
        ]
    )
    assert eps(s, HOST, 80) == [("10.0.0.1", 8080, True)]
    assert eps(s, HOST, 90) == [("10.0.0.1", 5000, True)]
    assert eps(s, HOST, 91) == []
    assert s.endpoints_for(svc_of(s, HOST), 80)[0].service_account == "rv"


def test_legacy_endpoints_when_there_is_no_slice() -> None:
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "subsets": [
            {
                "addresses": [{"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }
    s = snap([service("reviews", "shop", [("http", 80)]), endpoints])
    assert eps(s, HOST, 80) == [("10.0.0.1", 8080, True), ("10.0.0.2", 8080, False)]
    # With a slice present, the legacy object is ignored (no duplicates).
    s = snap(
        [service("reviews", "shop", [("http", 80)]), endpoints],
        [endpoint_slice("r-1", "shop", "reviews", "http", 9999, ["10.0.0.7"])],
    )
    assert eps(s, HOST, 80) == [("10.0.0.7", 9999, True)]


def test_service_entry_inline_endpoints() -> None:
    s = snap(
        [
            se(
                "api",
                hosts=["api.example.com"],
                resolution="STATIC",
                ports=[
                    {"number": 443, "name": "tls", "protocol": "TLS"},
                    {"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                ],
                endpoints=[
                    {"address": "10.1.0.2", "ports": {"tls": 9443}, "weight": 3, "locality": "r/z"},
                    {"address": "10.1.0.1", "labels": {"v": "1"}, "serviceAccount": "api"},
                ],
            )
        ]
    )
    assert eps(s, "api.example.com", 443) == [("10.1.0.1", 443, True), ("10.1.0.2", 9443, True)]
    assert eps(s, "api.example.com", 80) == [("10.1.0.1", 8080, True), ("10.1.0.2", 8080, True)]
    a, b = s.endpoints_for(svc_of(s, "api.example.com"), 443)
    assert (a.service_account, dict(a.labels), b.weight, b.locality) == (
        "api",
        {"v": "1"},
        3,
        Locality("r", "z"),
    )


def test_dns_service_entry_without_endpoints_uses_its_hosts() -> None:
    s = snap(
        [
            se(
                "ext",
                hosts=["a.example.com", "b.example.com"],
                resolution="DNS",
                ports=[{"number": 443, "name": "tls", "protocol": "TLS"}],
            ),
            se(
                "none",
                hosts=["c.example.com"],
                ports=[{"number": 80, "name": "http", "protocol": "HTTP"}],
            ),
        ]
    )
    assert eps(s, "a.example.com", 443) == [("a.example.com", 443, True)]
    assert eps(s, "b.example.com", 443) == [("b.example.com", 443, True)]
    assert eps(s, "c.example.com", 80) == []  # resolution NONE: passthrough


def test_service_entry_workload_selector_picks_same_namespace_workloads() -> None:
    s = snap(
        [
            se(
                "vms",
                hosts=["vm.shop.internal"],
                location="MESH_INTERNAL",
                resolution="STATIC",
                ports=[{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8000}],
                workloadSelector={"labels": {"app": "vm"}},
            ),
            wle("vm-1", "10.2.0.1", {"app": "vm"}, ports={"http": 9000}, serviceAccount="vm"),
            wle("vm-2", "10.2.0.2", {"app": "vm"}),
            wle("vm-3", "10.2.0.3", {"app": "vm"}, ns="other"),
            wle("db-1", "10.2.0.4", {"app": "db"}),
            pod("p1", "shop", "10.0.0.1", {"app": "vm"}),
        ]
    )
    assert eps(s, "vm.shop.internal", 80) == [
        ("10.0.0.1", 8000, True),
        ("10.2.0.1", 9000, True),
        ("10.2.0.2", 8000, True),
    ]
    assert [w.name for w in s.workloads if w.ref.kind == "WorkloadEntry"] == [
        "vm-3",
        "db-1",
        "vm-1",
        "vm-2",
    ]


def test_kubernetes_service_selects_workload_entries() -> None:
    s = snap(
        [
            service("reviews", "shop", [("http", 9080)], selector={"app": "reviews"}),
            wle("vm-1", "10.2.0.1", {"app": "reviews"}, ports={"http": 9000}),
        ]
    )
    assert eps(s, HOST, 9080) == [("10.2.0.1", 9000, True)]


def test_external_name_service() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {
            "type": "ExternalName",
            "externalName": "db.example.com",
            "ports": [{"name": "tcp", "port": 5432}],
        },
    }
    s = snap([doc])
    assert eps(s, "db.shop.svc.cluster.local", 5432) == [("db.example.com", 5432, True)]


def test_domain_suffix_and_root_namespace() -> None:
    s = snap(
        [service("reviews", "shop", [("http", 80)])],
        domain_suffix="corp.local",
        root_namespace="mesh",
    )
    assert [x.hostname for x in s.services] == ["reviews.shop.svc.corp.local"]
    assert (s.domain_suffix, s.root_namespace) == ("corp.local", "mesh")


def test_kubernetes_service_wins_a_host_clash_with_a_service_entry() -> None:
    s = snap(
        [
            se(
                "dup",
                hosts=[HOST],
                resolution="STATIC",
                endpoints=[{"address": "1.1.1.1"}],
                ports=[{"number": 9080, "name": "http"}],
            ),
            service("reviews", "shop", [("http", 9080)], selector={"app": "reviews"}),
            pod("r1", "shop", "10.0.0.1", {"app": "reviews"}),
        ]
    )
    assert [x.ref.kind for x in s.services] == ["Service"]
    assert eps(s, HOST, 9080) == [("10.0.0.1", 9080, True)]
    assert any("already defined" in e.message for e in s.errors)


def test_services_sorted_configs_grouped_errors_carried() -> None:
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "b", "namespace": "shop"},
        "spec": {"hosts": ["x"], "http": [{"route": [{"destination": {"host": "x"}}]}]},
    }
    vs2 = {**vs, "metadata": {"name": "a", "namespace": "shop"}}
    dr = {**vs, "kind": "DestinationRule", "spec": {"host": "zeta.a.svc.cluster.local"}}
    s = snap(
        [service("zeta", "a", [("http", 80)]), service("alpha", "b", [("http", 80)]), vs, vs2, dr],
        [[1, 2]],
    )
    assert [x.hostname for x in s.services] == [
        "alpha.b.svc.cluster.local",
        "zeta.a.svc.cluster.local",
    ]
    assert list(s.configs) == ["DestinationRule", "VirtualService"]
    assert [c.name for c in s.configs_of("VirtualService")] == ["a", "b"]
    assert [e.source for e in s.errors] == ["f1.yaml#0"]


def test_build_is_deterministic_whatever_the_apply_order() -> None:
    docs = [
        service("reviews", "shop", [("http", 9080)], selector={"app": "reviews"}),
        pod("r2", "shop", "10.0.0.2", {"app": "reviews"}),
        pod("r1", "shop", "10.0.0.1", {"app": "reviews"}),
        se(
            "ext",
            hosts=["b.com", "a.com"],
            resolution="DNS",
            ports=[{"number": 80, "name": "http"}],
        ),
    ]
    forward = ConfigStore()
    backward = ConfigStore()
    for i, d in enumerate(docs):
        forward.apply_file(f"f{i}.yaml", [d])
    for i, d in reversed(list(enumerate(docs))):
        backward.apply_file(f"f{i}.yaml", [d])
    a = build_snapshot(forward, generation=1)
    b = build_snapshot(backward, generation=1)
    assert a == b
    assert list(a.endpoints) == sorted(a.endpoints)
