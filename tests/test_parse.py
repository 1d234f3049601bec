from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from xdsd.model.objects import EndpointSet, SecretData, ServiceEntryConfig
from xdsd.model.parse import ParseResult, parse_document, parse_documents
from xdsd.model.protocol import parse_protocol, protocol_for
from xdsd.model.types import (
    ConfigObject,
    Locality,
    Location,
    Protocol,
    Resolution,
    Service,
    Workload,
)


def svc_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": spec,
    }


def one(result: ParseResult) -> Any:
    assert [e for e in result.errors if e.severity == "error"] == []
    assert len(result.objects) == 1
    return result.objects[0]


def errors(result: ParseResult) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in result.errors if e.severity == "error"]


# -- protocol selection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "app", "k8s", "want"),
    [
        ("http", None, "TCP", Protocol.HTTP),
        ("http-web", None, "TCP", Protocol.HTTP),
        ("HTTP2-x", None, "TCP", Protocol.HTTP2),
        ("https", None, "TCP", Protocol.HTTPS),
        ("grpc", None, "TCP", Protocol.GRPC),
        ("grpc-web", None, "TCP", Protocol.GRPC_WEB),
        ("grpc-web-ui", None, "TCP", Protocol.GRPC_WEB),
        ("mongo", None, "TCP", Protocol.MONGO),
        ("mysql-main", None, "TCP", Protocol.MYSQL),
        ("redis", None, "TCP", Protocol.REDIS),
        ("tcp-db", None, "TCP", Protocol.TCP),
        ("tls", None, "TCP", Protocol.TLS),
        ("udp-dns", None, "TCP", Protocol.UDP),
        ("web", None, "TCP", Protocol.AUTO),
        ("", None, "TCP", Protocol.AUTO),
        (None, None, None, Protocol.AUTO),
        ("httpx", None, "TCP", Protocol.AUTO),
        # appProtocol wins over the name, even when it is unknown.
        ("tcp", "http", "TCP", Protocol.HTTP),
        ("http", "mysql", "TCP", Protocol.MYSQL),
        ("http", "example.com/custom", "TCP", Protocol.AUTO),
        ("web", "kubernetes.io/h2c", "TCP", Protocol.HTTP2),
        ("web", "kubernetes.io/ws", "TCP", Protocol.HTTP),
        ("web", "kubernetes.io/wss", "TCP", Protocol.HTTPS),
        ("web", "GRPC", "TCP", Protocol.GRPC),
        # Kubernetes UDP beats everything.
        ("http", "http", "UDP", Protocol.UDP),
        ("http", None, "SCTP", Protocol.HTTP),
    ],
)
def test_protocol_for(name: str | None, app: str | None, k8s: str | None, want: Protocol) -> None:
    assert protocol_for(name, app, k8s) is want


def test_well_known_server_first_ports_are_tcp_not_sniffed() -> None:
    assert protocol_for("db", None, "TCP", port=3306) is Protocol.TCP
    assert protocol_for("", None, "TCP", port=27017) is Protocol.TCP
    assert protocol_for("http", None, "TCP", port=3306) is Protocol.HTTP
    assert protocol_for("", None, "TCP", port=8080) is Protocol.AUTO


def test_parse_protocol_for_service_entries() -> None:
    assert parse_protocol("HTTP") is Protocol.HTTP
    assert parse_protocol("grpc-web") is Protocol.GRPC_WEB
    assert parse_protocol("bogus") is Protocol.AUTO


# -- Service ----------------------------------------------------------------------------


