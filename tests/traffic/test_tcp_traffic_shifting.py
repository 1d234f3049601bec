"""Istio task "TCP Traffic Shifting": tcp-echo connections 100% to v1, then 80/20
v1/v2 (weights per connection, within 5 sigma over a few hundred connections)."""

from __future__ import annotations

from collections import Counter

from tests.traffic.harness import Traffic, binomial_bounds

NS = "istio-io-tcp-traffic-shifting"
N = 200


def tcp_vs(port: int, *weights: tuple[str, int]) -> dict[str, object]:
    return {
        "hosts": ["tcp-echo"],
        "tcp": [{
            "match": [{"port": port}],
            "route": [
                {"destination": {"host": "tcp-echo", "port": {"number": port}, "subset": s},
                 "weight": w}
                for s, w in weights
            ],
        }],
    }  # fmt: skip


async def test_tcp_weights(traffic: Traffic) -> None:
    port = traffic.port()
    echo = await traffic.workloads("tcp-echo", NS, port, ("v1", "v2"), port_name="tcp")
    traffic.istio("dr.yaml", "DestinationRule", "tcp-echo-destination", NS, {
        "host": "tcp-echo",
        "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
    })  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "tcp-echo", NS, tcp_vs(port, ("v1", 100)))
    await traffic.sidecar(NS, {"app": "curl"}, name="curl")

    answers = [await traffic.tcp(port, b"hello") for _ in range(20)]
    assert set(answers) == {"tcp-echo-v1: hello"}

    traffic.istio("vs.yaml", "VirtualService", "tcp-echo", NS, tcp_vs(port, ("v1", 80), ("v2", 20)))

    async def v2_seen() -> bool:
        return (await traffic.tcp(port)).startswith("tcp-echo-v2")

    await traffic.until(v2_seen, "v2 gets connections")
    # Fresh listener config is in place once one connection reached v2.
    split = Counter([(await traffic.tcp(port)).split(":")[0] for _ in range(N)])
    print(f"TCP shifting 80/20 over {N}: {dict(split)}")
    low, high = binomial_bounds(N, 0.2)
    assert split["tcp-echo-v1"] + split["tcp-echo-v2"] == N, split
    assert low <= split["tcp-echo-v2"] <= high, (split, (low, high))
    assert echo["v2"].count >= split["tcp-echo-v2"]
    await traffic.no_rejections()
