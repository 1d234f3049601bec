"""ClusterSource against the Kubernetes API test server, with the real kubernetes-asyncio client.

Every wait polls with a deadline; backoff is fast but real (no fixed sleeps).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kube.apiserver import DEFAULT_RESOURCES, KubeApiServer
from xdsd.model.store import ConfigChange, ConfigStore
from xdsd.sources.kube import Backoff, ClusterSource, ClusterSpec
from xdsd.sources.kube.cluster import CONFIG_KINDS, CONFIGMAP_NAMES, REMOTE_KINDS

FAST = Backoff(initial=0.02, maximum=0.2, factor=2.0, jitter=0.1)
TOKEN = "s3cret-token-value"

Obj = dict[str, Any]


async def until(pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def svc(name: str, ns: str = "shop", port: int = 80, **labels: str) -> Obj:
    meta: Obj = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }


def vs(name: str, host: str, version: str = "v1", ns: str = "shop") -> Obj:
    return {
        "apiVersion": f"networking.istio.io/{version}",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]},
    }


def node(name: str, zone: str, heartbeat: str = "t0") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "topology.kubernetes.io/region": "r1",
                "topology.kubernetes.io/zone": zone,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": heartbeat},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        },
    }


def secret(name: str, ns: str, type_: str, value: str, **labels: str) -> Obj:
    meta: Obj = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": type_,
        "data": {"key": base64.b64encode(value.encode()).decode()},
    }


class Run:
    """A ClusterSource whose changes a task applies to a store (and records)."""

    def __init__(self, source: ClusterSource) -> None:
        self.source = source
        self.store = ConfigStore()
        self.changes: list[ConfigChange] = []
        self._task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for change in self.source.changes():
            self.store.apply(change)
            self.changes.append(change)

    async def __aenter__(self) -> Run:
        self._task = asyncio.create_task(self._consume())
        await until(lambda: self.changes, what="the initial sync")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.source.aclose()

    def files(self, since: int = 0) -> list[tuple[str, bool]]:
        """(source, present) of every file delivered in changes[since:]."""
        return [(f.source, f.result is not None) for ch in self.changes[since:] for f in ch.files]

    def names(self, kind: str) -> list[str]:
        return [f"{o.ref.namespace}/{o.ref.name}" for o in self.store.objects(kind)]


def source(api: KubeApiServer, cluster_id: str = "c1", **kw: Any) -> ClusterSource:
    namespaces = kw.pop("namespaces", None)
    role = kw.pop("role", "config")
    spec = ClusterSpec(cluster_id, api.kubeconfig(cluster_id), role, namespaces)
    kw.setdefault("backoff", FAST)
    return ClusterSource(spec, **kw)


async def sentinel(api: KubeApiServer, run: Run, name: str, kind_ns: str = "shop") -> int:
    """Create a Service and wait for it: every event before it has been delivered.

    Returns the number of changes before the sentinel's.
    """
    api.apply(svc(name, kind_ns))
    src = f"c1:Service/{kind_ns}/{name}"
    await until(lambda: (src, True) in run.files(), what=name)
    return next(i for i, ch in enumerate(run.changes) if any(f.source == src for f in ch.files))


# -- initial sync ---------------------------------------------------------------------------


async def test_initial_sync_of_every_kind_as_one_change() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("reviews"))
        api.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "reviews-abc",
                    "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": "reviews"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9080}],
                "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}],
            }
        )
        api.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "reviews-1",
                    "namespace": "shop",
                    "labels": {"app": "reviews"},
                },
                "spec": {"nodeName": "n1", "containers": [{"name": "app"}]},
                "status": {"podIP": "10.1.0.5", "phase": "Running"},
            }
        )
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        api.apply(node("n1", "z1"))
        api.apply(secret("gw-cert", "istio-system", "kubernetes.io/tls", "PEMDATA-1"))
        api.apply(secret("sa-token", "shop", "kubernetes.io/service-account-token", "TOKEN-2"))
        api.apply(secret("sh.helm.release.v1.x", "shop", "helm.sh/release.v1", "HELM-3"))
        remote = api.remote_secret("east")
        api.apply(remote)
        # Istio kinds, written in different versions: each is seen once.
        api.apply(vs("reviews", "reviews", version="v1beta1"))
        api.apply(
            {
                "apiVersion": "networking.istio.io/v1alpha3",
                "kind": "DestinationRule",
                "metadata": {"name": "reviews", "namespace": "shop"},
                "spec": {"host": "reviews"},
            }
        )
        api.apply(
            {
                "apiVersion": "networking.istio.io/v1alpha3",
                "kind": "EnvoyFilter",
                "metadata": {"name": "ef", "namespace": "shop"},
                "spec": {},
            }
        )
        api.apply(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            }
        )
        async with Run(source(api)) as run:
            first = run.changes[0]
            assert first.synced and len(run.changes) == 1
            assert sorted(f.source for f in first.files) == [
                "c1:DestinationRule/shop/reviews",
                "c1:EndpointSlice/shop/reviews-abc",
                "c1:EnvoyFilter/shop/ef",
                "c1:Namespace//shop",
                "c1:Node//n1",
                "c1:PeerAuthentication/istio-system/default",
                "c1:Pod/shop/reviews-1",
                "c1:Secret/istio-system/gw-cert",
                "c1:Service/shop/reviews",
                "c1:VirtualService/shop/reviews",
            ]
            assert first.kinds == {
                "DestinationRule",
                "EndpointSlice",
                "EnvoyFilter",
                "Namespace",
                "Node",
                "PeerAuthentication",
                "Pod",
                "Secret",
                "Service",
                "VirtualService",
            }
            assert [e for e in run.store.errors() if e.severity == "error"] == []
            svc_obj = run.store.get("Service", "shop", "reviews")
            assert svc_obj is not None and svc_obj.ref.source == "c1:Service/shop/reviews#0"
            assert run.source.synced and run.source.status().state == "synced"
            status = run.source.status()
            assert status.cluster_id == "c1" and status.objects == 10 and status.last_error is None
            assert status.last_sync is not None and status.server == api.url
            # One watch per kind (ConfigMaps: one per name read, by field selector); Istio
            # kinds in the first served of v1, v1beta1, v1alpha3.
            watches = len(CONFIG_KINDS) - 1 + len(CONFIGMAP_NAMES)
            await api.wait_watches(watches)
            versions = {(w.resource, w.version) for w in api.watches()}
            assert len(api.watches()) == watches
            assert {w.field_selector for w in api.watches("configmaps")} == {
                f"metadata.name={n}" for n in CONFIGMAP_NAMES
            }
            assert ("virtualservices", "v1") in versions
            assert ("envoyfilters", "v1alpha3") in versions
            assert ("proxyconfigs", "v1beta1") in versions
            assert ("peerauthentications", "v1") in versions
            assert all(w.bookmarks for w in api.watches())
            # Telemetry and WasmPlugin are watched too: each object is reported as not translated.
            assert api.watches("telemetries") and api.watches("wasmplugins")
            assert ("telemetries", "v1") in versions and ("wasmplugins", "v1alpha1") in versions
            # Each collection listed once.
            assert api.count("list", "virtualservices") == 1


async def test_remote_role_watches_only_endpoint_kinds() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        api.apply(vs("a", "a"))
        async with Run(source(api, role="remote")) as run:
            assert [f.source for f in run.changes[0].files] == ["c1:Service/shop/a"]
            await api.wait_watches(len(REMOTE_KINDS))
            assert {w.resource for w in api.watches()} == {
                "services",
                "endpointslices",
                "pods",
                "nodes",
                "namespaces",  # their labels: MeshConfig discoverySelectors
            }
            # No discovery of Istio groups for a remote cluster.
            assert api.count("discovery") == 0


async def test_an_istio_group_not_served_is_left_out_with_a_note() -> None:
    resources = [r for r in DEFAULT_RESOURCES if r.group != "security.istio.io"]
    async with KubeApiServer(token=TOKEN, resources=resources) as api:
        api.apply(vs("a", "a"))
        async with Run(source(api)) as run:
            assert [f.source for f in run.changes[0].files] == ["c1:VirtualService/shop/a"]
            assert any("security.istio.io" in n for n in run.source.notes)
            assert run.source.status().state == "synced"


async def test_an_istio_crd_installed_after_start_is_watched_without_restart() -> None:
    security = [r for r in DEFAULT_RESOURCES if r.group == "security.istio.io"]
    resources = [r for r in DEFAULT_RESOURCES if r.group != "security.istio.io"]
    async with KubeApiServer(token=TOKEN, resources=resources) as api:
        api.apply(vs("a", "a"))
        async with Run(source(api, rediscover_interval=0.05)) as run:
            assert [f.source for f in run.changes[0].files] == ["c1:VirtualService/shop/a"]
            # The CRDs are installed, then a policy created: it arrives as a change.
            for rt in security:
                api.register(rt)
            api.apply(
                {
                    "apiVersion": "security.istio.io/v1",
                    "kind": "PeerAuthentication",
                    "metadata": {"name": "default", "namespace": "istio-system"},
                    "spec": {"mtls": {"mode": "STRICT"}},
                }
            )
            src = "c1:PeerAuthentication/istio-system/default"
            await until(lambda: (src, True) in run.files(), what="the new kind's object")
            # Listed first, then watched (the watch may open just after the list).
            await until(lambda: bool(api.watches("peerauthentications")), what="its watch")
            assert not any("security.istio.io" in n for n in run.source.notes)
            assert run.store.get("PeerAuthentication", "istio-system", "default") is not None


# -- changes --------------------------------------------------------------------------------


async def test_create_update_delete_and_no_change_for_nothing() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        api.apply(node("n1", "z1"))
        async with Run(source(api, kinds=("Service", "Node", "VirtualService"))) as run:
            await api.wait_watches(3)
            gen0 = run.store.generation
            api.apply(svc("b"))
            await until(lambda: run.names("Service") == ["shop/a", "shop/b"])
            api.apply(svc("a", port=8080))
            await until(lambda: run.store.get("Service", "shop", "a").ports[0].port == 8080)  # type: ignore[union-attr]
            api.delete("Service", "shop", "b")
            await until(lambda: run.names("Service") == ["shop/a"])
            api.apply(vs("r", "a"))
            await until(lambda: run.store.get("VirtualService", "shop", "r") is not None)
            assert run.files(1) == [
                ("c1:Service/shop/b", True),
                ("c1:Service/shop/a", True),
                ("c1:Service/shop/b", False),
                ("c1:VirtualService/shop/r", True),
            ]
            assert run.store.generation == gen0 + 4
            # A node heartbeat (status conditions, annotations) changes nothing xdsd reads.
            mark = len(run.changes)
            api.apply(node("n1", "z1", heartbeat="t1"))
            api.apply(node("n1", "z2", heartbeat="t2"))  # a zone label: a real change
            await until(lambda: len(run.changes) > mark)
            await sentinel(api, run, "s1")
            assert run.files(mark) == [("c1:Node//n1", True), ("c1:Service/shop/s1", True)]


async def test_events_that_arrive_together_are_one_change() -> None:
    async with (
        KubeApiServer(token=TOKEN) as api,
        Run(source(api, kinds=("Service",), batch_window=0.3)) as run,
    ):
        await api.wait_watches(1)
        mark = len(run.changes)
        for name in ("x", "y", "z"):
            api.apply(svc(name))
        api.apply(svc("x", port=81))  # changed again: delivered once, last state
        api.apply(svc("tmp"))
        api.delete("Service", "shop", "tmp")  # added and gone: not delivered
        await until(lambda: len(run.changes) > mark)
        assert len(run.changes) == mark + 1
        assert sorted(run.files(mark)) == [
            ("c1:Service/shop/x", True),
            ("c1:Service/shop/y", True),
            ("c1:Service/shop/z", True),
        ]
        assert run.store.get("Service", "shop", "x").ports[0].port == 81  # type: ignore[union-attr]


async def test_namespace_filter() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a", ns="shop"))
        api.apply(svc("b", ns="other"))
        api.apply(vs("v", "a", ns="other"))
        for ns in ("shop", "other"):
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        api.apply(node("n1", "z1"))
        kinds = ("Service", "Namespace", "Node", "VirtualService")
        async with Run(source(api, kinds=kinds, namespaces=frozenset({"shop"}))) as run:
            assert sorted(f.source for f in run.changes[0].files) == [
                "c1:Namespace//shop",
                "c1:Node//n1",
                "c1:Service/shop/a",
            ]
            await api.wait_watches(4)
            by_resource = {w.resource: w.namespace for w in api.watches()}
            assert by_resource == {
                "services": "shop",
                "virtualservices": "shop",
                "namespaces": None,
                "nodes": None,
            }
            api.apply(svc("c", ns="other"))
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "third"}})
            mark = len(run.changes)
            await sentinel(api, run, "s")
            assert run.files(mark) == [("c1:Service/shop/s", True)]


async def test_secrets_kept_for_gateways_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="xdsd")
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(secret("cert", "istio-system", "kubernetes.io/tls", "TLS-VALUE-1"))
        async with Run(source(api, kinds=("Secret", "Service"))) as run:
            await api.wait_watches(2)
            assert run.files() == [("c1:Secret/istio-system/cert", True)]
            api.apply(secret("cert", "istio-system", "kubernetes.io/tls", "TLS-VALUE-2"))
            api.apply(secret("opaque", "istio-system", "Opaque", "OPAQUE-VALUE"))
            # Labelled as a remote kubeconfig afterwards: no longer a gateway credential.
            api.apply(
                secret(
                    "opaque",
                    "istio-system",
                    "Opaque",
                    "OPAQUE-VALUE",
                    **{"istio/multiCluster": "true"},
                )
            )
            api.apply(secret("tok", "shop", "kubernetes.io/service-account-token", "SA-VALUE"))
            mark = 1
            await sentinel(api, run, "s")
            files = run.files(mark)
            assert ("c1:Secret/istio-system/cert", True) in files
            assert ("c1:Secret/shop/tok", True) not in files
            assert run.store.get("Secret", "istio-system", "opaque") is None
            assert run.store.get("Secret", "shop", "tok") is None
        for value in ("TLS-VALUE", "OPAQUE-VALUE", "SA-VALUE", TOKEN):
            assert value not in caplog.text
            assert base64.b64encode(value.encode()).decode()[:12] not in caplog.text


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("graceful", [False, True])
async def test_watch_drop_resumes_without_lost_or_duplicated_events(graceful: bool) -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        api.apply(svc("b"))
        async with Run(source(api, kinds=("Service", "VirtualService"))) as run:
            await api.wait_watches(2)
            lists = api.count("list")
            api.apply(svc("c"))  # on the open watch
            await until(lambda: ("c1:Service/shop/c", True) in run.files())
            assert api.drop_watches(graceful=graceful) == 2
            # Written while no watch is open: replayed from the resourceVersion.
            api.apply(svc("d"))
            api.delete("Service", "shop", "a")
            api.apply(vs("v", "b"))
            await until(lambda: run.names("Service") == ["shop/b", "shop/c", "shop/d"])
            await until(lambda: run.store.get("VirtualService", "shop", "v") is not None)
            await sentinel(api, run, "s")
            files = run.files(1)
            assert files[0] == ("c1:Service/shop/c", True)
            assert set(files[1:4]) == {
                ("c1:Service/shop/d", True),
                ("c1:Service/shop/a", False),
                ("c1:VirtualService/shop/v", True),
            }
            assert files[4] == ("c1:Service/shop/s", True)
            assert len(run.files(1)) == 5  # nothing twice
            assert api.count("list") == lists  # resumed, not relisted
            assert run.source.status().state == "synced"


async def test_server_restart_keeps_state_and_resumes() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        async with Run(source(api, kinds=("Service",))) as run:
            await api.wait_watches(1)
            lists = api.count("list")
            await api.restart()
            api.apply(svc("b"))
            await until(lambda: run.names("Service") == ["shop/a", "shop/b"])
            await api.wait_watches(1)
            assert api.count("list") == lists
            assert run.files(1) == [("c1:Service/shop/b", True)]


async def test_server_restart_that_lost_its_state_is_a_relist_of_real_deletes() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        api.apply(svc("b"))
        async with Run(source(api, kinds=("Service",))) as run:
            await api.wait_watches(1)
            await api.restart(keep_state=False)
            api.apply(svc("b"))  # recreated in the new server
            await until(lambda: run.names("Service") == ["shop/b"])
            await sentinel(api, run, "s")
            # b's recreation carries a new uid/creationTimestamp: a modification.
            assert sorted(run.files(1)[:2]) == [
                ("c1:Service/shop/a", False),
                ("c1:Service/shop/b", True),
            ]


async def test_410_relist_is_a_diff_that_reports_gap_deletes_only() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        for name in ("a", "b", "c"):
            api.apply(svc(name))
        async with Run(source(api, kinds=("Service",))) as run:
            await api.wait_watches(1)
            lists = api.count("list", "services")
            gen0 = run.store.generation
            await api.pause()
            await until(lambda: run.source.status().state == "unreachable")
            api.apply(svc("b", port=82))  # changed during the gap
            api.delete("Service", "shop", "c")  # deleted during the gap
            api.compact()  # the client's resourceVersion is gone
            await api.resume()
            await until(lambda: api.count("list", "services") > lists, what="the relist")
            await until(lambda: run.names("Service") == ["shop/a", "shop/b"])
            await sentinel(api, run, "s")
            assert run.files(1) == [
                ("c1:Service/shop/b", True),
                ("c1:Service/shop/c", False),
                ("c1:Service/shop/s", True),
            ]
            assert len(run.changes) == 3  # the diff was one change
            assert run.store.generation == gen0 + 2
            assert run.names("Service") == ["shop/a", "shop/b", "shop/s"]
            assert run.source.status().state == "synced"


async def test_410_relist_with_nothing_changed_delivers_nothing() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        async with Run(source(api, kinds=("Service",))) as run:
            await api.wait_watches(1)
            lists = api.count("list", "services")
            api.fail_next_watches(1, 410)  # the next watch: an ERROR event, code 410
            api.drop_watches()
            await until(lambda: api.count("list", "services") > lists, what="the relist")
            await api.wait_watches(1)
            await sentinel(api, run, "s")
            assert run.files(1) == [("c1:Service/shop/s", True)]


async def test_unreachable_for_a_while_keeps_objects_and_recovers() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        api.apply(svc("b"))
        sleeps: list[float] = []

        async def sleep(delay: float) -> None:
            sleeps.append(delay)
            await asyncio.sleep(delay)

        async with Run(source(api, kinds=("Service", "VirtualService"), sleep=sleep)) as run:
            await api.wait_watches(2)
            await api.pause()
            await until(lambda: run.source.status().state == "unreachable")
            status = run.source.status()
            assert status.last_error and "watch" in status.last_error
            assert TOKEN not in status.last_error
            api.delete("Service", "shop", "a")
            api.apply(vs("v", "b"))
            # Several failed reconnects, backing off; nothing is removed meanwhile.
            failures = len(api.requests)
            await until(lambda: len(sleeps) >= 6, what="retries")
            assert max(sleeps) <= FAST.maximum
            assert len(run.changes) == 1 and run.names("Service") == ["shop/a", "shop/b"]
            assert len(api.requests) == failures  # refused: the server saw nothing
            await api.resume()
            await until(lambda: run.names("Service") == ["shop/b"])
            await until(lambda: run.store.get("VirtualService", "shop", "v") is not None)
            await until(lambda: run.source.status().state == "synced")
            # The last error stays for the record (the state tells it is over).
            assert "Cannot connect" in (run.source.status().last_error or "")
            assert sorted(run.files(1)) == [
                ("c1:Service/shop/a", False),
                ("c1:VirtualService/shop/v", True),
            ]


async def test_bookmarks_advance_the_resume_point() -> None:
    async with KubeApiServer(token=TOKEN, bookmark_interval=3600) as api:
        api.apply(svc("a"))
        async with Run(source(api, kinds=("Service",))) as run:
            await api.wait_watches(1)
            first_watch = [r for r in api.requests if r.verb == "watch"][-1]
            # Other resources move the global resourceVersion on.
            for i in range(3):
                api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"m{i}"}})
            rv = api.resource_version
            assert int(rv) > int(first_watch.query["resourceVersion"])
            assert api.send_bookmarks() == 1
            api.compact()  # everything before the bookmark expires
            api.drop_watches(graceful=True)
            await until(lambda: len([r for r in api.requests if r.verb == "watch"]) >= 2)
            resumed = [r for r in api.requests if r.verb == "watch"][-1]
            assert resumed.query["resourceVersion"] == rv
            assert resumed.query["allowWatchBookmarks"] == "true"
            assert api.count("list", "services") == 1  # no 410, no relist
            await sentinel(api, run, "s")
            assert run.files(1) == [("c1:Service/shop/s", True)]


async def test_wrong_token_is_unreachable_with_a_safe_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="xdsd")
    async with KubeApiServer(token=TOKEN) as api:
        spec = ClusterSpec("c1", api.kubeconfig("c1", token="wrong-token-xyz"), "remote")
        src = ClusterSource(spec, backoff=FAST)
        task = asyncio.create_task(anext(src.changes()))
        try:
            await until(lambda: src.status().state == "unreachable")
            error = src.status().last_error or ""
            assert "401" in error
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await src.aclose()
        assert "wrong-token-xyz" not in caplog.text and "wrong-token-xyz" not in repr(spec)
        assert "401" in caplog.text


async def test_exec_plugin_credentials_are_refreshed_when_expired(tmp_path: Path) -> None:
    """A kubeconfig whose user runs an exec plugin (EKS/GKE style) keeps working after
    the server rotates its token: the expired credential is fetched again."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib, sys\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',\n"
        "  'kind': 'ExecCredential', 'status': {\n"
        f"  'token': pathlib.Path({str(token_file)!r}).read_text(),\n"
        "  'expirationTimestamp': '2000-01-01T00:00:00Z'}}))\n"
    )
    async with KubeApiServer(token="first-token") as api:
        api.apply(svc("a"))
        kubeconfig = api.kubeconfig("c1")
        kubeconfig["users"][0]["user"] = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": sys.executable,
                "args": [str(plugin)],
            }
        }
        src = ClusterSource(ClusterSpec("c1", kubeconfig), kinds=("Service",), backoff=FAST)
        async with Run(src) as run:
            await api.wait_watches(1)
            api.set_token("second-token")
            token_file.write_text("second-token")
            api.drop_watches()
            api.apply(svc("b"))
            await until(lambda: run.names("Service") == ["shop/a", "shop/b"])
            assert not [r for r in api.requests if r.status == 401]


