"""Istio task "Request Timeouts": a slow reviews backend behind a VirtualService
timeout answers 504 from Envoy; without the timeout (Istio's default: none) the
slow answer comes through."""

from __future__ import annotations

from tests.traffic.harness import TIMER_SLACK_S, Traffic, fqdn

NS = "bookinfo"
BACKEND_DELAY_S = 1.0
TIMEOUT_S = 0.3


async def test_timeout_returns_504(traffic: Traffic) -> None:
    port = traffic.port()
    reviews = await traffic.workloads("reviews", NS, port, ("v2",), delay=BACKEND_DELAY_S)
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, {
        "hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}],
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "productpage"}, name="productpage")
    host = fqdn("reviews", NS)

    # No timeout: the slow reply arrives.
    slow = await traffic.get(port, host)
    assert (slow.status, slow.backend) == (200, "reviews-v2")
    assert slow.elapsed >= BACKEND_DELAY_S

    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, {
        "hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": f"{TIMEOUT_S}s"}],
    })  # fmt: skip
    timed_out = await traffic.until_answers(
        port, host, lambda r: r.status == 504, "504 after the VirtualService timeout"
    )
    print(f"request timeout {TIMEOUT_S}s: 504 after {timed_out.elapsed:.3f}s")
    assert timed_out.body == "upstream request timeout"
    assert timed_out.elapsed >= TIMEOUT_S - TIMER_SLACK_S
    assert timed_out.backend == ""  # Envoy answered, not the backend
    before = reviews["v2"].count
    again = await traffic.get(port, host)
    assert again.status == 504
    assert reviews["v2"].count == before + 1  # the request did reach the backend
    stats = await traffic.cluster_stats(traffic.envoys[0], f"reviews.{NS}")
    assert stats.get("upstream_rq_timeout", 0) >= 2, stats
    await traffic.no_rejections()
