"""DestinationRule fixtures shared by the DR tests: a full rule and snapshot helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from xdsd.model.parse import parse_documents
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject

FULL_DR: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "reviews-all", "namespace": "default"},
    "spec": {
        "host": "reviews",
        "exportTo": ["*"],
        "trafficPolicy": {
            "loadBalancer": {
                "consistentHash": {
                    "httpCookie": {"name": "user", "path": "/", "ttl": "10s"},
                    "ringHash": {"minimumRingSize": 2048},
                },
                "localityLbSetting": {
                    "enabled": True,
                    "failover": [{"from": "r1", "to": "r2"}],
                    "failoverPriority": ["topology.istio.io/network"],
                },
            },
            "connectionPool": {
                "tcp": {
                    "maxConnections": 100,
                    "connectTimeout": "30ms",
                    "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"},
                    "maxConnectionDuration": "1h",
                    "idleTimeout": "5m",
                },
                "http": {
                    "http1MaxPendingRequests": 10,
                    "http2MaxRequests": 1000,
                    "maxRequestsPerConnection": 10,
                    "maxRetries": 3,
                    "idleTimeout": "1m",
                    "h2UpgradePolicy": "UPGRADE",
                    "maxConcurrentStreams": 50,
                },
            },
            "outlierDetection": {
                "consecutive5xxErrors": 5,
                "consecutiveGatewayErrors": 3,
                "consecutiveLocalOriginFailures": 2,
                "splitExternalLocalOriginErrors": True,
                "interval": "10s",
                "baseEjectionTime": "30s",
                "maxEjectionPercent": 50,
                "minHealthPercent": 20,
            },
            "tls": {"mode": "ISTIO_MUTUAL"},
            "portLevelSettings": [
                {
                    "port": {"number": 9090},
                    "loadBalancer": {
                        "simple": "ROUND_ROBIN",
                        "warmup": {"duration": "30s", "minimumPercent": 5, "aggression": 2},
                    },
                    "tls": {
                        "mode": "MUTUAL",
                        "clientCertificate": "/etc/certs/cert.pem",
                        "privateKey": "/etc/certs/key.pem",
                        "caCertificates": "/etc/certs/ca.pem",
                        "sni": "reviews.example.com",
                        "subjectAltNames": ["reviews.example.com"],
                    },
                },
                {
                    "port": {"number": 5000},
                    "loadBalancer": {"simple": "LEAST_REQUEST"},
                    "tls": {"mode": "SIMPLE", "insecureSkipVerify": True},
                },
            ],
        },
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {
                "name": "v2",
                "labels": {"version": "v2"},
                "trafficPolicy": {
                    "loadBalancer": {
                        "consistentHash": {
                            "httpHeaderName": "x-user",
                            "maglev": {"tableSize": 65537},
                        }
                    },
                    "tls": {"mode": "SIMPLE", "sni": "v2.reviews"},
                },
            },
            {
                "name": "v3",
                "labels": {"version": "v3"},
                "trafficPolicy": {
                    "loadBalancer": {
                        "simple": "RANDOM",
                        "localityLbSetting": {
                            "distribute": [{"from": "r1/*", "to": {"r1/z1/*": 80, "r2/*": 20}}]
                        },
                    },
                    "tls": {"mode": "DISABLE"},
                },
            },
            {
                "name": "v4",
                "labels": {"version": "v4"},
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"useSourceIp": True}},
                    "connectionPool": {"http": {"useClientProtocol": True}},
                },
            },
            {
                "name": "v5",
                "labels": {"version": "v5"},
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"httpQueryParameterName": "q"}},
                    "tls": {"mode": "DISABLE"},
                },
            },
            {
                "name": "pass",
                "labels": {"version": "v1"},
                "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}},
            },
        ],
    },
}


def dr_doc(
    name: str, ns: str, spec: Mapping[str, Any], kind: str = "DestinationRule"
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": dict(spec),
    }


def parse_configs(docs: Sequence[Mapping[str, Any]]) -> list[ConfigObject]:
    res = parse_documents(list(docs), "t.yaml")
    bad = [e for e in res.errors if e.severity == "error"]
    assert not bad, bad
    return [o for o in res.objects if isinstance(o, ConfigObject)]


def with_configs(
    snap: MeshSnapshot, docs: Sequence[Mapping[str, Any]], root: str = "istio-system"
) -> MeshSnapshot:
    by_kind: dict[str, list[ConfigObject]] = {}
    for cfg in parse_configs(docs):
        by_kind.setdefault(cfg.kind, []).append(cfg)
    configs = {k: tuple(sorted(v, key=lambda c: (c.namespace, c.name))) for k, v in by_kind.items()}
    return dataclasses.replace(
        snap, configs=MappingProxyType(configs), root_namespace=root, _memo={}
    )