async def test_unreachable_from_the_start_then_syncs() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        await api.pause()
        src = source(api, kinds=("Service", "VirtualService"))
        run = Run(src)
        task = asyncio.create_task(run.__aenter__())
        await until(lambda: src.status().state == "unreachable")
        assert not src.synced
        await api.resume()
        await task
        try:
            assert run.names("Service") == ["shop/a"]
            assert src.status().state == "synced"
        finally:
            await run.__aexit__(None, None, None)


# -- shutdown -------------------------------------------------------------------------------


async def test_aclose_leaves_no_tasks_and_closes_the_watches() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        api.apply(svc("a"))
        baseline = asyncio.all_tasks()
        src = source(api)
        async with Run(src):
            await api.wait_watches(len(CONFIG_KINDS))
        await until(lambda: not api.watches(), what="the server to see its watches closed")
        await until(lambda: not (asyncio.all_tasks() - baseline), what="tasks to end")
        await src.aclose()  # idempotent


async def test_aclose_while_connecting() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        await api.pause()
        baseline = asyncio.all_tasks()
        src = source(api)
        task = asyncio.create_task(anext(src.changes()))
        await until(lambda: src.status().state == "unreachable")
        await src.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await until(lambda: not (asyncio.all_tasks() - baseline))


async def test_changes_end_after_aclose() -> None:
    async with KubeApiServer(token=TOKEN) as api:
        src = source(api, kinds=("Service",))
        seen: list[ConfigChange] = []

        async def consume() -> None:
            async for change in src.changes():
                seen.append(change)

        task = asyncio.create_task(consume())
        await until(lambda: seen)
        await src.aclose()
        async with asyncio.timeout(5):
            await task  # the loop ended by itself
        await until(lambda: not api.watches())
        closed = source(api)
        await closed.aclose()
        assert [c async for c in closed.changes()] == []


def test_spec_hides_credentials_and_compares_by_content() -> None:
    kc: dict[str, Any] = {"users": [{"name": "u", "user": {"token": "abc"}}]}
    a = ClusterSpec("east", kc, "remote")
    assert "abc" not in repr(a)
    assert a == ClusterSpec("east", dict(kc), "remote")
    assert a != ClusterSpec("east", {"users": []}, "remote")
    hash(a)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="Deployment"):
        ClusterSource(ClusterSpec("c"), kinds=("Service", "Deployment"))
