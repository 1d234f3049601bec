"""Sidecar: typed parsing and validation (istiod ValidateSidecar), field paths in messages."""

from __future__ import annotations

from typing import Any

import pytest

from xdsd.model.istio.sidecar import EgressHost, Sidecar
from xdsd.model.parse import parse_document
from xdsd.model.types import ConfigObject, Protocol


def doc(spec: dict[str, Any], name: str = "sc", ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def parse(spec: dict[str, Any]) -> tuple[Sidecar | None, list[tuple[str, str, str]]]:
    result = parse_document(doc(spec), "x#0")
    issues = [(e.severity, e.path, e.message) for e in result.errors]
    objs = [o for o in result.objects if isinstance(o, ConfigObject)]
    typed = objs[0].typed if objs else None
    assert typed is None or isinstance(typed, Sidecar)
    return typed, issues


def errors(spec: dict[str, Any]) -> list[tuple[str, str]]:
    _, issues = parse(spec)
    return [(p, m) for s, p, m in issues if s == "error"]


def warnings(spec: dict[str, Any]) -> list[tuple[str, str]]:
    _, issues = parse(spec)
    return [(p, m) for s, p, m in issues if s == "warning"]


def test_full_sidecar_is_typed() -> None:
    sc, issues = parse(
        {
            "workloadSelector": {"labels": {"app": "ratings"}},
            "egress": [
                {
                    "port": {"number": 9080, "protocol": "HTTP", "name": "egresshttp"},
                    "bind": "127.0.0.1",
                    "captureMode": "NONE",
                    "hosts": ["prod-us1/*"],
                },
                {"hosts": ["./*", "istio-system/*", "~*/secret.example.com"]},
            ],
            "ingress": [
                {
                    "port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                    "defaultEndpoint": "127.0.0.1:8080",
                    "captureMode": "NONE",
                    "bind": "127.0.0.5",
                }
            ],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        }
    )
    assert issues == []
    assert sc is not None
    assert dict(sc.workload_selector or {}) == {"app": "ratings"}
    port_l, catch_all = sc.egress
    assert port_l.port is not None and port_l.port.number == 9080
    assert port_l.port.protocol is Protocol.HTTP
    assert (port_l.bind, port_l.capture_mode) == ("127.0.0.1", "NONE")
    assert catch_all.port is None
    assert catch_all.hosts == (
        EgressHost(".", "*"),
        EgressHost("istio-system", "*"),
        EgressHost("*", "secret.example.com", excluded=True),
    )
    (ing,) = sc.ingress
    assert (ing.port.number, ing.default_endpoint, ing.bind) == (
        9080,
        "127.0.0.1:8080",
        "127.0.0.5",
    )
    assert sc.outbound_traffic_policy is not None
    assert sc.outbound_traffic_policy.mode == "REGISTRY_ONLY"


def test_outbound_mode_defaults_to_registry_only_when_policy_given() -> None:
    # proto3: an empty outboundTrafficPolicy has mode 0, REGISTRY_ONLY.
    sc, _ = parse({"outboundTrafficPolicy": {}})
    assert sc is not None and sc.outbound_traffic_policy is not None
    assert sc.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    sc, _ = parse({"egress": [{"hosts": ["*/*"]}]})
    assert sc is not None and sc.outbound_traffic_policy is None  # mesh default applies


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({}, "spec", "empty configuration"),
        ({"egress": [{"hosts": ["reviews"]}]}, "spec.egress[0].hosts[0]", "namespace/dnsName"),
        ({"egress": [{"hosts": ["./reviews"]}]}, "spec.egress[0].hosts[0]", "short names"),
        ({"egress": [{"hosts": ["./a*.com"]}]}, "spec.egress[0].hosts[0]", "partial wildcard"),
        ({"egress": [{"hosts": ["Bad_NS/a.com"]}]}, "spec.egress[0].hosts[0]", "namespace"),
        ({"egress": [{"hosts": []}]}, "spec.egress[0].hosts", "at least one host"),
        (
            {"egress": [{"hosts": ["*/*"]}, {"port": {"number": 80}, "hosts": ["*/*"]}]},
            "spec.egress[0]",
            "should be the last",
        ),
        (
            {
                "egress": [
                    {"port": {"number": 80}, "hosts": ["*/*"]},
                    {"port": {"number": 80}, "hosts": ["./*"]},
                ]
            },
            "spec.egress[1].port.number",
            "must be unique",
        ),
        (
            {"egress": [{"port": {"number": 80, "protocol": "FOO"}, "hosts": ["*/*"]}]},
            "spec.egress[0].port.protocol",
            "unrecognized protocol",
        ),
        (
            {"egress": [{"port": {"number": 80}, "bind": "localhost", "hosts": ["*/*"]}]},
            "spec.egress[0].bind",
            "not a valid IP",
        ),
        (
            {"egress": [{"port": {"number": 0}, "bind": "127.0.0.1", "hosts": ["*/*"]}]},
            "spec.egress[0].bind",
            "unix domain socket",
        ),
        (
            {"egress": [{"captureMode": "TPROXY", "hosts": ["*/*"]}]},
            "spec.egress[0].captureMode",
            "must be one of",
        ),
        (
            {"egress": [{"port": {"number": 80, "targetPort": 8080}, "hosts": ["*/*"]}]},
            "spec.egress[0].port.targetPort",
            "no impact",
        ),
        ({"ingress": [{"defaultEndpoint": "127.0.0.1:80"}]}, "spec.ingress[0].port", "required"),
        (
            {"ingress": [{"port": {"number": 80}, "defaultEndpoint": "10.0.0.1:80"}]},
            "spec.ingress[0].defaultEndpoint",
            "must be of form",
        ),
        (
            {"ingress": [{"port": {"number": 80}, "defaultEndpoint": "127.0.0.1:x"}]},
            "spec.ingress[0].defaultEndpoint",
            "port",
        ),
        (
            {"ingress": [{"port": {"number": 80}}, {"port": {"number": 80}}]},
            "spec.ingress[1].port.number",
            "must be unique",
        ),
        (
            {"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "tls": {"mode": "SIMPLE"}}]},
            "spec.ingress[0].tls",
            "non HTTPS/TLS",
        ),
        (
            {"outboundTrafficPolicy": {"mode": "ALLOW_ANY_DYNAMIC_DNS"}},
            "spec.outboundTrafficPolicy.mode",
            "only supported in MeshConfig",
        ),
        (
            {"outboundTrafficPolicy": {"mode": "DENY"}},
            "spec.outboundTrafficPolicy.mode",
            "must be one of",
        ),
        (
            {
                "outboundTrafficPolicy": {
                    "mode": "REGISTRY_ONLY",
                    "egressProxy": {"host": "egress.example.com", "port": {"number": 80}},
                }
            },
            "spec.outboundTrafficPolicy.egressProxy",
            "only with ALLOW_ANY",
        ),
        (
            {"workloadSelector": {"labels": {"app": "*"}}, "egress": [{"hosts": ["*/*"]}]},
            "spec.workloadSelector.labels.app",
            "wildcards",
        ),
    ],
)
def test_invalid_sidecars_are_rejected_with_paths(
    spec: dict[str, Any], path: str, message: str
) -> None:
    errs = errors(spec)
    assert any(p == path and message in m for p, m in errs), errs
    sc, _ = parse(spec)
    assert sc is None  # rejected: the store keeps the last good version


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (
            {
                "ingress": [
                    {"port": {"number": 443, "protocol": "HTTPS"}, "tls": {"mode": "SIMPLE"}}
                ]
            },
            "spec.ingress[0].tls",
        ),
        (
            {
                "ingress": [
                    {
                        "port": {"number": 80, "protocol": "HTTP"},
                        "connectionPool": {"tcp": {"maxConnections": 5}},
                    }
                ]
            },
            "spec.ingress[0].connectionPool",
        ),
        (
            {"inboundConnectionPool": {"http": {"http1MaxPendingRequests": 3}}},
            "spec.inboundConnectionPool",
        ),
        (
            {
                "outboundTrafficPolicy": {
                    "mode": "ALLOW_ANY",
                    "egressProxy": {"host": "egress.example.com", "port": {"number": 80}},
                }
            },
            "spec.outboundTrafficPolicy.egressProxy",
        ),
        (
            {
                "egress": [
                    {"port": {"number": 0}, "bind": "unix:///var/run/x.sock", "hosts": ["*/*"]}
                ]
            },
            "spec.egress[0].bind",
        ),
        (
            {"egress": [{"port": {"number": 80, "protocol": "HTTP_PROXY"}, "hosts": ["*/*"]}]},
            "spec.egress[0].port.protocol",
        ),
        ({"egress": [{"hosts": ["*/*"]}], "futureField": 1}, "spec.futureField"),
    ],
)
def test_unsupported_fields_are_accepted_with_warnings(spec: dict[str, Any], path: str) -> None:
    assert errors(spec) == []
    warned = warnings(spec)
    assert any(p == path for p, _ in warned), warned
    sc, _ = parse(spec)
    assert sc is not None


def test_duplicate_egress_hosts_warn() -> None:
    warned = warnings({"egress": [{"hosts": ["./*", "./a.example.com"]}]})
    assert ("spec.egress[0].hosts[1]", "duplicated egress host: ./a.example.com") in warned
    warned = warnings({"egress": [{"hosts": ["*/*", "ns1/a.example.com"]}]})
    assert any("no other hosts" in m for _, m in warned)


def test_empty_selector_labels_warn_and_match_everything() -> None:
    sc, issues = parse({"workloadSelector": {}, "egress": [{"hosts": ["*/*"]}]})
    assert sc is not None and sc.workload_selector is not None
    assert dict(sc.workload_selector) == {}
    assert any(s == "warning" and p == "spec.workloadSelector" for s, p, _ in issues)


def test_accepted_default_endpoints() -> None:
    for ep in ("127.0.0.1:8080", "0.0.0.0:8080", "[::1]:8080", "[::]:8080", "unix:///tmp/a.sock"):
        assert errors({"ingress": [{"port": {"number": 80}, "defaultEndpoint": ep}]}) == [], ep
