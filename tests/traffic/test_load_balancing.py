"""DestinationRule load balancer settings, by their effect: consistent hashing on
a header keeps each user on one endpoint while users spread over all of them."""

from __future__ import annotations

from collections import defaultdict

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"
USERS = 20  # all 20 on one endpoint of 3 by chance: 3 * 3**-20, about 1e-9


async def test_consistent_hash_on_header_is_sticky(traffic: Traffic) -> None:
    port = traffic.port()
    await traffic.workloads("ratings", NS, port, ("v1", "v2", "v3"))
    traffic.istio("dr.yaml", "DestinationRule", "ratings", NS, {
        "host": "ratings",
        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "reviews"}, name="reviews")
    host = fqdn("ratings", NS)

    seen: dict[str, set[str]] = defaultdict(set)
    for i in range(USERS):
        user = f"user-{i}"
        for r in await traffic.get_many(5, port, host, headers={"x-user": user}):
            assert r.status == 200
            seen[user].add(r.backend)
    assert all(len(b) == 1 for b in seen.values()), dict(seen)
    used = set().union(*seen.values())
    print(f"consistent hash: {USERS} users over {sorted(used)}")
    assert len(used) >= 2, used
    await traffic.no_rejections()


async def test_simple_round_robin_spreads_evenly(traffic: Traffic) -> None:
    port = traffic.port()
    ratings = await traffic.workloads("ratings", NS, port, ("v1", "v2", "v3"))
    traffic.istio("dr.yaml", "DestinationRule", "ratings", NS, {
        "host": "ratings", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "reviews"}, name="reviews")
    await traffic.get_many(30, port, fqdn("ratings", NS))
    # Round robin over 3 healthy endpoints: exactly 10 each.
    assert sorted(b.count for b in ratings.values()) == [10, 10, 10]
    await traffic.no_rejections()
