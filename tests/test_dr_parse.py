"""DestinationRule parsing: typed values, istiod's validation rules, unsupported fields warned."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dr_fixtures import FULL_DR, dr_doc
from xdsd.model.istio.destinationrule import DestinationRule, parse_duration
from xdsd.model.parse import parse_document
from xdsd.model.types import ConfigObject


def parse(spec: dict[str, Any]) -> tuple[DestinationRule | None, list[tuple[str, str, str]]]:
    res = parse_document(dr_doc("r", "default", spec), "t.yaml#0")
    problems = [(e.severity, e.path, e.message) for e in res.errors]
    objs = [o for o in res.objects if isinstance(o, ConfigObject)]
    return (objs[0].typed if objs else None), problems


def errors(spec: dict[str, Any]) -> list[str]:
    return [p for s, p, _ in parse(spec)[1] if s == "error"]


def test_full_rule_parses_to_typed_values() -> None:
    dr, problems = parse(FULL_DR["spec"])
    assert problems == []
    assert isinstance(dr, DestinationRule)
    assert dr.host == "reviews" and dr.export_to == ("*",)
    tp = dr.traffic_policy
    assert tp is not None and tp.connection_pool and tp.connection_pool.http
    assert tp.connection_pool.http.http1_max_pending_requests == 10
    assert tp.connection_pool.http.h2_upgrade_policy == "UPGRADE"
    assert tp.connection_pool.tcp and tp.connection_pool.tcp.connect_timeout_ns == 30_000_000
    assert (
        tp.connection_pool.tcp.tcp_keepalive and tp.connection_pool.tcp.tcp_keepalive.time_s == 7200
    )
    assert tp.outlier_detection and tp.outlier_detection.min_health_percent == 20
    lb = tp.load_balancer
    assert lb and lb.consistent_hash and lb.consistent_hash.key == "cookie"
    assert lb.consistent_hash.cookie and lb.consistent_hash.cookie.ttl_ns == 10 * 10**9
    assert (
        lb.consistent_hash.algorithm == "ring_hash" and lb.consistent_hash.minimum_ring_size == 2048
    )
    assert lb.locality and lb.locality.failover == (("r1", "r2"),)
    assert tp.tls and tp.tls.mode == "ISTIO_MUTUAL" and tp.tls.subject_alt_names is None
    assert [p.port for p in tp.port_level] == [9090, 5000]
    assert [s.name for s in dr.subsets] == ["v1", "v2", "v3", "v4", "v5", "pass"]
    assert dict(dr.subsets[0].labels) == {"version": "v1"}
    v2 = dr.subsets[1].traffic_policy
    assert v2 and v2.load_balancer and v2.load_balancer.consistent_hash
    assert v2.load_balancer.consistent_hash.maglev_table_size == 65537


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1s", 10**9),
        ("100ms", 10**8),
        ("1m30s", 90 * 10**9),
        ("1.5s", 15 * 10**8),
        ("2h", 7200 * 10**9),
    ],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "-1s", "1s2"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({}, "spec.host"),
        ({"host": "a b"}, "spec.host"),
        ({"host": "r", "trafficPolicy": {}}, "spec.trafficPolicy"),
        ({"host": "r", "subsets": [{"name": "V1"}]}, "spec.subsets[0].name"),
        ({"host": "r", "subsets": [{"name": "a"}, {"name": "a"}]}, "spec.subsets[1].name"),
        (
            {"host": "r", "trafficPolicy": {"connectionPool": {}}},
            "spec.trafficPolicy.connectionPool",
        ),
        (
            {"host": "r", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": -1}}}},
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "0.5ms"}}},
            },
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        ),
        (
            {"host": "r", "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 101}}},
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {"outlierDetection": {"consecutiveLocalOriginFailures": 2}},
            },
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        ),
        (
            {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}},
            "spec.trafficPolicy.loadBalancer.simple",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "loadBalancer": {
                        "consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 100}}
                    }
                },
            },
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"httpHeaderName": "x", "useSourceIp": True}}
                },
            },
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {}}}},
            },
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "loadBalancer": {
                        "localityLbSetting": {
                            "distribute": [{"from": "r1", "to": {"r1": 50, "r2": 40}}]
                        }
                    }
                },
            },
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "loadBalancer": {
                        "localityLbSetting": {"failover": [{"from": "r1", "to": "r1"}]}
                    }
                },
            },
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]",
        ),
        (
            {"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}},
            "spec.trafficPolicy.tls.clientCertificate",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "tls": {"mode": "SIMPLE", "credentialName": "c", "caCertificates": "/ca"}
                },
            },
            "spec.trafficPolicy.tls",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "tls": {
                        "mode": "SIMPLE",
                        "insecureSkipVerify": True,
                        "sni": "x",
                        "subjectAltNames": ["a"],
                    }
                },
            },
            "spec.trafficPolicy.tls",
        ),
        (
            {"host": "r", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}}]}},
            "spec.trafficPolicy.portLevelSettings[0]",
        ),
        ({"host": "r", "exportTo": ["*", "a"]}, "spec.exportTo"),
        (
            {"host": "r", "workloadSelector": {"matchLabels": {"app": "a"}}, "exportTo": ["other"]},
            "spec.exportTo",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "connectionPool": {
                        "http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}
                    }
                },
            },
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        ),
    ],
)
def test_invalid_rules_are_rejected_with_a_path(spec: dict[str, Any], path: str) -> None:
    assert path in errors(spec)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (
            {"host": "r", "trafficPolicy": {"tunnel": {"targetHost": "x", "targetPort": 1}}},
            "spec.trafficPolicy.tunnel",
        ),
        ({"host": "r", "trafficPolicy": {"proxyProtocol": {}}}, "spec.trafficPolicy.proxyProtocol"),
        ({"host": "r", "trafficPolicy": {"retryBudget": {}}}, "spec.trafficPolicy.retryBudget"),
        (
            {"host": "r", "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 2}}},
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
        ),
        (
            {"host": "r", "trafficPolicy": {"loadBalancer": {"warmupDurationSecs": "10s"}}},
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        ),
        (
            {"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "caCrl": "/crl"}}},
            "spec.trafficPolicy.tls.caCrl",
        ),
        (
            {"host": "r", "trafficPolicy": {"connectionPool": {"http": {"http2KeepAlive": {}}}}},
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
        ),
        (
            {
                "host": "r",
                "trafficPolicy": {
                    "loadBalancer": {
                        "consistentHash": {
                            "httpCookie": {
                                "name": "c",
                                "attributes": [{"name": "SameSite", "value": "Strict"}],
                            }
                        }
                    }
                },
            },
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        ),
        ({"host": "r", "surprise": 1}, "spec.surprise"),
    ],
)
def test_unsupported_fields_are_warned_not_dropped_silently(
    spec: dict[str, Any], path: str
) -> None:
    dr, problems = parse(spec)
    assert dr is not None
    assert ("warning", path) in [(s, p) for s, p, _ in problems]
    assert not [p for p in problems if p[0] == "error"]


def test_failover_without_outlier_detection_warns() -> None:
    dr, problems = parse(
        {
            "host": "r",
            "trafficPolicy": {"loadBalancer": {"localityLbSetting": {"failoverPriority": ["x"]}}},
        }
    )
    assert dr is not None
    assert any("outlier detection" in m for s, _, m in problems if s == "warning")
