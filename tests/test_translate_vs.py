"""VirtualService translation for sidecars and gateways, checked proto by proto."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.envoy_static import (
    deprecated_options,
    envoy_binary,
    envoy_validate,
    sample_mesh,
    sidecar,
    static_bootstrap,
)
from xdsd.model.parse import parse_documents
from xdsd.model.proxy import InterceptionMode, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate import vs_http
from xdsd.translate.context import group_key, proxy_context
from xdsd.translate.generate import GENERATORS, LISTENER_TYPE, ROUTE_TYPE, generate_all

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.other.svc.cluster.local"


def vs(name: str, spec: Mapping[str, Any], ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": dict(spec),
    }


def with_configs(snap: MeshSnapshot, docs: Sequence[Mapping[str, Any]]) -> MeshSnapshot:
    result = parse_documents(docs, "t.yaml")
    assert [e for e in result.errors if e.severity == "error"] == []
    by_kind: dict[str, list[ConfigObject]] = {}
    for o in result.objects:
        assert isinstance(o, ConfigObject)
        by_kind.setdefault(o.kind, []).append(o)
    configs = {k: tuple(sorted(v, key=lambda c: (c.namespace, c.name))) for k, v in by_kind.items()}
    return dataclasses.replace(snap, configs=MappingProxyType(configs), _memo={})


def rds(snap: MeshSnapshot, **kw: Any) -> dict[str, route_pb2.RouteConfiguration]:
    ctx = proxy_context(snap, sidecar(**kw))
    return dict(GENERATORS[ROUTE_TYPE](ctx))


def vhost(rc: route_pb2.RouteConfiguration, name: str) -> route_components_pb2.VirtualHost:
    for v in rc.virtual_hosts:
        if v.name == name:
            return v
    raise KeyError(name)


def reviews_routes(docs: Sequence[Mapping[str, Any]]) -> list[route_components_pb2.Route]:
    rc = rds(with_configs(sample_mesh(), docs))["9080"]
    return list(vhost(rc, f"{REVIEWS}:9080").routes)


def test_header_match_routes_to_subset_and_replaces_default_route() -> None:
    routes = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": ["reviews"],  # short name in the VS namespace
                    "http": [
                        {
                            "name": "jason",
                            "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                            "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                        },
                        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
                    ],
                },
            )
        ]
    )
    assert [r.name for r in routes] == ["jason", ""]
    first, second = routes
    (hm,) = first.match.headers
    assert (hm.name, hm.string_match.exact) == ("end-user", "jason")
    assert first.match.prefix == "/" and first.match.case_sensitive.value
    assert first.route.cluster == f"outbound|9080|v2|{REVIEWS}"
    # No timeout: istiod's inbound form (max_grpc_timeout is deprecated).
    msd = first.route.max_stream_duration
    assert msd.HasField("grpc_timeout_header_max") and msd.grpc_timeout_header_max.seconds == 0
    assert msd.HasField("max_stream_duration") and not first.route.HasField("max_grpc_timeout")
    assert second.route.cluster == f"outbound|9080|v1|{REVIEWS}"
    assert first.decorator.operation == f"{REVIEWS}:9080/*"
    assert first.metadata.filter_metadata["istio"].fields["config"].string_value == (
        "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"
    )
    # istiod's defaults: no timeout, default retry policy with previous-hosts predicate.
    assert first.route.timeout.ToSeconds() == 0 and first.route.HasField("timeout")
    assert first.route.retry_policy.num_retries.value == 2
    assert first.route.retry_policy.retry_host_predicate[0].name == (
        "envoy.retry_host_predicates.previous_hosts"
    )


def test_match_translation_as_istiod() -> None:
    (r,) = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": [REVIEWS],
                    "http": [
                        {
                            "match": [
                                {
                                    "name": "m",
                                    "uri": {"regex": "/api/v[0-9]+"},
                                    "headers": {"x-b": {"prefix": "p"}, "x-a": {}},
                                    "withoutHeaders": {"x-c": {"exact": "no"}, "x-d": {}},
                                    "method": {"exact": "GET"},
                                    "authority": {"exact": "reviews"},
                                    "queryParams": {"q": {"exact": "1"}, "p": {"regex": "*"}},
                                    "ignoreUriCase": True,
                                }
                            ],
                            "route": [{"destination": {"host": REVIEWS}}],
                        }
                    ],
                },
            )
        ]
    )[:1]
    m = r.match
    assert r.name == ".m"
    assert m.safe_regex.regex == "/api/v[0-9]+" and not m.case_sensitive.value
    assert [h.name for h in m.headers] == ["x-a", "x-b", "x-c", "x-d", ":method", ":authority"]
    by = {h.name: h for h in m.headers}
    assert by["x-a"].present_match and by["x-b"].string_match.prefix == "p"
    assert by["x-c"].invert_match and by["x-c"].treat_missing_header_as_empty
    assert by["x-d"].invert_match and by["x-d"].present_match
    assert not by["x-d"].treat_missing_header_as_empty
    assert [
        (q.name, q.WhichOneof("query_parameter_match_specifier")) for q in m.query_parameters
    ] == [
        ("q", "string_match"),
        ("p", "present_match"),
    ]


def test_weights_timeout_retries_mirror_headers_rewrite() -> None:
    routes = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": ["reviews"],
                    "http": [
                        {
                            "route": [
                                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 75},
                                {
                                    "destination": {"host": "reviews", "subset": "v3"},
                                    "weight": 25,
                                    "headers": {"response": {"set": {"x-v": "3"}}},
                                },
                                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0},
                            ],
                            "timeout": "2.5s",
                            "retries": {
                                "attempts": 4,
                                "perTryTimeout": "1s",
                                "retryOn": "gateway-error,503",
                                "retryRemoteLocalities": True,
                            },
                            "mirror": {"host": RATINGS},
                            "mirrorPercentage": {"value": 12.5},
                            "headers": {
                                "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}},
                                "response": {"remove": ["server"]},
                            },
                            "rewrite": {"uri": "/v2/", "authority": "reviews-v2"},
                        }
                    ],
                },
            )
        ]
    )
    (r,) = routes
    wc = r.route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in wc] == [
        (f"outbound|9080|v1|{REVIEWS}", 75),
        (f"outbound|9080|v3|{REVIEWS}", 25),
    ]
    assert wc[1].response_headers_to_add[0].header.key == "x-v"
    assert r.route.timeout.ToMilliseconds() == 2500
    # Not istiod's max_grpc_timeout (deprecated), nor max_stream_duration (Envoy would
    # ignore the route timeout): gRPC requests get the route's timeout too.
    assert not r.route.HasField("max_grpc_timeout")
    assert not r.route.HasField("max_stream_duration")
    rp = r.route.retry_policy
    assert (rp.num_retries.value, rp.retry_on) == (4, "gateway-error,retriable-status-codes")
    assert list(rp.retriable_status_codes) == [503]
    assert rp.per_try_timeout.ToSeconds() == 1
    assert rp.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    (mp,) = r.route.request_mirror_policies
    assert mp.cluster == f"outbound|9080||{RATINGS}"
    assert mp.runtime_fraction.default_value.numerator == 125000
    hvo = base_pb2.HeaderValueOption
    assert [(h.header.key, h.append_action) for h in r.request_headers_to_add] == [
        ("x-a", hvo.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-b", hvo.APPEND_IF_EXISTS_OR_ADD),
    ]
    assert list(r.response_headers_to_remove) == ["server"]
    assert r.route.prefix_rewrite == "/v2/"
    assert r.route.host_rewrite_literal == "reviews-v2"
    assert r.decorator.operation == "reviews:9080/*"  # several clusters: the VS name


def test_retries_disabled_and_mirror_zero() -> None:
    (r,) = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": ["reviews"],
                    "http": [
                        {
                            "route": [{"destination": {"host": "reviews"}}],
                            "retries": {"attempts": 0},
                            "mirror": {"host": RATINGS},
                            "mirrorPercentage": {"value": 0},
                        }
                    ],
                },
            )
        ]
    )
    assert not r.route.HasField("retry_policy")
    assert not r.route.request_mirror_policies


def test_fault_and_cors_per_route() -> None:
    (r,) = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": ["reviews"],
                    "http": [
                        {
                            "route": [{"destination": {"host": "reviews"}}],
                            "fault": {
                                "delay": {"fixedDelay": "3s", "percentage": {"value": 100}},
                                "abort": {"httpStatus": 418, "percentage": {"value": 50}},
                            },
                            "corsPolicy": {
                                "allowOrigins": [{"exact": "https://a.example"}],
                                "allowMethods": ["GET", "POST"],
                                "allowHeaders": ["x-a"],
                                "maxAge": "1h",
                                "allowCredentials": False,
                            },
                        }
                    ],
                },
            )
        ]
    )
    fault = fault_pb2.HTTPFault()
    r.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.delay.fixed_delay.ToSeconds() == 3
    assert fault.delay.percentage.numerator == 1000000
    assert fault.abort.http_status == 418 and fault.abort.percentage.numerator == 500000
    cors = cors_pb2.CorsPolicy()
    r.typed_per_filter_config["envoy.filters.http.cors"].Unpack(cors)
    assert cors.allow_origin_string_match[0].exact == "https://a.example"
    assert (cors.allow_methods, cors.allow_headers, cors.max_age) == ("GET,POST", "x-a", "3600")
    assert cors.HasField("allow_credentials") and not cors.allow_credentials.value
    assert cors.forward_not_matching_preflights.value


def test_redirect_and_direct_response() -> None:
    routes = reviews_routes(
        [
            vs(
                "reviews",
                {
                    "hosts": ["reviews"],
                    "http": [
                        {
                            "match": [{"uri": {"exact": "/old"}}],
                            "redirect": {"uri": "/new", "authority": "x", "redirectCode": 302},
                        },
                        {
                            "match": [{"uri": {"prefix": "/gone"}}],
                            "directResponse": {"status": 410, "body": {"string": "bye"}},
                        },
                        {"route": [{"destination": {"host": "reviews"}}]},
                    ],
                },
            )
        ]
    )
    redirect, direct, _ = routes
    assert redirect.match.path == "/old"
    assert (redirect.redirect.path_redirect, redirect.redirect.host_redirect) == ("/new", "x")
    assert redirect.redirect.response_code == route_components_pb2.RedirectAction.FOUND
    assert direct.direct_response.status == 410
    assert direct.direct_response.body.inline_string == "bye"


def test_source_labels_port_and_catch_all_stop() -> None:
    docs = [
        vs(
            "reviews",
            {
                "hosts": ["reviews"],
                "http": [
                    {
                        "name": "from-pp",
                        "match": [{"sourceLabels": {"app": "productpage"}}],
                        "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                    },
                    {
                        "name": "other-port",
                        "match": [{"port": 9999}],
                        "route": [{"destination": {"host": "reviews", "subset": "v3"}}],
                    },
                    {
                        "name": "all",
                        "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                    },
                    {"name": "never", "route": [{"destination": {"host": "reviews"}}]},
                ],
            },
        )
    ]
    snap = with_configs(sample_mesh(), docs)
    plain = dataclasses.replace(sidecar(), labels=MappingProxyType({"app": "reviews"}))
    pp = dataclasses.replace(sidecar(), labels=MappingProxyType({"app": "productpage"}))
    names = {}
    for label, proxy in (("plain", plain), ("pp", pp)):
        ctx = proxy_context(snap, proxy)
        rc = dict(GENERATORS[ROUTE_TYPE](ctx))["9080"]
        names[label] = [r.name for r in vhost(rc, f"{REVIEWS}:9080").routes]
    # A sourceLabels-only match translates to a catch-all: later routes are cut (istiod).
    assert names == {"plain": ["all"], "pp": ["from-pp"]}
    # Labels a sourceLabels match reads are part of the group key.
    assert group_key(proxy_context(snap, plain)) != group_key(proxy_context(snap, pp))
    other = dataclasses.replace(sidecar(), labels=MappingProxyType({"app": "reviews", "x": "y"}))
    assert group_key(proxy_context(snap, plain)) == group_key(proxy_context(snap, other))


def test_two_virtual_services_for_one_host_first_wins_and_is_reported() -> None:
    docs = [
        vs(
            "a-first",
            {
                "hosts": ["reviews"],
                "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
            },
        ),
        vs(
            "b-second",
            {
                "hosts": [REVIEWS],
                "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}],
            },
        ),
    ]
    snap = with_configs(sample_mesh(), docs)
    (r,) = vhost(rds(snap)["9080"], f"{REVIEWS}:9080").routes
    assert r.route.cluster == f"outbound|9080|v1|{REVIEWS}"
    ctx = proxy_context(snap, sidecar())
    assert any("b-second" in m and "first wins" in m for m in ctx.conflicts)


def test_export_to_hides_virtual_service_from_other_namespaces() -> None:
    docs = [
        vs(
            "ratings",
            {
                "hosts": [RATINGS],
                "exportTo": ["."],
                "http": [{"route": [{"destination": {"host": RATINGS, "subset": "v9"}}]}],
            },
            ns="other",
        )
    ]
    snap = with_configs(sample_mesh(), docs)
    (r,) = vhost(rds(snap)["9080"], f"{RATINGS}:9080").routes
    assert r.name == "default"  # proxy in "default": not visible
    (r,) = vhost(rds(snap, ns="other", pod="x")["9080"], f"{RATINGS}:9080").routes
    assert r.route.cluster == f"outbound|9080|v9|{RATINGS}"


def test_wildcard_host_and_non_registry_host_on_port_80() -> None:
    docs = [
        vs(
            "wild",
            {
                "hosts": ["*.example.com"],
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "api.example.com", "port": {"number": 80}}}
                        ]
                    }
                ],
            },
        ),
        vs(
            "ext",
            {
                "hosts": ["bookinfo.com"],
                "http": [{"route": [{"destination": {"host": REVIEWS, "port": {"number": 9080}}}]}],
            },
        ),
    ]
    rc = rds(with_configs(sample_mesh(), docs))["80"]
    names = [v.name for v in rc.virtual_hosts]
    assert "bookinfo.com:80" in names
    assert vhost(rc, "bookinfo.com:80").routes[0].route.cluster == f"outbound|9080||{REVIEWS}"
    # the most specific wildcard owns api.example.com; its default vhost is replaced
    api = vhost(rc, "api.example.com:80")
    assert (
        api.routes[0].name == "" and api.routes[0].route.cluster == "outbound|80||api.example.com"
    )


def test_delegate_routes_merged_into_root() -> None:
    docs = [
        vs(
            "root",
            {
                "hosts": ["reviews"],
                "http": [
                    {
                        "name": "api",
                        "match": [{"uri": {"prefix": "/api"}}],
                        "delegate": {"name": "leaf", "namespace": "other"},
                        "timeout": "5s",
                    },
                    {"route": [{"destination": {"host": "reviews"}}]},
                ],
            },
        ),
        vs(
            "leaf",
            {
                "http": [
                    {
                        "name": "v2",
                        "match": [{"uri": {"prefix": "/api/v2"}}],
                        "route": [{"destination": {"host": REVIEWS, "subset": "v2"}}],
                    },
                    {
                        "name": "conflict",
                        "match": [{"uri": {"prefix": "/other"}}],
                        "route": [{"destination": {"host": REVIEWS, "subset": "v3"}}],
                    },
                    {"name": "rest", "route": [{"destination": {"host": REVIEWS, "subset": "v1"}}]},
                ]
            },
            ns="other",
        ),
    ]
    snap = with_configs(sample_mesh(), docs)
    routes = list(vhost(rds(snap)["9080"], f"{REVIEWS}:9080").routes)
    assert [(r.name, r.match.prefix, r.route.cluster) for r in routes] == [
        ("api-v2", "/api/v2", f"outbound|9080|v2|{REVIEWS}"),
        ("api-rest", "/api", f"outbound|9080|v1|{REVIEWS}"),
        ("", "/", f"outbound|9080||{REVIEWS}"),
    ]
    assert routes[0].route.timeout.ToSeconds() == 5  # inherited from the root route
    ctx = proxy_context(snap, sidecar())
    assert any("conflicts" in m and "leaf" in m for m in ctx.conflicts)


def test_missing_delegate_and_unknown_destination_are_reported_not_fatal() -> None:
    docs = [
        vs(
            "root",
            {
                "hosts": ["reviews"],
                "http": [
                    {"match": [{"uri": {"prefix": "/a"}}], "delegate": {"name": "nope"}},
                    {
                        "route": [
                            {"destination": {"host": "nowhere.example.com", "port": {"number": 80}}}
                        ]
                    },
                ],
            },
        )
    ]
    snap = with_configs(sample_mesh(), docs)
    ctx = proxy_context(snap, sidecar())
    assert any("nope not found" in m for m in ctx.conflicts)
    assert any("nowhere.example.com is not in the service registry" in m for m in ctx.conflicts)
    (r,) = vhost(rds(snap)["9080"], f"{REVIEWS}:9080").routes
    assert r.route.cluster == "outbound|80||nowhere.example.com"  # as istiod: 503 until it exists


def test_gateway_virtual_hosts_bind_by_gateway_and_host() -> None:
    docs = [
        vs(
            "ingress",
            {
                "hosts": ["bookinfo.example.com", "*.shop.example.com"],
                "gateways": ["istio-system/gw"],
                "http": [
                    {
                        "match": [{"uri": {"prefix": "/reviews"}}],
                        "route": [{"destination": {"host": REVIEWS}}],
                    },
                    {"route": [{"destination": {"host": RATINGS}}]},
                ],
            },
        ),
        vs(
            "mesh-only",
            {
                "hosts": ["bookinfo.example.com"],
                "http": [{"route": [{"destination": {"host": REVIEWS}}]}],
            },
        ),
    ]
    snap = with_configs(sample_mesh(), docs)
    gw = dataclasses.replace(sidecar(ns="istio-system", pod="gw"), type=ProxyType.ROUTER)
    ctx = proxy_context(snap, gw)
    got = vs_http.gateway_virtual_hosts(
        ctx,
        gateways=frozenset({"istio-system/gw"}),
        server_hosts=("*/bookinfo.example.com", "default/a.shop.example.com", "other/x.com"),
        port=80,
    )
    assert [(v.name, list(v.domains)) for v in got] == [  # type: ignore[attr-defined]
        ("a.shop.example.com:80", ["a.shop.example.com"]),
        ("bookinfo.example.com:80", ["bookinfo.example.com"]),
    ]
    routes = got[1].routes  # type: ignore[attr-defined]
    # reviews has several ports and no port is given: the server port (GetDestinationCluster).
    assert routes[0].route.cluster == f"outbound|80||{REVIEWS}"
    assert routes[1].route.cluster.endswith(RATINGS)
    assert got[0].routes[0].match.prefix == "/reviews"  # type: ignore[attr-defined]
    none = vs_http.gateway_virtual_hosts(
        ctx, gateways=frozenset({"istio-system/other"}), server_hosts=("*/*",), port=80
    )
    assert none == []


FULL_FEATURES = [
    vs(
        "reviews",
        {
            "hosts": ["reviews", "*.example.com", "bookinfo.com"],
            "http": [
                {
                    "name": "all-matches",
                    "match": [
                        {
                            "name": "m1",
                            "uri": {"regex": "/api/v[0-9]+"},
                            "headers": {"end-user": {"exact": "jason"}, "x-p": {"prefix": "a"}},
                            "withoutHeaders": {"x-no": {"regex": "b.*"}, "x-absent": {}},
                            "queryParams": {"q": {"exact": "1"}, "any": {"regex": "*"}},
                            "method": {"exact": "GET"},
                            "authority": {"prefix": "reviews"},
                            "scheme": {"exact": "http"},
                            "port": 9080,
                            "ignoreUriCase": True,
                            "statPrefix": "api",
                        }
                    ],
                    "route": [
                        {
                            "destination": {"host": "reviews", "subset": "v1"},
                            "weight": 60,
                            "headers": {"request": {"set": {"x-w": "1", "host": "h1"}}},
                        },
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 40},
                    ],
                    "timeout": "3s",
                    "retries": {
                        "attempts": 3,
                        "perTryTimeout": "1s",
                        "retryOn": "5xx,gateway-error,503",
                        "retryRemoteLocalities": True,
                        "retryIgnorePreviousHosts": False,
                        "backoff": "25ms",
                    },
                    "fault": {
                        "delay": {"fixedDelay": "2s", "percentage": {"value": 0.5}},
                        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}},
                    },
                    "mirrors": [
                        {"destination": {"host": RATINGS}, "percentage": {"value": 5}},
                        {"destination": {"host": RATINGS, "port": {"number": 8081}}},
                    ],
                    "corsPolicy": {
                        "allowOrigins": [{"exact": "https://a"}, {"regex": "https://.*\\.b"}],
                        "allowMethods": ["GET"],
                        "allowHeaders": ["x-a"],
                        "exposeHeaders": ["x-b"],
                        "maxAge": "10s",
                        "allowCredentials": True,
                        "unmatchedPreflights": "IGNORE",
                    },
                    "headers": {
                        "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                        "response": {"set": {"x-d": "3"}, "add": {"x-e": "4"}, "remove": ["x-f"]},
                    },
                    "rewrite": {"uriRegexRewrite": {"match": "^/api/(.*)", "rewrite": "/\\1"}},
                },
                {
                    "match": [{"uri": {"prefix": "/p"}}],
                    "route": [{"destination": {"host": "reviews"}}],
                    "rewrite": {"uri": "/q", "authority": "x"},
                    "mirror": {"host": RATINGS},
                    "mirrorPercentage": {"value": 50},
                    "fault": {"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 503}},
                },
                {
                    "match": [{"uri": {"exact": "/r"}}],
                    "redirect": {
                        "uri": "/s",
                        "authority": "t",
                        "port": 8080,
                        "scheme": "https",
                        "redirectCode": 308,
                    },
                },
                {
                    "match": [{"uri": {"prefix": "/pr"}}],
                    "redirect": {"prefixRewrite": "/x", "derivePort": "FROM_REQUEST_PORT"},
                },
                {
                    "match": [{"uri": {"exact": "/d"}}],
                    "directResponse": {"status": 404, "body": {"string": "no"}},
                },
                {"route": [{"destination": {"host": "reviews"}}], "retries": {"attempts": 0}},
            ],
        },
    ),
]


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary")
@pytest.mark.parametrize("mode", [InterceptionMode.REDIRECT, InterceptionMode.NONE])
def test_envoy_accepts_every_feature(mode: InterceptionMode, tmp_path: Path) -> None:
    snap = with_configs(sample_mesh(), FULL_FEATURES)
    proxy = sidecar(mode=mode)
    resources = generate_all(snap, proxy)
    rc = dict(resources[ROUTE_TYPE])["9080"]
    assert len(vhost(rc, f"{REVIEWS}:9080").routes) == 6  # type: ignore[arg-type]
    result = envoy_validate(static_bootstrap(resources, proxy.node_id), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Routes with timeouts and DNS clusters (sample_mesh's ServiceEntries) included.
    assert deprecated_options(result) == []


TCP_TLS = [
    vs(
        "mysql",
        {
            "hosts": ["mysql"],
            "tcp": [
                {
                    "match": [{"port": 3306, "destinationSubnets": ["10.20.0.0/16"]}],
                    "route": [{"destination": {"host": "mysql", "subset": "replica"}}],
                },
                {
                    "match": [{"port": 3306}],
                    "route": [
                        {"destination": {"host": "mysql", "subset": "v1"}, "weight": 70},
                        {"destination": {"host": "mysql", "subset": "v2"}, "weight": 30},
                    ],
                },
            ],
        },
    ),
    vs(
        "api-tls",
        {
            "hosts": ["api.example.com"],
            "tls": [
                {
                    "match": [{"sniHosts": ["api.example.com"], "port": 443}],
                    "route": [
                        {"destination": {"host": "rr.example.com", "port": {"number": 8443}}}
                    ],
                }
            ],
        },
    ),
]


def _tcp_proxy(chain: Any) -> tcp_proxy_pb2.TcpProxy:
    tp = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(tp)
    return tp


def test_tcp_routes_weighted_and_destination_subnets() -> None:
    snap = with_configs(sample_mesh(), TCP_TLS)
    ls = dict(GENERATORS[LISTENER_TYPE](proxy_context(snap, sidecar())))["10.96.0.13_3306"]
    by_match = {
        tuple(r.address_prefix for r in ch.filter_chain_match.prefix_ranges): _tcp_proxy(ch)
        for ch in ls.filter_chains  # type: ignore[attr-defined]
    }
    weighted = by_match[()]
    assert weighted.stat_prefix == "mysql.default"
    assert [(w.name, w.weight) for w in weighted.weighted_clusters.clusters] == [
        ("outbound|3306|v1|mysql.default.svc.cluster.local", 70),
        ("outbound|3306|v2|mysql.default.svc.cluster.local", 30),
    ]
    assert (
        by_match[("10.20.0.0",)].cluster == "outbound|3306|replica|mysql.default.svc.cluster.local"
    )


def test_tls_routes_match_sni() -> None:
    snap = with_configs(sample_mesh(), TCP_TLS)
    ls = dict(GENERATORS[LISTENER_TYPE](proxy_context(snap, sidecar())))["0.0.0.0_443"]
    chains = [
        (list(ch.filter_chain_match.server_names), _tcp_proxy(ch).cluster)
        for ch in ls.filter_chains  # type: ignore[attr-defined]
    ]
    assert chains == [(["api.example.com"], "outbound|8443||rr.example.com")]
    assert "envoy.filters.listener.tls_inspector" in [
        f.name
        for f in ls.listener_filters  # type: ignore[attr-defined]
    ]


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary")
@pytest.mark.parametrize("mode", [InterceptionMode.REDIRECT, InterceptionMode.NONE])
def test_envoy_accepts_tcp_and_tls_routes(mode: InterceptionMode, tmp_path: Path) -> None:
    snap = with_configs(sample_mesh(), [*TCP_TLS, *FULL_FEATURES])
    proxy = sidecar(mode=mode)
    result = envoy_validate(static_bootstrap(generate_all(snap, proxy), proxy.node_id), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_destination_port_defaults_as_istiod() -> None:
    """Sidecars: the listener port; gateways: the only port of a single-port service."""
    mysql = "mysql.default.svc.cluster.local"  # one port, 3306
    docs = [
        vs(
            "x",
            {
                "hosts": ["reviews", "db.example.com"],
                "gateways": ["mesh", "istio-system/gw"],
                "http": [{"route": [{"destination": {"host": mysql}}]}],
            },
        )
    ]
    snap = with_configs(sample_mesh(), docs)
    (r,) = vhost(rds(snap)["9080"], f"{REVIEWS}:9080").routes
    assert r.route.cluster == f"outbound|9080||{mysql}"
    gw = dataclasses.replace(sidecar(ns="istio-system", pod="gw"), type=ProxyType.ROUTER)
    (vh,) = vs_http.gateway_virtual_hosts(
        proxy_context(snap, gw),
        gateways=frozenset({"istio-system/gw"}),
        server_hosts=("*/db.example.com",),
        port=80,
    )
    assert vh.routes[0].route.cluster == f"outbound|3306||{mysql}"  # type: ignore[attr-defined]