def test_service_fields() -> None:
    doc = svc_doc(
        clusterIP="10.96.0.12",
        selector={"app": "reviews"},
        ports=[
            {"name": "http", "port": 9080, "targetPort": "http-api"},
            {"name": "grpc-x", "port": 9090, "targetPort": 19090, "appProtocol": "http"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    )
    doc["metadata"]["labels"] = {"app": "reviews"}
    doc["metadata"]["annotations"] = {"networking.istio.io/exportTo": ".,  other "}
    s = one(parse_document(doc, "svc.yaml#0"))
    assert isinstance(s, Service)
    assert s.hostname == "reviews.shop.svc.cluster.local"
    assert (s.namespace, s.name) == ("shop", "reviews")
    assert [(p.name, p.port, p.protocol, p.target_port) for p in s.ports] == [
        ("http", 9080, Protocol.HTTP, "http-api"),
        ("grpc-x", 9090, Protocol.HTTP, 19090),
        ("dns", 53, Protocol.UDP, None),
    ]
    assert s.addresses == ("10.96.0.12",)
    assert s.selector == {"app": "reviews"}
    assert s.labels == {"app": "reviews"}
    assert s.export_to == frozenset({".", "other"})
    assert s.resolution is Resolution.STATIC and s.location is Location.MESH_INTERNAL
    assert str(s.ref) == "Service shop/reviews (svc.yaml#0)"


def test_service_defaults_namespace_domain_and_export() -> None:
    doc = svc_doc(ports=[{"port": 80}])
    del doc["metadata"]["namespace"]
    s = one(parse_document(doc, "x#0", default_namespace="apps", domain_suffix="corp.internal"))
    assert s.hostname == "reviews.apps.svc.corp.internal"
    assert s.export_to == frozenset({"*"})
    assert s.selector is None
    assert s.ports[0].protocol is Protocol.AUTO


def test_headless_and_external_name() -> None:
    h = one(parse_document(svc_doc(clusterIP="None", ports=[{"port": 80, "name": "http"}]), "x#0"))
    assert h.headless and h.addresses == () and h.resolution is Resolution.NONE
    e = one(parse_document(svc_doc(type="ExternalName", externalName="db.example.com"), "x#0"))
    assert e.external_name == "db.example.com"
    assert e.resolution is Resolution.DNS and e.location is Location.MESH_EXTERNAL
    dual = one(
        parse_document(
            svc_doc(clusterIP="10.0.0.1", clusterIPs=["10.0.0.1", "fd00::1"], ports=[]), "x#0"
        )
    )
    assert dual.addresses == ("10.0.0.1", "fd00::1")


@pytest.mark.parametrize(
    ("ports", "path"),
    [
        ([{"name": "a", "port": 80}, {"name": "b", "port": 70000}], "spec.ports[1].port"),
        ([{"name": "a", "port": -1}], "spec.ports[0].port"),
        ([{"name": "a", "port": 0}], "spec.ports[0].port"),
        ([{"name": "a", "port": "80"}], "spec.ports[0].port"),
        ([{"name": "a", "port": True}], "spec.ports[0].port"),
        ([{"name": "a", "port": 8.5}], "spec.ports[0].port"),
        ([{"name": "a"}], "spec.ports[0].port"),
        ([{"name": "a", "port": 80, "targetPort": 0}], "spec.ports[0].targetPort"),
        ([{"name": "a", "port": 80, "targetPort": "8080"}], "spec.ports[0].targetPort"),
        ([{"name": "a", "port": 80, "targetPort": [1]}], "spec.ports[0].targetPort"),
        ([{"name": "a", "port": 80, "protocol": "ICMP"}], "spec.ports[0].protocol"),
        ([{"name": "a", "port": 80}, {"name": "a", "port": 81}], "spec.ports[1].name"),
        ([{"port": 80}, {"port": 81}], "spec.ports[0].name"),
        ([{"name": "Bad_Name", "port": 80}], "spec.ports[0].name"),
        ("80", "spec.ports"),
        (["80"], "spec.ports[0]"),
    ],
)
def test_service_port_errors_name_the_field(ports: Any, path: str) -> None:
    result = parse_document(svc_doc(ports=ports), "svc.yaml#3")
    assert result.objects == ()
    assert path in [p for p, _ in errors(result)]
    assert result.failed == frozenset({("Service", "shop", "reviews")})
    err = next(e for e in result.errors if e.path == path)
    assert err.source == "svc.yaml#3"
    assert err.object == "Service shop/reviews"
    assert str(err).startswith("svc.yaml#3: Service shop/reviews at " + path)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"clusterIP": "10.0.0.300"}, "spec.clusterIP"),
        ({"clusterIPs": "10.0.0.1"}, "spec.clusterIPs"),
        ({"type": "Weird"}, "spec.type"),
        ({"type": "ExternalName"}, "spec.externalName"),
        ({"type": "ExternalName", "externalName": "not a host"}, "spec.externalName"),
        ({"selector": ["app"]}, "spec.selector"),
        ({"selector": {"app": 1}}, "spec.selector.app"),
    ],
)
def test_service_spec_errors(spec: dict[str, Any], path: str) -> None:
    result = parse_document(svc_doc(**spec), "x#0")
    assert path in [p for p, _ in errors(result)], result.errors


