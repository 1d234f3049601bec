"""Istio task "Request Routing": all traffic to reviews v1, then user jason to v2.

Subsets come from a DestinationRule (version labels); the VirtualService
matches the `end-user` header exactly.
"""

from __future__ import annotations

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"
SUBSETS = {
    "host": "reviews",
    "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")],
}


def to(subset: str) -> dict[str, object]:
    return {"destination": {"host": "reviews", "subset": subset}}


async def test_all_to_v1_then_jason_to_v2(traffic: Traffic) -> None:
    port = traffic.port()
    reviews = await traffic.workloads("reviews", NS, port, ("v1", "v2", "v3"))
    traffic.istio("dr.yaml", "DestinationRule", "reviews", NS, SUBSETS)
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, {
        "hosts": ["reviews"],
        "http": [{"route": [to("v1")]}],
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "productpage"}, name="productpage")
    host = fqdn("reviews", NS)

    # Every request, whoever asks and whichever name is used, lands on v1.
    for h in (host, f"reviews:{port}", f"reviews.{NS}"):
        replies = await traffic.get_many(10, port, h, headers={"end-user": "jason"})
        assert {(r.status, r.backend) for r in replies} == {(200, "reviews-v1")}, h

    # The task's second step: jason goes to v2, everyone else stays on v1.
    traffic.istio("vs.yaml", "VirtualService", "reviews", NS, {
        "hosts": ["reviews"],
        "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [to("v2")]},
            {"route": [to("v1")]},
        ],
    })  # fmt: skip
    await traffic.until_answers(
        port, host, lambda r: r.backend == "reviews-v2", "jason routed to v2",
        headers={"end-user": "jason"},
    )  # fmt: skip
    jason = await traffic.get_many(20, port, host, headers={"end-user": "jason"})
    others = [
        *await traffic.get_many(10, port, host),
        *await traffic.get_many(5, port, host, headers={"end-user": "Jason"}),  # exact, case
        *await traffic.get_many(5, port, host, headers={"end-user": "jason2"}),
    ]
    assert {(r.status, r.backend) for r in jason} == {(200, "reviews-v2")}
    assert {(r.status, r.backend) for r in others} == {(200, "reviews-v1")}
    assert reviews["v3"].count == 0
    # The backend saw the header Envoy forwarded.
    assert all(s.headers.get("end-user") == "jason" for s in reviews["v2"].requests)
    await traffic.no_rejections()
