"""Istio "Retries" (VirtualService retries): a flaky backend that fails its first
requests with 503 succeeds through `retries.attempts`; too few attempts give the
503 back."""

from __future__ import annotations

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"


async def test_flaky_backend_succeeds_through_retries(traffic: Traffic) -> None:
    port = traffic.port()
    ratings = (await traffic.workloads("ratings", NS, port, ("v1",), fail_first=3))["v1"]
    traffic.istio("vs.yaml", "VirtualService", "ratings", NS, {
        "hosts": ["ratings"],
        "http": [{
            "route": [{"destination": {"host": "ratings"}}],
            "retries": {
                "attempts": 4, "perTryTimeout": "2s",
                "retryOn": "gateway-error,connect-failure,refused-stream",
            },
        }],
    })  # fmt: skip
    envoy = await traffic.sidecar(NS, {"app": "reviews"}, name="reviews")
    host = fqdn("ratings", NS)

    reply = await traffic.get(port, host)
    assert (reply.status, reply.backend) == (200, "ratings-v1")
    assert ratings.count == 4  # three 503s, then the answer
    stats = await traffic.cluster_stats(envoy, f"ratings.{NS}")
    print(f"retries: backend saw {ratings.count}, stats {stats.get('upstream_rq_retry')}")
    assert stats.get("upstream_rq_retry") == 3, stats
    assert stats.get("upstream_rq_retry_success") == 1, stats

    # More failures than attempts: the client gets the backend's 503 after 1 + 4 tries.
    ratings.fail_first = ratings.count + 10
    before = ratings.count
    failed = await traffic.get(port, host)
    assert failed.status == 503
    assert "ratings-v1 failing" in failed.body
    assert ratings.count - before == 5
    stats = await traffic.cluster_stats(envoy, f"ratings.{NS}")
    assert stats.get("upstream_rq_retry") == 7, stats
    await traffic.no_rejections()
