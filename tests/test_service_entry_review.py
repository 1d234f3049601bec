"""ServiceEntry checks added in the issue-3 review (istiod ValidateServiceEntry), and
translation of the resolutions/endpoint kinds through real Envoy (--mode validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.envoy_static import dns_cluster, envoy_binary, envoy_validate, sidecar, static_bootstrap
from xdsd.model.build import build_snapshot
from xdsd.model.parse import parse_document, parse_documents
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.translate.generate import CLUSTER_TYPE, ENDPOINT_TYPE, generate_all


def se(spec: dict[str, Any], name: str = "se") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def issues(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e.severity, e.path, e.message) for e in parse_document(se(spec), "x#0").errors]


HTTP = {"number": 80, "name": "http", "protocol": "HTTP"}
TCP = {"number": 5432, "name": "tcp", "protocol": "TCP"}


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            {"hosts": ["a.example.com"], "ports": [HTTP], "endpoints": [{"address": "1.1.1.1"}]},
            "spec.endpoints",
            "resolution type NONE",
        ),
        (
            {
                "hosts": ["a.example.com"],
                "addresses": ["10.0.0.0/24"],
                "ports": [TCP],
                "resolution": "DNS",
            },
            "spec.addresses[0]",
            "CIDR",
        ),
        (
            {"hosts": ["a.example.com", "b.example.com"], "ports": [TCP], "resolution": "DNS"},
            "spec.hosts",
            "non-HTTP, non-TLS",
        ),
        (
            {
                "hosts": ["a.example.com"],
                "ports": [HTTP],
                "resolution": "STATIC",
                "endpoints": [{"address": "1.1.1.1", "ports": {"grpc": 8080}}],
            },
            "spec.endpoints[0].ports.grpc",
            "not defined by the service entry",
        ),
        (
            {
                "hosts": ["a.example.com"],
                "ports": [HTTP, TCP],
                "resolution": "STATIC",
                "endpoints": [{"address": "unix:///tmp/a.sock"}],
            },
            "spec.endpoints[0].address",
            "exactly 1 service port",
        ),
        (
            {"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "Bad_Name"}]},
            "spec.ports[0].name",
            "invalid port name",
        ),
    ],
)
def test_istiod_service_entry_rules(spec: dict[str, Any], path: str, message: str) -> None:
    found = issues(spec)
    assert any(s == "error" and p == path and message in m for s, p, m in found), found


def test_lenient_cases_warn() -> None:
    found = issues({"hosts": ["a.example.com"], "ports": [{"number": 80, "protocol": "HTTP"}]})
    assert ("warning", "spec.ports[0].name", "is required by istiod (invalid port name)") in found
    found = issues(
        {"hosts": ["a.example.com"], "ports": [HTTP], "workloadSelector": {"labels": {"a": "b"}}}
    )
    assert any(s == "warning" and p == "spec.workloadSelector" for s, p, _ in found)
    # Multiple hosts are fine with HTTP ports, or with NONE resolution.
    assert not [
        i
        for i in issues(
            {"hosts": ["a.example.com", "b.example.com"], "ports": [HTTP], "resolution": "DNS"}
        )
        if i[0] == "error"
    ]
    assert not [
        i
        for i in issues({"hosts": ["a.example.com", "b.example.com"], "ports": [TCP]})
        if i[0] == "error"
    ]


def _snapshot(docs: list[dict[str, Any]]) -> MeshSnapshot:
    store = ConfigStore()
    result = parse_documents(docs, "se.yaml")
    assert [e for e in result.errors if e.severity == "error"] == []
    store.apply_file("se.yaml", result)
    return build_snapshot(store, generation=1)


ALL_KINDS = [
    se({"hosts": ["none.example.com"], "ports": [TCP], "addresses": ["10.10.0.0/16"]}, "none"),
    se(
        {
            "hosts": ["static.example.com"],
            "ports": [{**HTTP, "targetPort": 8080}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "endpoints": [
                {"address": "10.0.0.1"},
                {"address": "10.0.0.2", "ports": {"http": 9090}},
            ],
        },
        "static",
    ),
    se(
        {
            "hosts": ["sock.example.com"],
            "ports": [HTTP],
            "resolution": "STATIC",
            "endpoints": [{"address": "unix:///var/run/app.sock"}],
        },
        "sock",
    ),
    se({"hosts": ["dns.example.com"], "ports": [HTTP], "resolution": "DNS"}, "dns"),
    se(
        {
            "hosts": ["rr.example.com"],
            "ports": [HTTP],
            "resolution": "DNS_ROUND_ROBIN",
            "endpoints": [{"address": "backend.example.org"}],
        },
        "rr",
    ),
    se(
        {
            "hosts": ["sel.example.com"],
            "ports": [HTTP],
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "vm"}},
        },
        "sel",
    ),
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "vm-1", "namespace": "default"},
        "spec": {"address": "10.0.0.9", "labels": {"app": "vm"}, "ports": {"http": 8081}},
    },
]


def test_resolutions_translate_as_istiod() -> None:
    snap = _snapshot(ALL_KINDS)
    out = generate_all(snap, sidecar())
    clusters = dict(out[CLUSTER_TYPE])
    eds = dict(out[ENDPOINT_TYPE])
    assert clusters["outbound|5432||none.example.com"].type == 4  # ORIGINAL_DST
    assert clusters["outbound|80||static.example.com"].type == 3  # EDS
    addrs = {
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for loc in eds["outbound|80||static.example.com"].endpoints
        for e in loc.lb_endpoints
    }
    assert addrs == {("10.0.0.1", 8080), ("10.0.0.2", 9090)}  # targetPort, per-endpoint port
    sock = eds["outbound|80||sock.example.com"].endpoints[0].lb_endpoints[0]
    assert sock.endpoint.address.pipe.path == "/var/run/app.sock"
    strict = dns_cluster(clusters["outbound|80||dns.example.com"])
    logical = dns_cluster(clusters["outbound|80||rr.example.com"])
    assert strict is not None and not strict.all_addresses_in_single_endpoint  # STRICT_DNS
    assert logical is not None and logical.all_addresses_in_single_endpoint  # LOGICAL_DNS
    sel = eds["outbound|80||sel.example.com"].endpoints[0].lb_endpoints[0]
    assert (
        sel.endpoint.address.socket_address.address,
        sel.endpoint.address.socket_address.port_value,
    ) == ("10.0.0.9", 8081)


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary")
def test_envoy_accepts_every_resolution(tmp_path: Path) -> None:
    snap = _snapshot(ALL_KINDS)
    p = sidecar()
    result = envoy_validate(static_bootstrap(generate_all(snap, p), p.node_id), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