def test_spec_must_be_a_mapping() -> None:
    doc = svc_doc()
    doc["spec"] = ["ports"]
    assert errors(parse_document(doc, "x#0")) == [("spec", "must be a mapping, not a list")]
    del doc["spec"]
    assert errors(parse_document(doc, "x#0")) == [("spec", "is required")]


@pytest.mark.parametrize(
    ("metadata", "path"),
    [
        (None, "metadata"),
        ("reviews", "metadata"),
        ({}, "metadata.name"),
        ({"name": 5}, "metadata.name"),
        ({"name": "Reviews"}, "metadata.name"),
        ({"name": "9reviews"}, "metadata.name"),  # Services need a DNS-1035 label
        ({"name": "ok", "namespace": "Bad NS"}, "metadata.namespace"),
        ({"name": "ok", "labels": "app=x"}, "metadata.labels"),
        ({"name": "ok", "labels": {"version": 1}}, "metadata.labels.version"),
        (
            {"name": "ok", "labels": {"app.kubernetes.io/name": 1}},
            "metadata.labels['app.kubernetes.io/name']",
        ),
    ],
)
def test_metadata_errors(metadata: Any, path: str) -> None:
    doc = svc_doc(ports=[{"port": 80, "name": "http"}])
    doc["metadata"] = metadata
    result = parse_document(doc, "x#0")
    assert result.objects == ()
    assert path in [p for p, _ in errors(result)], result.errors


def test_unnamed_objects_have_no_failed_key() -> None:
    doc = svc_doc(ports=[])
    doc["metadata"] = {"namespace": "shop"}
    result = parse_document(doc, "x#0")
    assert result.failed == frozenset() and result.errors[0].object == ""


# -- document level -------------------------------------------------------------------


def test_unknown_kinds_and_versions_are_warnings() -> None:
    docs = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}},
        {
            "apiVersion": "networking.istio.io/v9",
            "kind": "VirtualService",
            "metadata": {"name": "x"},
        },
        {"apiVersion": "v2", "kind": "Service", "metadata": {"name": "x"}},
    ]
    result = parse_documents(docs, "f.yaml")
    assert result.objects == () and result.failed == frozenset()
    assert [e.severity for e in result.errors] == ["warning"] * 4
    assert [e.source for e in result.errors] == [f"f.yaml#{i}" for i in range(4)]
    assert "Widget (example.com/v1) is unknown: skipped" in result.errors[1].message


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "a document must be a mapping, not a list"),
        ("text", "a document must be a mapping, not a string"),
        ({"kind": "Service"}, "is required"),
        ({"apiVersion": 1, "kind": "Service"}, "must be a string, not a number"),
    ],
)
def test_bad_documents(doc: Any, message: str) -> None:
    result = parse_document(doc, "x#0")
    assert result.objects == ()
    assert message in [e.message for e in result.errors]


def test_empty_documents_are_skipped() -> None:
    assert parse_documents([None, None], "x") == ParseResult()


