"""Istio task "Traffic Shifting": reviews 80% v1 / 20% v3, then 100% v3.

The split of a few hundred requests must lie within 5 standard deviations of
the binomial mean (a false failure is a < 1e-6 event).
"""

from __future__ import annotations

from collections import Counter

from tests.traffic.harness import Traffic, binomial_bounds, fqdn

NS = "bookinfo"
N = 300


def weighted(*pairs: tuple[str, int]) -> dict[str, object]:
    return {
        "hosts": ["reviews"],
        "http": [
            {
                "route": [
                    {"destination": {"host": "reviews", "subset": s}, "weight": w} for s, w in pairs
                ]
            }
        ],
    }


async def test_weighted_split_then_full_shift(traffic: Traffic) -> None:
    port = traffic.port()
    reviews = await traffic.workloads("reviews", NS, port, ("v1", "v2", "v3"))
    traffic.istio("dr.yaml", "DestinationRule", "reviews", NS, {
        "host": f"reviews.{NS}.svc.cluster.local",
        "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")],
    })  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, weighted(("v1", 80), ("v3", 20)))
    await traffic.sidecar(NS)
    host = fqdn("reviews", NS)

    replies = await traffic.get_many(N, port, host)
    split = Counter(r.backend for r in replies)
    print(f"traffic shifting 80/20 over {N}: {dict(split)}")
    assert {r.status for r in replies} == {200}
    assert set(split) <= {"reviews-v1", "reviews-v3"}, split
    low, high = binomial_bounds(N, 0.2)
    assert low <= split["reviews-v3"] <= high, (split, (low, high))
    assert reviews["v2"].count == 0

    # Shift everything to v3.
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, weighted(("v3", 100)))
    await traffic.until_answers(
        port, host, lambda r: r.backend == "reviews-v3", "v3 only",
    )  # fmt: skip
    # The new route config is in place once one request shows it; all later ones agree.
    await traffic.until(
        lambda: _all_v3(traffic, port, host), what="every request goes to v3", timeout=15
    )
    after = await traffic.get_many(50, port, host)
    assert {r.backend for r in after} == {"reviews-v3"}
    await traffic.no_rejections()


async def _all_v3(traffic: Traffic, port: int, host: str) -> bool:
    return {r.backend for r in await traffic.get_many(20, port, host)} == {"reviews-v3"}


async def test_equal_weights_split_evenly(traffic: Traffic) -> None:
    port = traffic.port()
    await traffic.workloads("reviews", NS, port, ("v1", "v3"))
    traffic.istio("dr.yaml", "DestinationRule", "reviews", NS, {
        "host": "reviews",
        "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v3")],
    })  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, weighted(("v1", 50), ("v3", 50)))
    await traffic.sidecar(NS)
    replies = await traffic.get_many(N, port, f"reviews.{NS}")
    split = Counter(r.backend for r in replies)
    print(f"traffic shifting 50/50 over {N}: {dict(split)}")
    low, high = binomial_bounds(N, 0.5)
    assert split["reviews-v1"] + split["reviews-v3"] == N, split
    assert low <= split["reviews-v3"] <= high, (split, (low, high))
