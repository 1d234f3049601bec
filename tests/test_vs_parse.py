"""VirtualService validation: field paths, istiod's rules, unsupported fields warned."""

from __future__ import annotations

from typing import Any

import pytest

from xdsd.model.istio.virtualservice import (
    Fault,
    StringMatch,
    VirtualService,
    parse_duration,
)
from xdsd.model.parse import parse_document


def vs_doc(spec: dict[str, Any], name: str = "r", ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def parse(spec: dict[str, Any]) -> tuple[VirtualService | None, list[tuple[str, str, str]]]:
    result = parse_document(vs_doc(spec), "x#0")
    problems = [(e.severity, e.path, e.message) for e in result.errors]
    typed = result.objects[0].typed if result.objects else None  # type: ignore[union-attr]
    return typed, problems


def errors(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m) for sev, p, m in parse(spec)[1] if sev == "error"]


def warnings(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m) for sev, p, m in parse(spec)[1] if sev == "warning"]


ROUTE = [{"destination": {"host": "reviews"}}]


def test_full_http_route_parses_into_typed_fields() -> None:
    vs, problems = parse(
        {
            "hosts": ["reviews"],
            "gateways": ["mesh", "istio-system/gw"],
            "exportTo": ["."],
            "http": [
                {
                    "name": "r1",
                    "match": [
                        {
                            "name": "m",
                            "uri": {"prefix": "/api"},
                            "headers": {"End-User": {"exact": "jason"}, "x-any": {}},
                            "withoutHeaders": {"x-no": {"regex": "a.*"}},
                            "queryParams": {"q": {"exact": "1"}},
                            "method": {"exact": "GET"},
                            "authority": {"prefix": "rev"},
                            "port": 9080,
                            "sourceLabels": {"app": "productpage"},
                            "sourceNamespace": "shop",
                            "ignoreUriCase": True,
                        }
                    ],
                    "route": [
                        {
                            "destination": {
                                "host": "reviews",
                                "subset": "v2",
                                "port": {"number": 9080},
                            },
                            "weight": 75,
                            "headers": {"request": {"set": {"x-w": "1"}}},
                        },
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 25},
                    ],
                    "timeout": "1.5s",
                    "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,503"},
                    "fault": {
                        "delay": {"fixedDelay": "7s", "percentage": {"value": 50}},
                        "abort": {"httpStatus": 503, "percentage": {"value": 10.5}},
                    },
                    "mirror": {"host": "ratings"},
                    "mirrorPercentage": {"value": 30},
                    "corsPolicy": {
                        "allowOrigins": [{"exact": "https://a.example"}],
                        "allowMethods": ["GET", "POST"],
                        "maxAge": "24h",
                        "allowCredentials": True,
                    },
                    "headers": {
                        "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                        "response": {"remove": ["server"]},
                    },
                    "rewrite": {"uri": "/v2", "authority": "new"},
                }
            ],
        }
    )
    assert problems == []
    assert vs is not None
    r = vs.http[0]
    m = r.match[0]
    assert m.uri == StringMatch("prefix", "/api")
    assert m.headers == (("end-user", StringMatch("exact", "jason")), ("x-any", None))
    assert m.port == 9080 and m.source_labels == (("app", "productpage"),)
    assert [(d.destination.subset, d.weight) for d in r.route] == [("v2", 75), ("v1", 25)]
    assert r.route[0].destination.port == 9080
    assert r.timeout == 1.5
    assert r.retries is not None and r.retries.per_try_timeout == 0.5
    assert r.fault == Fault(7.0, 50.0, 503, None, 10.5, has_abort=True)
    assert r.mirror is not None and r.mirror.host == "ratings" and r.mirror_percentage == 30
    assert r.cors is not None and r.cors.max_age == 86400
    assert r.rewrite is not None and r.rewrite.uri == "/v2"
    assert vs.export_to == (".",) and vs.gateways == ("mesh", "istio-system/gw")


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            {"hosts": ["*"], "http": [{"route": ROUTE}]},
            "spec.hosts[0]",
            "wildcard host * is not allowed for virtual services bound to the mesh gateway",
        ),
        ({"hosts": ["a"]}, "spec", "http, tcp or tls must be provided in a virtual service"),
        (
            {"hosts": ["a"], "http": [{"match": [{"uri": {"prefix": "/"}}]}]},
            "spec.http[0]",
            "HTTP route, redirect or direct_response is required",
        ),
        (
            {"hosts": ["a"], "http": [{"route": ROUTE, "redirect": {"uri": "/x"}}]},
            "spec.http[0]",
            "HTTP route cannot contain both route and redirect",
        ),
        (
            {"hosts": ["a"], "http": [{"route": ROUTE, "timeout": "abc"}]},
            "spec.http[0].timeout",
            "'abc' is not a duration (e.g. '10s', '500ms')",
        ),
        (
            {
                "hosts": ["a"],
                "http": [{"route": ROUTE, "retries": {"attempts": 2, "retryOn": "bogus"}}],
            },
            "spec.http[0].retries.retryOn",
            "'bogus' is not a valid retryOn policy",
        ),
        (
            {"hosts": ["a"], "http": [{"route": ROUTE, "fault": {"abort": {"httpStatus": 99}}}]},
            "spec.http[0].fault.abort.httpStatus",
            "99 is out of range 200..599",
        ),
        (
            {
                "hosts": ["a"],
                "http": [
                    {
                        "route": ROUTE,
                        "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}},
                    }
                ],
            },
            "spec.http[0].fault.delay.percentage.value",
            "101 is out of range 0..100",
        ),
        (
            {
                "hosts": ["a"],
                "http": [{"route": [{"destination": {"host": "a"}, "weight": 0}] * 2}],
            },
            "spec.http[0].route",
            "total destination weight = 0",
        ),
        (
            {
                "hosts": ["a"],
                "http": [{"route": [{"destination": {"host": "a", "subset": "V_1"}}]}],
            },
            "spec.http[0].route[0].destination.subset",
            "subset name 'V_1' is not a DNS-1123 label",
        ),
        (
            {"hosts": ["a"], "http": [{"match": [{"uri": {"regex": "("}}], "route": ROUTE}]},
            "spec.http[0].match[0].uri.regex",
            None,
        ),
        (
            {
                "hosts": ["a"],
                "http": [{"match": [{"uri": {"exact": "/", "prefix": "/"}}], "route": ROUTE}],
            },
            "spec.http[0].match[0].uri",
            "only one of exact, prefix, regex may be set (found exact, prefix)",
        ),
        (
            {"hosts": ["a"], "tls": [{"route": ROUTE}]},
            "spec.tls[0].match",
            "TLS route must have at least one match condition",
        ),
        (
            {"hosts": ["a"], "tcp": [{"match": [{"destinationSubnets": ["x/y"]}], "route": ROUTE}]},
            "spec.tcp[0].match[0].destinationSubnets[0]",
            "'x/y' is not an IP or CIDR",
        ),
        (
            {"http": [{"delegate": {"name": "x"}}]},
            "spec.http[0].delegate",
            "delegate HTTP route cannot contain delegate",
        ),
        (
            {
                "hosts": ["a"],
                "http": [
                    {
                        "route": ROUTE,
                        "mirror": {"host": "b"},
                        "mirrors": [{"destination": {"host": "c"}}],
                    }
                ],
            },
            "spec.http[0]",
            "HTTP route cannot contain both mirror and mirrors",
        ),
        (
            {"hosts": ["a"], "http": [{"redirect": {"redirectCode": 200}}]},
            "spec.http[0].redirect.redirectCode",
            "200 is out of range 300..399",
        ),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], path: str, message: str | None) -> None:
    got = errors(spec)
    assert any(p == path and (message is None or m == message) for p, m in got), got