def test_list_kind_is_expanded_with_item_paths() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            svc_doc(ports=[{"name": "http", "port": 80}]),
            svc_doc(ports=[{"name": "http", "port": 0}]) | {"metadata": {"name": "bad"}},
            "junk",
        ],
    }
    result = parse_documents([doc], "list.yaml")
    assert [o.ref.name for o in result.objects] == ["reviews"]
    assert ("items[1].spec.ports[0].port", "0 is out of range 1..65535") in errors(result)
    assert ("items[2]", "must be a mapping, not a string") in errors(result)
    assert result.failed == frozenset({("Service", "default", "bad")})


# -- endpoints --------------------------------------------------------------------------


def slice_doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "reviews-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["10.0.0.1"],
                "targetRef": {"kind": "Pod", "name": "reviews-1"},
                "zone": "z1",
                "nodeName": "n1",
            },
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
        ],
    }
    doc.update(extra)
    return doc


def test_endpoint_slice() -> None:
    es = one(parse_document(slice_doc(), "x#0"))
    assert isinstance(es, EndpointSet) and es.service_name == "reviews"
    (subset,) = es.subsets
    assert [(p.name, p.port) for p in subset.ports] == [("http", 9080)]
    assert [e.ready for e in subset.endpoints] == [True, False, False]
    first = subset.endpoints[0]
    assert first.target_ref is not None
    assert (first.target_ref.kind, first.target_ref.namespace, first.target_ref.name) == (
        "Pod",
        "shop",
        "reviews-1",
    )
    assert (first.zone, first.node_name) == ("z1", "n1")


def test_endpoint_slice_errors() -> None:
    bad = slice_doc(endpoints=[{"addresses": ["10.0.0.x"]}, {"addresses": "10.0.0.1"}, {}])
    assert [p for p, _ in errors(parse_document(bad, "x#0"))] == [
        "endpoints[0].addresses[0]",
        "endpoints[1].addresses",
        "endpoints[2].addresses",
    ]
    cond = slice_doc(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}])
    assert errors(parse_document(cond, "x#0")) == [
        ("endpoints[0].conditions.ready", "must be true or false, not a string")
    ]
    fqdn = slice_doc(addressType="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    assert one(parse_document(fqdn, "x#0")).subsets[0].endpoints[0].addresses == ("db.example.com",)


def test_endpoint_slice_without_service_is_skipped_with_warning() -> None:
    doc = slice_doc()
    doc["metadata"]["labels"] = {}
    result = parse_document(doc, "x#0")
    assert result.objects == () and result.failed == frozenset()
    assert result.errors[0].severity == "warning"


def test_legacy_endpoints() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "subsets": [
            {
                "addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "r1"}}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"name": "http", "port": 9080}],
            }
        ],
    }
    es = one(parse_document(doc, "x#0"))
    assert es.service_name == "reviews" and es.ref.kind == "Endpoints"
    assert [(e.addresses, e.ready) for e in es.subsets[0].endpoints] == [
        (("10.0.0.1",), True),
        (("10.0.0.2",), False),
    ]
    doc["subsets"][0]["addresses"] = [{"ip": "nope"}]
    assert errors(parse_document(doc, "x#0")) == [
        ("subsets[0].addresses[0].ip", "'nope' is not an IP address")
    ]


# -- Pod --------------------------------------------------------------------------------


