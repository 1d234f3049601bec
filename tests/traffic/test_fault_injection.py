"""Istio task "Fault Injection": a delay and an abort for user jason on ratings.

The delay is measured (the reply comes no sooner than the delay); the abort
returns the configured status without the backend seeing the request; an abort
for a percentage of requests hits that share within a binomial tolerance.
"""

from __future__ import annotations

from collections import Counter

from tests.traffic.harness import TIMER_SLACK_S, Traffic, binomial_bounds, fqdn

NS = "bookinfo"
JASON = {"end-user": "jason"}
DELAY_S = 0.5


def ratings_vs(fault: dict[str, object]) -> dict[str, object]:
    route = [{"destination": {"host": "ratings"}}]
    return {
        "hosts": ["ratings"],
        "http": [
            {
                "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                "fault": fault,
                "route": route,
            },
            {"route": route},
        ],
    }


async def setup(traffic: Traffic, fault: dict[str, object]) -> int:
    port = traffic.port()
    await traffic.workloads("ratings", NS, port, ("v1",))
    traffic.istio("vs.yaml", "VirtualService", "ratings", NS, ratings_vs(fault))
    await traffic.sidecar(NS, {"app": "reviews", "version": "v2"}, name="reviews-v2")
    return port


async def test_delay_for_jason(traffic: Traffic) -> None:
    port = await setup(traffic, {
        "delay": {"fixedDelay": f"{DELAY_S}s", "percentage": {"value": 100.0}},
    })  # fmt: skip
    host = fqdn("ratings", NS)
    delayed = await traffic.get_many(3, port, host, headers=JASON)
    print(f"fault delay {DELAY_S}s: observed {[round(r.elapsed, 3) for r in delayed]}")
    for r in delayed:
        assert (r.status, r.backend) == (200, "ratings-v1")
        assert r.elapsed >= DELAY_S - TIMER_SLACK_S, r
    stats = await traffic.envoys[0].stats("fault")
    assert sum(v for k, v in stats.items() if k.endswith("delays_injected")) == 3, stats
    # Others are not delayed (by the fault filter: counted, not timed).
    plain = await traffic.get_many(3, port, host)
    assert {(r.status, r.backend) for r in plain} == {(200, "ratings-v1")}
    stats = await traffic.envoys[0].stats("fault")
    assert sum(v for k, v in stats.items() if k.endswith("delays_injected")) == 3, stats
    await traffic.no_rejections()


async def test_abort_for_jason(traffic: Traffic) -> None:
    port = await setup(traffic, {"abort": {"httpStatus": 500, "percentage": {"value": 100}}})
    host = fqdn("ratings", NS)
    ratings = traffic.backends["ratings-v1"]
    aborted = await traffic.get_many(10, port, host, headers=JASON)
    assert {r.status for r in aborted} == {500}
    assert all("fault filter abort" in r.body for r in aborted), aborted[0]
    assert ratings.count == 0  # the backend never saw them
    ok = await traffic.get_many(10, port, host)
    assert {(r.status, r.backend) for r in ok} == {(200, "ratings-v1")}
    assert ratings.count == 10
    await traffic.no_rejections()


async def test_abort_percentage(traffic: Traffic) -> None:
    n = 200
    port = await setup(traffic, {"abort": {"httpStatus": 503, "percentage": {"value": 50}}})
    replies = await traffic.get_many(n, port, fqdn("ratings", NS), headers=JASON)
    counts = Counter(r.status for r in replies)
    print(f"abort 50% over {n}: {dict(counts)}")
    assert set(counts) <= {200, 503}, counts
    low, high = binomial_bounds(n, 0.5)
    assert low <= counts[503] <= high, (counts, (low, high))
    assert traffic.backends["ratings-v1"].count == counts[200]
