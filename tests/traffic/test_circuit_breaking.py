"""Istio task "Circuit Breaking": a DestinationRule with connectionPool limits
(one connection, one pending request) makes concurrent requests to a slow
backend overflow: Envoy answers 503 with x-envoy-overloaded."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"
CONCURRENT = 20


async def test_overflow_under_concurrent_load(traffic: Traffic) -> None:
    port = traffic.port()
    httpbin = (await traffic.workloads("httpbin", NS, port, ("v1",), delay=0.5))["v1"]
    traffic.istio("dr.yaml", "DestinationRule", "httpbin", NS, {
        "host": "httpbin",
        "trafficPolicy": {
            "connectionPool": {
                "tcp": {"maxConnections": 1},
                "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1},
            },
        },
    })  # fmt: skip
    envoy = await traffic.sidecar(NS, {"app": "fortio"}, name="fortio")
    host = fqdn("httpbin", NS)

    replies = await asyncio.gather(
        *(traffic.get(port, host, fresh=True) for _ in range(CONCURRENT))
    )
    counts = Counter(r.status for r in replies)
    overloaded = [r for r in replies if r.headers.get("x-envoy-overloaded") == "true"]
    stats = await traffic.cluster_stats(envoy, f"httpbin.{NS}")
    print(
        f"circuit breaking, {CONCURRENT} concurrent: {dict(counts)}, "
        f"overloaded {len(overloaded)}, pending_overflow {stats.get('upstream_rq_pending_overflow')}"
        f", backend max in flight {httpbin.max_inflight}"
    )
    assert set(counts) <= {200, 503}, counts
    assert counts[200] >= 1
    assert overloaded, counts
    assert {r.status for r in overloaded} == {503}
    assert all(r.status == 200 or r in overloaded for r in replies)
    assert stats.get("upstream_rq_pending_overflow", 0) >= len(overloaded) > 0, stats
    # One connection: the backend never had two requests at once.
    assert httpbin.max_inflight == 1
    assert httpbin.count == counts[200]
    await traffic.no_rejections()


async def test_outlier_detection_ejects_a_failing_endpoint(traffic: Traffic) -> None:
    port = traffic.port()
    httpbin = await traffic.workloads("httpbin", NS, port, ("v1", "v2"))
    httpbin["v2"].fail_first, httpbin["v2"].fail_status = 10**6, 500  # always 500
    traffic.istio("dr.yaml", "DestinationRule", "httpbin", NS, {
        "host": "httpbin",
        "trafficPolicy": {
            "outlierDetection": {
                "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m",
                "maxEjectionPercent": 100,
            },
        },
    })  # fmt: skip
    envoy = await traffic.sidecar(NS, {"app": "fortio"}, name="fortio")
    host = fqdn("httpbin", NS)

    async def ejected() -> bool:
        await traffic.get(port, host)
        stats = await traffic.cluster_stats(envoy, f"httpbin.{NS}", only="outlier_detection")
        return stats.get("ejections_enforced_total", 0) >= 1

    await traffic.until(ejected, "the failing endpoint ejected")
    failures = httpbin["v2"].count
    replies = await traffic.get_many(30, port, host)
    print(f"outlier detection: v2 failed {failures} request(s) before its ejection")
    assert {(r.status, r.backend) for r in replies} == {(200, "httpbin-v1")}
    assert httpbin["v2"].count == failures  # ejected: no more traffic
    assert failures >= 1
    await traffic.no_rejections()