def pod_doc(status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reviews-v1-7d9f-abcde", "namespace": "shop", **meta},
        "spec": {
            "serviceAccountName": "reviews",
            "containers": [
                {"name": "app", "ports": [{"name": "http-api", "containerPort": 9080}]},
                {"name": "side", "ports": [{"containerPort": 15090}]},
            ],
        },
        "status": status
        if status is not None
        else {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_pod() -> None:
    labels = {
        "app": "reviews",
        "pod-template-hash": "7d9f",
        "topology.kubernetes.io/region": "r1",
        "topology.kubernetes.io/zone": "z1",
        "topology.istio.io/subzone": "s1",
        "topology.istio.io/network": "net1",
    }
    owner = [{"kind": "ReplicaSet", "name": "reviews-v1-7d9f", "controller": True}]
    w = one(parse_document(pod_doc(labels=labels, ownerReferences=owner), "x#0"))
    assert isinstance(w, Workload)
    assert (w.name, w.namespace, w.address, w.ready) == (
        "reviews-v1-7d9f-abcde",
        "shop",
        "10.0.0.1",
        True,
    )
    assert w.service_account == "reviews"
    assert w.named_ports == {"http-api": 9080}
    assert w.locality == Locality("r1", "z1", "s1")
    assert w.network == "net1"
    assert w.workload_name == "reviews-v1"


@pytest.mark.parametrize(
    ("status", "ready", "address"),
    [
        ({"podIP": "10.0.0.1"}, True, "10.0.0.1"),  # no conditions but an IP
        ({"podIPs": [{"ip": "fd00::1"}]}, True, "fd00::1"),
        ({}, False, ""),
        (
            {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "False"}]},
            False,
            "10.0.0.1",
        ),
        (
            {"podIP": "10.0.0.1", "conditions": [{"type": "PodScheduled", "status": "True"}]},
            False,
            "10.0.0.1",
        ),
        ({"podIP": "10.0.0.1", "phase": "Succeeded"}, False, "10.0.0.1"),
    ],
)
def test_pod_readiness(status: dict[str, Any], ready: bool, address: str) -> None:
    w = one(parse_document(pod_doc(status), "x#0"))
    assert (w.ready, w.address) == (ready, address)


def test_pod_defaults_and_errors() -> None:
    doc = pod_doc()
    del doc["spec"]["serviceAccountName"]
    assert one(parse_document(doc, "x#0")).service_account == "default"
    doc["status"]["podIP"] = "10.0.0"
    doc["spec"]["containers"][0]["ports"][0]["containerPort"] = 0
    doc["status"]["conditions"][0]["status"] = True
    assert [p for p, _ in errors(parse_document(doc, "x#0"))] == [
        "spec.containers[0].ports[0].containerPort",
        "status.podIP",
        "status.conditions[0].status",
    ]


# -- ServiceEntry / WorkloadEntry --------------------------------------------------------


def se_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hosts": ["api.example.com", "api2.example.com"],
        "ports": [{"number": 443, "name": "tls", "protocol": "TLS", "targetPort": 8443}],
    }
    base.update(spec)
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "ServiceEntry",
        "metadata": {"name": "api", "namespace": "shop", "labels": {"team": "a"}},
        "spec": base,
    }


def test_service_entry_one_service_per_host() -> None:
    se = one(parse_document(se_doc(), "x#0"))
    assert isinstance(se, ServiceEntryConfig)
    assert [s.hostname for s in se.services] == ["api.example.com", "api2.example.com"]
    s = se.services[0]
    assert (s.namespace, s.name, s.ref.kind) == ("shop", "api", "ServiceEntry")
    assert [(p.name, p.port, p.protocol, p.target_port) for p in s.ports] == [
        ("tls", 443, Protocol.TLS, 8443)
    ]
    # Istio's defaults: MESH_EXTERNAL, resolution NONE.
    assert s.location is Location.MESH_EXTERNAL and s.resolution is Resolution.NONE
    assert s.labels == {"team": "a"} and s.selector is None


def test_service_entry_endpoints_and_fields() -> None:
    doc = se_doc(
        addresses=["240.0.0.1", "10.10.0.0/16"],
        location="MESH_INTERNAL",
        resolution="STATIC",
        exportTo=["."],
        endpoints=[
            {
                "address": "10.1.0.1",
                "ports": {"tls": 9443},
                "labels": {"v": "1"},
                "network": "n1",
                "locality": "us/us-1a",
                "weight": 5,
                "serviceAccount": "api",
            },
            {"address": "unix:///var/run/api.sock"},
        ],
    )
    se = one(parse_document(doc, "x#0"))
    s = se.services[0]
    assert s.addresses == ("240.0.0.1", "10.10.0.0/16")
    assert s.resolution is Resolution.STATIC and s.location is Location.MESH_INTERNAL
    assert s.export_to == frozenset({"."})
    ep = se.endpoints[0]
    assert (ep.address, dict(ep.port_overrides), ep.network, ep.weight, ep.service_account) == (
        "10.1.0.1",
        {"tls": 9443},
        "n1",
        5,
        "api",
    )
    assert ep.locality == Locality("us", "us-1a", "")
    assert ep.labels == {"v": "1"}
    assert se.endpoints[1].service_account == ""


