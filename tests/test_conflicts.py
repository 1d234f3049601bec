"""Conflicts between objects: the oldest wins (creationTimestamp, then name, then
namespace, as istiod) and the loser is told, with the field that lost, in logs,
`validate` and (with --write-status) its status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, namespace
from tests.meshgen import istio_config, service
from xdsd.app import XdsdApp
from xdsd.demo import poll
from xdsd.model.build import build_snapshot
from xdsd.model.parse import parse_documents
from xdsd.model.proxy import parse_proxy
from xdsd.model.store import ConfigStore
from xdsd.translate._common import ROUTE_TYPE
from xdsd.translate.checks import config_problems
from xdsd.translate.generate import generate_all

NS = "shop"
NODE = "sidecar~10.1.0.5~c-0.shop~shop.svc.cluster.local"
OLD, NEW = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


def aged(doc: dict[str, Any], created: str) -> dict[str, Any]:
    doc["metadata"]["creationTimestamp"] = created
    return doc


def snapshot_of(*docs: dict[str, Any]) -> Any:
    store = ConfigStore()
    store.apply_file("c.yaml", parse_documents(list(docs), "c.yaml"))
    snap = build_snapshot(store, generation=1)
    errors = [e for e in snap.errors if e.severity == "error"]
    assert not errors, errors
    return snap


def warnings(snap: Any) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for e in [*snap.errors, *config_problems(snap)]:
        if e.severity == "warning":
            out.setdefault(e.object, []).append((e.path, e.message))
    return out


def route_to(host: str) -> dict[str, Any]:
    return {"http": [{"route": [{"destination": {"host": host}}]}]}


SERVICES = [
    service("reviews", NS, [("http", 9080)], cluster_ip="10.0.0.1"),
    service("v1", NS, [("http", 9080)], cluster_ip="10.0.0.2"),
    service("v2", NS, [("http", 9080)], cluster_ip="10.0.0.3"),
]


def test_the_older_virtual_service_routes_a_host_and_the_younger_is_told() -> None:
    # Names sort the other way round: age decides, not the name.
    older = aged(
        istio_config("VirtualService", "zz-old", NS, {"hosts": ["reviews"], **route_to("v1")}), OLD
    )
    younger = aged(
        istio_config("VirtualService", "aa-new", NS, {"hosts": ["reviews"], **route_to("v2")}), NEW
    )
    for docs in ((older, younger), (younger, older)):
        snap = snapshot_of(*SERVICES, *docs)
        routes = dict(generate_all(snap, parse_proxy(NODE, {"NAMESPACE": NS}))[ROUTE_TYPE])
        (vh,) = [v for v in routes["9080"].virtual_hosts if "reviews" in v.domains]
        assert vh.routes[0].route.cluster == "outbound|9080||v1.shop.svc.cluster.local"
        found = warnings(snap)
        ((path, message),) = found[f"VirtualService {NS}/aa-new"]
        assert path == "spec.hosts[0]"
        assert f"older VirtualService {NS}/zz-old" in message
        assert f"VirtualService {NS}/zz-old" not in found


def test_merged_destination_rules_report_what_the_younger_lost() -> None:
    older = aged(
        istio_config(
            "DestinationRule",
            "b-old",
            NS,
            {
                "host": "reviews",
                "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
            },
        ),
        OLD,
    )
    younger = aged(
        istio_config(
            "DestinationRule",
            "a-new",
            NS,
            {
                "host": "reviews",
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                "subsets": [
                    {"name": "v2", "labels": {"version": "v2"}},
                    {"name": "v1", "labels": {"version": "x"}},
                ],
            },
        ),
        NEW,
    )
    found = warnings(snapshot_of(*SERVICES, older, younger))
    lost = sorted(p for p, _ in found[f"DestinationRule {NS}/a-new"])
    assert lost == ["spec.subsets[1]", "spec.trafficPolicy"]
    assert f"DestinationRule {NS}/b-old" not in found


def test_selectorless_sidecars_and_peer_authentications_of_a_namespace() -> None:
    sc_old = aged(istio_config("Sidecar", "z-old", NS, {"egress": [{"hosts": ["./*"]}]}), OLD)
    sc_new = aged(istio_config("Sidecar", "a-new", NS, {"egress": [{"hosts": ["*/*"]}]}), NEW)
    pa = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    pa_old = aged({**pa, "metadata": {"name": "z-old", "namespace": "istio-system"}}, OLD)
    pa_new = aged({**pa, "metadata": {"name": "a-new", "namespace": "istio-system"}}, NEW)
    found = warnings(snapshot_of(*SERVICES, sc_old, sc_new, pa_old, pa_new))
    ((path, message),) = found[f"Sidecar {NS}/a-new"]
    assert path == "spec.workloadSelector" and f"Sidecar {NS}/z-old" in message
    ((path, message),) = found["PeerAuthentication istio-system/a-new"]
    assert path == "spec.selector" and "the mesh already has" in message


def test_the_older_service_entry_keeps_a_host() -> None:
    def entry(name: str, address: str, created: str) -> dict[str, Any]:
        spec = {
            "hosts": ["api.example.com"],
            "addresses": [address],
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "resolution": "STATIC",
            "endpoints": [{"address": address}],
        }
        return aged(istio_config("ServiceEntry", name, NS, spec), created)

    snap = snapshot_of(entry("zz-old", "192.0.2.1", OLD), entry("aa-new", "192.0.2.2", NEW))
    (svc,) = [s for s in snap.services if s.hostname == "api.example.com"]
    assert svc.name == "zz-old"
    assert f"ServiceEntry {NS}/aa-new" in warnings(snap)


async def test_the_loser_hears_it_in_its_status(tmp_path: Path) -> None:
    async with KubeApiServer(token="t", bookmark_interval=0.5) as api:
        api.apply(namespace(NS))
        for doc in SERVICES:
            api.apply(doc)
        # Created one after the other (the server stamps them; a tie goes by name).
        api.apply(
            istio_config("VirtualService", "a-first", NS, {"hosts": ["reviews"], **route_to("v1")})
        )
        api.apply(
            istio_config("VirtualService", "b-second", NS, {"hosts": ["reviews"], **route_to("v2")})
        )
        settings = kube_settings(tmp_path, api, write_status=True, status_delay=0.05)
        async with XdsdApp(settings) as app:
            await asyncio.wait_for(app.ready.wait(), 15)

            def messages(name: str) -> list[dict[str, Any]]:
                obj = api.get("VirtualService", NS, name) or {}
                return list((obj.get("status") or {}).get("validationMessages") or ())

            async def told() -> bool:
                return bool(messages("b-second"))

            await poll(told, timeout=10, what="the loser's status")
            (msg,) = messages("b-second")
            assert msg["level"] == "WARNING"
            assert msg["message"].startswith("spec.hosts[0]: host reviews.shop.svc.cluster.local")
            assert "older VirtualService shop/a-first" in msg["message"]
            assert messages("a-first") == []
