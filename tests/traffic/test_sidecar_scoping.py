"""Istio "Sidecar" egress scoping: a namespace Sidecar that imports `./*` and one
host of another namespace keeps every other service out of the proxy's config;
an out-of-scope service is not routed (REGISTRY_ONLY: 502) and its own port has
no listener at all."""

from __future__ import annotations

import aiohttp
import pytest

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"
OTHER = "finance"


async def test_out_of_scope_hosts_are_absent_and_not_routed(traffic: Traffic) -> None:
    port, ledger_port = traffic.port(), traffic.port()
    await traffic.workloads("reviews", NS, port, ("v1",))
    await traffic.workloads("billing", OTHER, port, ("v1",))
    await traffic.workloads("audit", OTHER, port, ("v1",))
    await traffic.workloads("ledger", OTHER, ledger_port, ("v1",))
    envoy = await traffic.sidecar(NS, {"app": "productpage"}, name="productpage")

    # Before any Sidecar: everything is reachable.
    assert (await traffic.get(port, fqdn("billing", OTHER))).backend == "billing-v1"
    assert (await traffic.get(ledger_port, fqdn("ledger", OTHER))).backend == "ledger-v1"

    traffic.istio("sidecar.yaml", "Sidecar", "default", NS, {
        "egress": [{"hosts": ["./*", f"{OTHER}/{fqdn('audit', OTHER)}"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    })  # fmt: skip

    async def scoped() -> bool:
        config = await traffic.active_config(envoy)
        return fqdn("billing", OTHER) not in config and fqdn("ledger", OTHER) not in config

    await traffic.until(scoped, "billing and ledger removed from the proxy")
    config = await traffic.active_config(envoy)
    for kept in (fqdn("reviews", NS), fqdn("audit", OTHER)):
        assert kept in config, kept
    # Not routed: the catch-all of REGISTRY_ONLY answers, the backend sees nothing more.
    billing = traffic.backends["billing-v1"]
    before = billing.count
    reply = await traffic.get(port, fqdn("billing", OTHER), fresh=True)
    assert reply.status == 502
    assert billing.count == before
    # In scope: own namespace and the imported host.
    assert (await traffic.get(port, fqdn("reviews", NS), fresh=True)).backend == "reviews-v1"
    assert (await traffic.get(port, fqdn("audit", OTHER), fresh=True)).backend == "audit-v1"

    # The ledger port had only an out-of-scope service: its listener is gone.
    async def ledger_listener_gone() -> bool:
        _, listeners = await envoy.get("/listeners")
        return f"127.0.0.1_{ledger_port}" not in listeners

    await traffic.until(ledger_listener_gone, "listener of the out-of-scope port removed")
    with pytest.raises(aiohttp.ClientConnectionError):
        await traffic.get(ledger_port, fqdn("ledger", OTHER), fresh=True)
    await traffic.no_rejections()


async def test_root_default_then_workload_sidecar_wins(traffic: Traffic) -> None:
    port = traffic.port()
    await traffic.workloads("reviews", NS, port, ("v1",))
    await traffic.workloads("billing", OTHER, port, ("v1",))
    # The mesh-wide default from the root namespace: own namespace and istio-system.
    traffic.istio("root-sidecar.yaml", "Sidecar", "default", "istio-system", {
        "egress": [{"hosts": ["./*", "istio-system/*"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    })  # fmt: skip
    envoy = await traffic.sidecar(NS, {"app": "productpage"}, name="productpage")
    assert (await traffic.get(port, fqdn("reviews", NS))).backend == "reviews-v1"
    assert (await traffic.get(port, fqdn("billing", OTHER))).status == 502
    assert fqdn("billing", OTHER) not in await traffic.active_config(envoy)

    # A Sidecar selecting this workload wins over the root default: only billing
    # ("*/HOST": from any namespace) is imported now, not even the own namespace.
    traffic.istio("sidecar.yaml", "Sidecar", "productpage", NS, {
        "workloadSelector": {"labels": {"app": "productpage"}},
        "egress": [{"hosts": [f"*/{fqdn('billing', OTHER)}"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    })  # fmt: skip
    await traffic.until_answers(
        port, fqdn("billing", OTHER), lambda r: r.backend == "billing-v1", "billing imported",
        fresh=True,
    )  # fmt: skip
    reviews = await traffic.get(port, fqdn("reviews", NS), fresh=True)
    assert reviews.status == 502
    config = await traffic.active_config(envoy)
    assert fqdn("reviews", NS) not in config
    assert fqdn("billing", OTHER) in config
    await traffic.no_rejections()