def test_service_entry_workload_selector() -> None:
    se = one(parse_document(se_doc(workloadSelector={"labels": {"app": "vm"}}), "x#0"))
    assert se.services[0].selector == {"app": "vm"}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"hosts": []}, "spec.hosts"),
        ({"hosts": "a.com"}, "spec.hosts"),
        ({"hosts": ["a.com", "bad host"]}, "spec.hosts[1]"),
        ({"addresses": ["1.2.3"]}, "spec.addresses[0]"),
        ({"ports": [{"number": 0, "name": "x"}]}, "spec.ports[0].number"),
        ({"ports": [{"number": 80, "name": "x", "protocol": "SMTP"}]}, "spec.ports[0].protocol"),
        (
            {"ports": [{"number": 80, "name": "x"}, {"number": 81, "name": "x"}]},
            "spec.ports[1].name",
        ),
        ({"resolution": "MAGIC"}, "spec.resolution"),
        ({"location": "MARS"}, "spec.location"),
        (
            {"resolution": "STATIC", "endpoints": [{"address": "db.example.com"}]},
            "spec.endpoints[0].address",
        ),
        (
            {"endpoints": [{"ports": {"tls": 99999}, "address": "1.1.1.1"}]},
            "spec.endpoints[0].ports.tls",
        ),
        ({"endpoints": [{}]}, "spec.endpoints[0].address"),
        ({"endpoints": [{"address": "1.1.1.1", "weight": -1}]}, "spec.endpoints[0].weight"),
        (
            {"endpoints": [{"address": "1.1.1.1"}], "workloadSelector": {"labels": {"a": "b"}}},
            "spec.workloadSelector",
        ),
        ({"hosts": ["*.example.com"], "resolution": "DNS"}, "spec.hosts[0]"),
        (
            {
                "resolution": "DNS_ROUND_ROBIN",
                "endpoints": [{"address": "a.com"}, {"address": "b.com"}],
            },
            "spec.endpoints",
        ),
        ({"exportTo": ["Bad!"]}, "spec.exportTo"),
    ],
)
def test_service_entry_errors(spec: dict[str, Any], path: str) -> None:
    result = parse_document(se_doc(**spec), "x#0")
    assert result.objects == ()
    assert path in [p for p, _ in errors(result)], result.errors
    assert result.failed == frozenset({("ServiceEntry", "shop", "api")})


def test_workload_entry() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "vm-1", "namespace": "shop"},
        "spec": {
            "address": "10.2.0.1",
            "ports": {"http": 8080},
            "labels": {"app": "vm"},
            "serviceAccount": "vm-sa",
            "locality": "r/z/s",
            "network": "vm-net",
            "weight": 3,
        },
    }
    w = one(parse_document(doc, "x#0"))
    assert isinstance(w, Workload) and w.ref.kind == "WorkloadEntry"
    assert (w.name, w.address, w.service_account, w.network, w.weight) == (
        "vm-1",
        "10.2.0.1",
        "vm-sa",
        "vm-net",
        3,
    )
    assert w.locality == Locality("r", "z", "s") and w.port_overrides == {"http": 8080}
    doc["spec"]["address"] = "bad address"
    assert [p for p, _ in errors(parse_document(doc, "x#0"))] == ["spec.address"]