def test_unsupported_and_unknown_fields_are_warned_not_dropped_silently() -> None:
    got = warnings(
        {
            "hosts": ["a"],
            "http": [
                {
                    "route": ROUTE,
                    "websocketUpgrade": True,
                    "fault": {
                        "delay": {"fixedDelay": "1s", "exponentialDelay": "1s"},
                        "abort": {"http2Error": "x", "httpStatus": 500},
                    },
                    "match": [{"headers": {"@request.auth.claims.group": {"exact": "a"}}}],
                }
            ],
        }
    )
    paths = [p for p, _ in got]
    assert "spec.http[0].websocketUpgrade" in paths
    assert "spec.http[0].fault.delay.exponentialDelay" in paths
    assert "spec.http[0].fault.abort.http2Error" in paths
    assert "spec.http[0].match[0].headers['@request.auth.claims.group']" in paths
    assert all("not supported" in m or "unknown" in m for _, m in got)


def test_delegate_vs_and_root_route() -> None:
    vs, problems = parse({"http": [{"match": [{"uri": {"prefix": "/a"}}], "route": ROUTE}]})
    assert problems == [] and vs is not None and vs.is_delegate
    vs, problems = parse(
        {"hosts": ["a"], "http": [{"delegate": {"name": "d", "namespace": "ns2"}}]}
    )
    assert problems == [] and vs is not None
    assert vs.http[0].delegate is not None and vs.http[0].delegate.namespace == "ns2"


def test_durations() -> None:
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90
    assert parse_duration("2h") == 7200
    assert parse_duration("x") is None
    assert errors({"hosts": ["a"], "http": [{"route": ROUTE, "timeout": "1us"}]}) == [
        ("spec.http[0].timeout", "duration must be at least 1ms")
    ]
    # timeout 0s: no timeout (Envoy's 0 = disabled)
    vs, _ = parse({"hosts": ["a"], "http": [{"route": ROUTE, "timeout": "0s"}]})
    assert vs is not None and vs.http[0].timeout == 0


def test_tcp_and_tls_routes() -> None:
    vs, problems = parse(
        {
            "hosts": ["db"],
            "tcp": [
                {
                    "match": [{"port": 5000, "destinationSubnets": ["10.0.0.0/8"]}],
                    "route": [
                        {"destination": {"host": "db", "port": {"number": 5000}}, "weight": 60},
                        {"destination": {"host": "db2", "port": {"number": 5000}}, "weight": 40},
                    ],
                }
            ],
            "tls": [
                {
                    "match": [{"sniHosts": ["db.example.com"], "port": 443}],
                    "route": [{"destination": {"host": "db.example.com"}}],
                }
            ],
        }
    )
    assert problems == []
    assert vs is not None
    assert vs.tcp[0].match[0].destination_subnets == ("10.0.0.0/8",)
    assert vs.tls[0].match[0].sni_hosts == ("db.example.com",)
