"""Istio task "Mirroring": live traffic to httpbin v1, a copy of each request to
v2; replies come from v1 only, and v2 sees the copies with Envoy's `-shadow`
host suffix."""

from __future__ import annotations

from collections import Counter

from tests.traffic.harness import Traffic, binomial_bounds, fqdn

NS = "bookinfo"
SUBSETS = {
    "host": "httpbin",
    "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
}


def mirror_vs(percent: float) -> dict[str, object]:
    return {
        "hosts": ["httpbin"],
        "http": [{
            "route": [{"destination": {"host": "httpbin", "subset": "v1"}, "weight": 100}],
            "mirror": {"host": "httpbin", "subset": "v2"},
            "mirrorPercentage": {"value": percent},
        }],
    }  # fmt: skip


async def test_mirror_sees_copies(traffic: Traffic) -> None:
    port = traffic.port()
    httpbin = await traffic.workloads("httpbin", NS, port, ("v1", "v2"))
    traffic.istio("dr.yaml", "DestinationRule", "httpbin", NS, SUBSETS)
    traffic.istio("vs.yaml", "VirtualService", "httpbin", NS, mirror_vs(100.0))
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")
    host = fqdn("httpbin", NS)

    replies = await traffic.get_many(10, port, host, "/headers")
    assert {(r.status, r.backend) for r in replies} == {(200, "httpbin-v1")}

    async def all_mirrored() -> bool:
        return httpbin["v2"].count >= 10

    await traffic.until(all_mirrored, "v2 saw the 10 mirrored requests")
    assert httpbin["v2"].count == 10
    assert httpbin["v1"].count == 10
    shadow_hosts = {s.host for s in httpbin["v2"].requests}
    print(f"mirroring: v1 {httpbin['v1'].count}, v2 {httpbin['v2'].count}, hosts {shadow_hosts}")
    assert all("-shadow" in h for h in shadow_hosts), shadow_hosts
    assert all(s.path == "/headers" for s in httpbin["v2"].requests)
    assert all("-shadow" not in s.host for s in httpbin["v1"].requests)
    await traffic.no_rejections()


async def test_mirror_percentage(traffic: Traffic) -> None:
    n = 200
    port = traffic.port()
    httpbin = await traffic.workloads("httpbin", NS, port, ("v1", "v2"))
    traffic.istio("dr.yaml", "DestinationRule", "httpbin", NS, SUBSETS)
    traffic.istio("vs.yaml", "VirtualService", "httpbin", NS, mirror_vs(25.0))
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")
    replies = await traffic.get_many(n, port, fqdn("httpbin", NS))
    assert Counter(r.backend for r in replies) == {"httpbin-v1": n}
    envoy = traffic.envoys[0]

    # Every mirrored request is answered (or failed) before we count what v2 saw.
    async def shadows_settled() -> bool:
        stats = await traffic.cluster_stats(envoy, f"|v2|httpbin.{NS}")
        return stats.get("upstream_rq_total", -1) == httpbin["v2"].count and (
            stats.get("upstream_rq_active", 0) == 0
        )

    await traffic.until(shadows_settled, "mirrored requests settled")
    low, high = binomial_bounds(n, 0.25)
    print(f"mirror 25% over {n}: v2 saw {httpbin['v2'].count}")
    assert low <= httpbin["v2"].count <= high, (httpbin["v2"].count, (low, high))