# -- ConfigObject kinds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "kind"),
    [
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1alpha3", "DestinationRule"),
        ("networking.istio.io/v1beta1", "Gateway"),
        ("networking.istio.io/v1", "Sidecar"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "WorkloadGroup"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1beta1", "AuthorizationPolicy"),
        ("security.istio.io/v1", "RequestAuthentication"),
        ("telemetry.istio.io/v1", "Telemetry"),
    ],
)
def test_istio_config_kinds(api: str, kind: str) -> None:
    name = "cfg-v1" if kind == "Gateway" else "cfg.v1"  # istiod: Gateway names are DNS labels
    doc = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "generation": 4},
        "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]},
    }
    if kind == "DestinationRule":
        doc["spec"] = {"host": "a", **doc["spec"]}  # extra fields: warnings only
    if kind == "Sidecar":
        doc["spec"] = {"egress": [{"hosts": ["./*"]}], **doc["spec"]}  # extra: warnings
    if kind == "Gateway":
        server = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
        doc["spec"] = {"servers": [server], **doc["spec"]}  # extra: warnings
    c = one(parse_document(doc, "x#0"))
    assert isinstance(c, ConfigObject)
    assert (c.kind, c.namespace, c.name, c.group, c.version, c.generation) == (
        kind,
        "shop",
        name,
        api.split("/")[0],
        api.split("/")[1],
        4,
    )
    assert isinstance(c.spec, MappingProxyType)
    assert c.spec["hosts"] == ("a",)
    assert isinstance(c.spec["http"][0]["route"][0]["destination"], MappingProxyType)
    with pytest.raises(TypeError):
        c.spec["hosts"] = ()  # type: ignore[index]


def test_istio_config_errors() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "UPPER"},
        "spec": {},
    }
    assert [p for p, _ in errors(parse_document(doc, "x#0"))] == ["metadata.name"]
    doc["metadata"]["name"] = "ok"
    doc["spec"] = "http"
    assert errors(parse_document(doc, "x#0")) == [("spec", "must be a mapping, not a string")]
    del doc["spec"]
    # A VirtualService without hosts or routes is invalid (istiod rejects it too).
    assert errors(parse_document(doc, "x#0")) == [
        ("spec", "http, tcp or tls must be provided in a virtual service")
    ]


def test_cyclic_and_exploding_specs_are_errors_not_crashes() -> None:
    cyc: list[Any] = []
    cyc.append(cyc)
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs"},
        "spec": {"http": cyc},
    }
    result = parse_document(doc, "x#0")
    assert result.objects == () and "cyclic" in result.errors[0].message
    layer: Any = ["x"] * 10
    for _ in range(8):
        layer = [layer] * 10  # 10**9 nodes after alias expansion, 90 distinct
    doc["spec"] = {"http": layer}
    result = parse_document(doc, "x#0")
    assert result.objects == () and "expands to more than" in result.errors[0].message


def test_secret_keeps_base64_data_and_hides_values() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gw-cert", "namespace": "istio-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "c2VjcmV0LWtleQ=="},
        "stringData": {"ca.crt": "ca"},
    }
    c = one(parse_document(doc, "x#0"))
    assert (c.group, c.version, c.spec["type"]) == ("", "v1", "kubernetes.io/tls")
    data = c.spec["data"]
    assert isinstance(data, SecretData)
    assert data["tls.key"] == "c2VjcmV0LWtleQ==" and data.decoded("ca.crt") == b"ca"
    assert "c2VjcmV0LWtleQ" not in repr(c)
    doc["data"] = {"tls.key": "not base64 secret!"}
    result = parse_document(doc, "x#0")
    assert errors(result) == [("data['tls.key']", "is not valid base64")]
    assert "secret!" not in str(result.errors)


def test_namespace_and_configmap() -> None:
    ns = one(
        parse_document(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "shop", "namespace": "x"},
            },
            "x#0",
        )
    )
    assert (ns.kind, ns.namespace, ns.name) == ("Namespace", "", "shop")
    cm = one(
        parse_document(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert"},
                "data": {"root-cert.pem": "PEM"},
            },
            "x#0",
        )
    )
    assert cm.spec["data"] == {"root-cert.pem": "PEM"} and cm.namespace == "default"
