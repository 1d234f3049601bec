"""The Kubernetes API test server, driven by the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kube.apiserver import (
    FieldSelector,
    KubeApiServer,
    LabelSelector,
    ResourceType,
    SelectorError,
    json_patch,
    make_object,
    merge_patch,
)

pytestmark = pytest.mark.timeout(30)

NET = "networking.istio.io"
SEC = "security.istio.io"
Event = dict[str, Any]
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


def reason(exc: ApiException) -> str:
    """The reason of the Status an API error carries."""
    return str(json.loads(exc.body or b"{}")["reason"])


async def raw_json(call: Awaitable[Any]) -> Any:
    """The JSON body of a call made with _preload_content=False."""
    resp = await call
    return await resp.json(content_type=None)


async def api_client(api: KubeApiServer, **kw: Any) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config_from_dict(api.kubeconfig(**kw), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(token="t", bookmark_interval=30.0) as server:
        yield server


@pytest.fixture
async def kube(api: KubeApiServer) -> AsyncIterator[client.ApiClient]:
    ac = await api_client(api)
    try:
        yield ac
    finally:
        await ac.close()


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return make_object(
        "Service", name, ns, labels=labels, spec={"ports": [{"name": "http", "port": 80}]}
    )


class Events:
    """A watch consumed in the background: events land in a list."""

    def __init__(self, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self._watch = watch.Watch()
        self._task = asyncio.create_task(self._run(func, args, kwargs))

    async def _run(self, func: Any, args: Any, kwargs: Any) -> None:
        try:
            async with self._watch:
                async for ev in self._watch.stream(func, *args, **kwargs):
                    self.events.append(ev)
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def types(self) -> list[tuple[str, str]]:
        return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in self.events]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                if self.done.is_set():
                    raise AssertionError(f"stream ended: {self.types()} {self.error!r}")
                await asyncio.sleep(0.005)
        return self.events

    async def ended(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self.done.wait()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._watch.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------- selectors


def test_label_selector_syntax() -> None:
    obj = {"metadata": {"labels": {"app": "a", "tier": "web", "n": "5"}}}
    cases = {
        "": True,
        "app=a": True,
        "app==a": True,
        "app!=a": False,
        "app!=b": True,
        "missing!=x": True,
        "app in (a, b)": True,
        "app notin (a,b)": False,
        "missing notin (a)": True,
        "app": True,
        "!app": False,
        "!missing": True,
        "app=a,tier=web": True,
        "app=a,tier in (db)": False,
        "n>4": True,
        "n<4": False,
        "app>4": False,
        "example.com/key": False,
    }
    for text, want in cases.items():
        assert LabelSelector.parse(text).matches(obj) is want, text
    for bad in ("app=(", "a b", "=a", "app in (a", "app=a,", "n>x"):
        with pytest.raises(SelectorError):
            LabelSelector.parse(bad)


def test_field_selector_and_patches() -> None:
    obj = {"metadata": {"name": "x", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
    assert FieldSelector.parse("metadata.name=x,metadata.namespace==ns").matches(obj)
    assert not FieldSelector.parse("metadata.name!=x").matches(obj)
    assert FieldSelector.parse("spec.nodeName=n1").matches(obj)
    with pytest.raises(SelectorError):
        FieldSelector.parse("metadata.name")
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }
    doc = {"a": [1, 2], "b": {"c": 1}}
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "remove", "path": "/a/0"},
        {"op": "test", "path": "/b/c", "value": 2},
    ]
    assert json_patch(doc, ops) == {"a": [2, 3], "b": {"c": 2}}
    with pytest.raises(ValueError):
        json_patch(doc, [{"op": "test", "path": "/b/c", "value": 9}])


# --------------------------------------------------------------------------- list


async def test_list_resource_versions_and_metadata(
    api: KubeApiServer, kube: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube)
    empty = await core.list_service_for_all_namespaces()
    assert empty.items == [] and empty.metadata.resource_version == api.resource_version
    a = api.apply(svc("a", "ns1", app="a"))
    api.apply(svc("b", "ns2", app="b"))
    meta = a["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    listed = await core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in listed.items] == ["a", "b"]
    assert listed.metadata.resource_version == api.resource_version
    assert int(listed.items[1].metadata.resource_version) > int(meta["resourceVersion"])
    ns1 = await core.list_namespaced_service("ns1")
    assert [s.metadata.name for s in ns1.items] == ["a"]

    # Raw JSON as the API server sends it: built-in list items have no kind/apiVersion.
    raw = await raw_json(core.list_namespaced_service("ns1", _preload_content=False))
    assert raw["kind"] == "ServiceList" and raw["apiVersion"] == "v1"
    assert "kind" not in raw["items"][0] and raw["items"][0]["metadata"]["name"] == "a"

    # A spec change bumps generation and resourceVersion, a label change only the
    # resourceVersion, an identical write nothing.
    rv0 = int(api.resource_version)
    changed = svc("a", "ns1", app="a")
    changed["spec"]["ports"][0]["port"] = 81
    m1 = api.apply(changed)["metadata"]
    assert m1["generation"] == 2 and int(m1["resourceVersion"]) == rv0 + 1
    assert m1["uid"] == meta["uid"]
    relabeled = {**changed, "metadata": {**changed["metadata"], "labels": {"app": "z"}}}
    m2 = api.apply(relabeled)["metadata"]
    assert m2["generation"] == 2 and int(m2["resourceVersion"]) == rv0 + 2
    assert api.apply(relabeled)["metadata"]["resourceVersion"] == m2["resourceVersion"]
    assert api.resource_version == str(rv0 + 2)

    # Pages of a list are consistent: later pages come from the first page's version.
    for i in range(5):
        api.apply(make_object("ConfigMap", f"cm{i}", "pages", data={"i": str(i)}))
    page1 = await core.list_namespaced_config_map("pages", limit=2)
    assert [c.metadata.name for c in page1.items] == ["cm0", "cm1"]
    assert page1.metadata.remaining_item_count == 3
    api.delete("ConfigMap", "pages", "cm3")
    api.apply(make_object("ConfigMap", "cm9", "pages"))
    page2 = await core.list_namespaced_config_map(
        "pages", limit=2, _continue=page1.metadata._continue
    )
    page3 = await core.list_namespaced_config_map(
        "pages", limit=2, _continue=page2.metadata._continue
    )
    assert [c.metadata.name for c in page2.items + page3.items] == ["cm2", "cm3", "cm4"]
    assert page3.metadata._continue is None
    assert page3.metadata.resource_version == page1.metadata.resource_version

    # resourceVersionMatch=Exact answers the state at that version.
    exact = await core.list_namespaced_config_map(
        "pages", resource_version=page1.metadata.resource_version, resource_version_match="Exact"
    )
    assert [c.metadata.name for c in exact.items] == ["cm0", "cm1", "cm2", "cm3", "cm4"]
    assert api.count("list", "configmaps") == 4


async def test_every_kind_through_its_api(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.apply(make_object("Namespace", "ns1", None, labels={"topology.istio.io/network": "n1"}))
    api.apply(make_object("Node", "node1", None, labels={"topology.kubernetes.io/region": "r1"}))
    api.apply(make_object("Pod", "p1", "ns1", status={"podIP": "10.0.0.1"}))
    api.apply(make_object("Secret", "s1", "ns1", type="Opaque", data={"k": "dg=="}))
    api.apply(make_object("ConfigMap", "c1", "ns1", data={"k": "v"}))
    api.apply(make_object("Endpoints", "e1", "ns1", subsets=[]))
    api.apply(
        make_object(
            "EndpointSlice",
            "es1",
            "ns1",
            api_version="discovery.k8s.io/v1",
            labels={"kubernetes.io/service-name": "a"},
            addressType="IPv4",
            endpoints=[{"addresses": ["10.0.0.1"]}],
        )
    )
    assert (await core.list_namespace()).items[0].metadata.labels == {
        "topology.istio.io/network": "n1"
    }
    assert (await core.read_namespace("ns1")).metadata.name == "ns1"
    assert (await core.list_node()).items[0].metadata.name == "node1"
    assert (await core.list_pod_for_all_namespaces()).items[0].status.pod_ip == "10.0.0.1"
    assert (await core.list_namespaced_secret("ns1")).items[0].data == {"k": "dg=="}
    assert (await core.list_config_map_for_all_namespaces()).items[0].data == {"k": "v"}
    assert (await core.list_namespaced_endpoints("ns1")).items[0].metadata.name == "e1"
    disc = client.DiscoveryV1Api(kube)
    slices = await disc.list_namespaced_endpoint_slice(
        "ns1", label_selector="kubernetes.io/service-name=a"
    )
    assert slices.items[0].endpoints[0].addresses == ["10.0.0.1"]
    assert (await disc.list_endpoint_slice_for_all_namespaces()).items[0].address_type == "IPv4"
    # Discovery documents.
    versions = await client.CoreApi(kube).get_api_versions()
    assert versions.versions == ["v1"]
    groups = await client.ApisApi(kube).get_api_versions()
    assert {g.name for g in groups.groups} >= {NET, SEC, "discovery.k8s.io"}


async def test_http_writes(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    body: Any = make_object("ConfigMap", "cm", "ns1", data={"a": "1"})
    created = await core.create_namespaced_config_map("ns1", body)
    assert created.metadata.resource_version == api.resource_version
    with pytest.raises(ApiException) as dup:
        await core.create_namespaced_config_map("ns1", body)
    assert dup.value.status == 409 and reason(dup.value) == "AlreadyExists"
    stale: Any = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
    with pytest.raises(ApiException) as conflict:
        await core.replace_namespaced_config_map("cm", "ns1", stale)
    assert conflict.value.status == 409 and reason(conflict.value) == "Conflict"
    new: Any = make_object("ConfigMap", "cm", "ns1", data={"a": "2"})
    replaced = await core.replace_namespaced_config_map("cm", "ns1", new)
    assert replaced.data == {"a": "2"}
    patched = await core.patch_namespaced_config_map("cm", "ns1", {"data": {"b": "3"}})
    assert patched.data == {"a": "2", "b": "3"}
    patched = await core.patch_namespaced_config_map(
        "cm", "ns1", [{"op": "remove", "path": "/data/a"}]
    )
    assert patched.data == {"b": "3"}
    assert api.get("ConfigMap", "ns1", "cm")["data"] == {"b": "3"}  # type: ignore[index]
    before = api.resource_version
    assert api.patch("ConfigMap", "ns1", "cm", {"data": {"c": "4"}})["data"] == {"b": "3", "c": "4"}
    # Writes never touch stored versions: the state at `before` is intact.
    exact = await core.list_namespaced_config_map(
        "ns1", resource_version=before, resource_version_match="Exact"
    )
    assert exact.items[0].data == {"b": "3"}
    assert exact.items[0].metadata.resource_version == before
    await core.delete_namespaced_config_map("cm", "ns1")
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_config_map("cm", "ns1")
    assert missing.value.status == 404 and reason(missing.value) == "NotFound"
    with pytest.raises(ApiException) as missing:
        await core.delete_namespaced_config_map("cm", "ns1")
    assert missing.value.status == 404
    with pytest.raises(ApiException) as unknown:
        await client.CustomObjectsApi(kube).list_cluster_custom_object(NET, "v9", "gateways")
    assert unknown.value.status == 404
    assert api.get("ConfigMap", "ns1", "cm") is None


# --------------------------------------------------------------------------- watch


async def test_watch_create_update_delete(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.apply(svc("before"))
    listed = await core.list_namespaced_service("default")
    start = int(listed.metadata.resource_version)
    w = Events(core.list_namespaced_service, "default", resource_version=str(start))
    try:
        await api.wait_watches(1, "services")
        api.apply(svc("a"))
        await core.patch_namespaced_service("a", "default", {"metadata": {"labels": {"x": "y"}}})
        api.apply(svc("other", "elsewhere"))  # another namespace: not seen
        api.delete("Service", "default", "a")
        events = await w.wait_for(3)
        assert w.types() == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
        rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
        assert start < rvs[0] < rvs[1] < rvs[2] == int(api.resource_version)
        assert events[1]["object"].metadata.labels == {"x": "y"}  # typed V1Service
        assert events[2]["raw_object"]["kind"] == "Service"
        assert events[2]["raw_object"]["metadata"]["labels"] == {"x": "y"}  # last state
    finally:
        await w.aclose()

    # Resuming from a version in the middle replays only what came after it.
    w = Events(core.list_namespaced_service, "default", resource_version=str(rvs[0]))
    try:
        await w.wait_for(2)
        assert w.types() == [("MODIFIED", "a"), ("DELETED", "a")]
    finally:
        await w.aclose()

    # Without a version (and with "0"): the current state as ADDED, then live events.
    for rv in (None, "0"):
        kw = {} if rv is None else {"resource_version": rv}
        w = Events(core.list_service_for_all_namespaces, **kw)
        try:
            current = [("ADDED", s["metadata"]["name"]) for s in api.objects("Service")]
            assert len(current) == (2 if rv is None else 3)
            await w.wait_for(len(current))
            assert sorted(w.types()) == sorted(current)
            api.apply(svc(f"live{rv}"))
            await w.wait_for(len(current) + 1)
            assert w.types()[-1] == ("ADDED", f"live{rv}")
        finally:
            await w.aclose()


async def test_watch_timeout_and_selectors(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.apply(svc("a", app="a"))
    api.apply(svc("b", app="b"))
    api.apply(svc("c", "other", app="a"))
    listing = await core.list_service_for_all_namespaces(label_selector="app in (a)")
    assert [s.metadata.name for s in listing.items] == ["a", "c"]
    listing = await core.list_service_for_all_namespaces(label_selector="app!=a")
    assert [s.metadata.name for s in listing.items] == ["b"]
    listing = await core.list_service_for_all_namespaces(field_selector="metadata.name=c")
    assert [s.metadata.name for s in listing.items] == ["c"]
    listing = await core.list_service_for_all_namespaces(
        field_selector="metadata.namespace!=other", label_selector="app"
    )
    assert [s.metadata.name for s in listing.items] == ["a", "b"]
    with pytest.raises(ApiException) as bad:
        await core.list_service_for_all_namespaces(label_selector="app in (")
    assert bad.value.status == 400

    # timeoutSeconds ends the stream (the client stops iterating).
    w = Events(
        core.list_service_for_all_namespaces,
        label_selector="app=a",
        resource_version=api.resource_version,
        timeout_seconds=1,
    )
    try:
        await api.wait_watches(1, "services")
        # An object that starts matching is ADDED, one that stops is DELETED.
        api.apply(svc("b", app="a"))
        api.apply(svc("a", app="z"))
        api.apply(svc("d", app="q"))
        await w.wait_for(2)
        assert w.types() == [("ADDED", "b"), ("DELETED", "a")]
        deleted = w.events[1]["raw_object"]
        assert deleted["metadata"]["labels"] == {"app": "a"}  # the content that matched
        assert (
            deleted["metadata"]["resourceVersion"]
            == api.get("Service", "default", "a")[  # type: ignore[index]
                "metadata"
            ]["resourceVersion"]
        )
        await w.ended(timeout=3)
        assert w.error is None and len(w.events) == 2
    finally:
        await w.aclose()


async def test_bookmarks(kube: client.ApiClient, api: KubeApiServer) -> None:
    core = client.CoreV1Api(kube)
    api.apply(svc("a"))
    rv = api.resource_version
    w = Events(
        core.list_namespaced_service, "default", resource_version=rv, allow_watch_bookmarks=True
    )
    plain = Events(core.list_namespaced_service, "default", resource_version=rv)
    try:
        await api.wait_watches(2, "services")
        assert api.send_bookmarks() == 1  # only the watch that allows them
        await w.wait_for(1)
        assert w.events[0]["type"] == "BOOKMARK"
        assert w.events[0]["raw_object"] == {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
        }
        api.apply(make_object("ConfigMap", "elsewhere"))  # moves the global version on
        api.bookmark_interval = 0.05  # periodic bookmarks carry the current version
        await w.wait_for(3)
        assert {e["type"] for e in w.events} == {"BOOKMARK"}
        assert w.events[-1]["raw_object"]["metadata"]["resourceVersion"] == api.resource_version
        api.bookmark_interval = 30.0
        api.apply(svc("b"))
        await plain.wait_for(1)
        assert plain.types() == [("ADDED", "b")]  # never a bookmark
    finally:
        await w.aclose()
        await plain.aclose()

    # sendInitialEvents: the current state, then a bookmark marking its end.
    streaming = Events(
        core.list_namespaced_service,
        "default",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
    )
    try:
        await streaming.wait_for(3)
        assert streaming.types()[:2] == [("ADDED", "a"), ("ADDED", "b")]
        end = streaming.events[2]["raw_object"]["metadata"]
        assert end["annotations"] == {"k8s.io/initial-events-end": "true"}
    finally:
        await streaming.aclose()


async def test_expired_versions_answer_410(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.apply(svc("a"))
    old = api.resource_version
    api.apply(svc("b"))
    page = await core.list_namespaced_service("default", limit=1)
    api.apply(svc("c"))
    api.expire_before(api.resource_version)
    assert api.oldest_valid_version == api.resource_version

    with pytest.raises(ApiException) as gone:
        await core.list_namespaced_service("default", resource_version=old)
    assert gone.value.status == 410 and reason(gone.value) == "Expired"
    with pytest.raises(ApiException) as gone:
        await core.list_namespaced_service("default", limit=1, _continue=page.metadata._continue)
    assert gone.value.status == 410
    assert [r.status for r in api.requests if r.verb == "list"] == [200, 410, 410]

    # A watch from an expired version: one ERROR event (Status 410), then the end.
    body = await raw_json(
        core.list_namespaced_service(
            "default", watch=True, resource_version=old, _preload_content=False
        )
    )
    assert body["type"] == "ERROR"
    assert body["object"]["code"] == 410 and body["object"]["reason"] == "Expired"
    w = Events(core.list_namespaced_service, "default", resource_version=old, timeout_seconds=5)
    await w.ended()
    assert isinstance(w.error, ApiException) and w.error.status == 410
    await w.aclose()

    # The current version still works, and compact() expires everything older.
    current = api.resource_version
    listed = await core.list_namespaced_service("default", resource_version=current)
    assert [s.metadata.name for s in listed.items] == ["a", "b", "c"]
    api.apply(svc("d"))
    api.compact()
    with pytest.raises(ApiException) as gone:
        await core.list_namespaced_service("default", resource_version=current)
    assert gone.value.status == 410

    # A small history expires on its own.
    small = KubeApiServer(token=None, max_history=2)
    small.apply(svc("x"))
    first = small.resource_version
    for i in range(3):
        small.apply(svc(f"y{i}"))
    assert int(small.oldest_valid_version) > int(first)


async def test_auth(api: KubeApiServer) -> None:
    bad = await api_client(api, token="wrong")
    try:
        core = client.CoreV1Api(bad)
        with pytest.raises(ApiException) as denied:
            await core.list_namespaced_service("default")
        assert denied.value.status == 401 and reason(denied.value) == "Unauthorized"
        w = Events(core.list_namespaced_service, "default", timeout_seconds=5)
        await w.ended()
        assert isinstance(w.error, ApiException) and w.error.status == 401
        await w.aclose()
    finally:
        await bad.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/healthz") as resp:
            assert resp.status == 200  # health and version need no token
        async with session.get(f"{api.url}/api/v1/pods") as resp:
            assert resp.status == 401
            assert (await resp.json())["kind"] == "Status"
    # Rotating the token: the old one stops working.
    good = await api_client(api)
    api.set_token("t2")
    rotated = await api_client(api)
    try:
        with pytest.raises(ApiException):
            await client.CoreV1Api(good).list_node()
        assert (await client.CoreV1Api(rotated).list_node()).items == []
    finally:
        await good.close()
        await rotated.close()


async def test_istio_crds(api: KubeApiServer, kube: client.ApiClient) -> None:
    co = client.CustomObjectsApi(kube)
    vs = {
        "apiVersion": f"{NET}/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"]},
    }
    created = await co.create_namespaced_custom_object(NET, "v1", "shop", "virtualservices", vs)
    assert created["metadata"]["generation"] == 1
    # One object, served under every version of its group.
    for version in ("v1", "v1beta1", "v1alpha3"):
        listed = await co.list_cluster_custom_object(NET, version, "virtualservices")
        assert listed["kind"] == "VirtualServiceList"
        (item,) = listed["items"]
        assert item["apiVersion"] == f"{NET}/{version}" and item["kind"] == "VirtualService"
    listed = await co.list_namespaced_custom_object(NET, "v1beta1", "shop", "virtualservices")
    assert len(listed["items"]) == 1
    assert (await co.list_namespaced_custom_object(NET, "v1", "x", "virtualservices"))[
        "items"
    ] == []
    start = listed["metadata"]["resourceVersion"]
    w = Events(
        co.list_cluster_custom_object,
        SEC,
        "v1beta1",
        "peerauthentications",
        resource_version=start,
    )
    vsw = Events(
        co.list_namespaced_custom_object,
        NET,
        "v1alpha3",
        "shop",
        "virtualservices",
        resource_version=start,
    )
    try:
        await api.wait_watches(2)
        pa = make_object(
            "PeerAuthentication",
            "default",
            "istio-system",
            api_version=f"{SEC}/v1",
            spec={"mtls": {"mode": "STRICT"}},
        )
        api.apply(pa)
        await co.patch_namespaced_custom_object(
            NET,
            "v1",
            "shop",
            "virtualservices",
            "reviews",
            {"spec": {"hosts": ["reviews", "r2"]}},
            **MERGE_PATCH,
        )
        await co.delete_namespaced_custom_object(NET, "v1", "shop", "virtualservices", "reviews")
        await w.wait_for(1)
        assert w.events[0]["type"] == "ADDED"
        assert w.events[0]["raw_object"]["apiVersion"] == f"{SEC}/v1beta1"
        await vsw.wait_for(2)
        assert vsw.types() == [("MODIFIED", "reviews"), ("DELETED", "reviews")]
        assert vsw.events[0]["raw_object"]["metadata"]["generation"] == 2
        assert vsw.events[0]["raw_object"]["apiVersion"] == f"{NET}/v1alpha3"
    finally:
        await w.aclose()
        await vsw.aclose()
    for plural in ("destinationrules", "gateways", "serviceentries", "workloadentries", "sidecars"):
        for version in ("v1", "v1beta1", "v1alpha3"):
            assert (await co.list_cluster_custom_object(NET, version, plural))["items"] == []
    for plural in ("authorizationpolicies", "requestauthentications"):
        assert (await co.list_cluster_custom_object(SEC, "v1", plural))["items"] == []
    # Any other CRD can be registered.
    api.register(ResourceType("example.com", ("v1",), "widgets", "Widget", namespaced=False))
    api.apply({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    widgets = await co.list_cluster_custom_object("example.com", "v1", "widgets")
    assert [i["metadata"]["name"] for i in widgets["items"]] == ["w"]
    assert "namespace" not in widgets["items"][0]["metadata"]


async def test_token_review(api: KubeApiServer, kube: client.ApiClient) -> None:
    auth = client.AuthenticationV1Api(kube)
    info = api.add_token("sa-token", username="system:serviceaccount:shop:reviews")

    async def review(token: str, audiences: list[str] | None) -> Any:
        spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
        return (await auth.create_token_review(client.V1TokenReview(spec=spec))).status

    ok = await review("sa-token", ["other", "istio-ca"])
    assert ok.authenticated is True and ok.audiences == ["istio-ca"]
    assert ok.user.username == "system:serviceaccount:shop:reviews" and ok.user.uid == info.uid
    assert "system:serviceaccounts:shop" in ok.user.groups
    wrong_audience = await review("sa-token", ["kubernetes"])
    assert not wrong_audience.authenticated and "audiences" in wrong_audience.error
    assert not (await review("sa-token", None)).authenticated  # the API server's audience
    assert not (await review("unknown", ["istio-ca"])).authenticated
    api.remove_token("sa-token")
    assert not (await review("sa-token", ["istio-ca"])).authenticated
    assert api.count("tokenreview") == 5


# --------------------------------------------------------------------------- faults


async def test_drop_watches(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.apply(svc("a"))
    w = Events(core.list_namespaced_service, "default", timeout_seconds=30)
    try:
        await w.wait_for(1)
        assert api.drop_watches() == 1
        await w.ended()
        assert isinstance(w.error, aiohttp.ClientPayloadError)  # cut mid-stream
    finally:
        await w.aclose()
    w = Events(core.list_namespaced_service, "default", timeout_seconds=30)
    try:
        await w.wait_for(1)
        assert api.drop_watches(graceful=True) == 1
        await w.ended()
        assert w.error is None  # a clean end, as a server-side timeout
    finally:
        await w.aclose()
    await until(lambda: not api.watches())
    # The connection pool still works.
    assert len((await core.list_namespaced_service("default")).items) == 1


async def test_fail_next_watches_and_lists(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.fail_next_watches(1)
    api.fail_next_watches(1, status=500)
    for code in (410, 500):
        w = Events(core.list_node, resource_version=api.resource_version, timeout_seconds=5)
        await w.ended()
        assert isinstance(w.error, ApiException) and w.error.status == code
        await w.aclose()
    w = Events(core.list_node, timeout_seconds=5)
    try:
        await api.wait_watches(1, "nodes")
        api.apply(make_object("Node", "n1", None))
        await w.wait_for(1)
    finally:
        await w.aclose()
    api.fail_next_lists(2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as failed:
            await core.list_node()
        assert failed.value.status == 503
    assert len((await core.list_node()).items) == 1


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_pause_and_restart(api: KubeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    port = api.port
    api.apply(svc("a"))
    w = Events(core.list_namespaced_service, "default", timeout_seconds=30)
    try:
        await w.wait_for(1)
        await api.pause()
        assert not api.running and _refused(port)
        await w.ended()
        assert w.error is not None  # the stream was cut
    finally:
        await w.aclose()
    with pytest.raises(aiohttp.ClientConnectorError):
        await core.list_namespaced_service("default")
    rv = api.resource_version
    api.apply(svc("b"))  # changes while unreachable
    await api.resume()
    assert api.port == port and not _refused(port)
    # A watch resumes from its last version: nothing is lost.
    w = Events(core.list_namespaced_service, "default", resource_version=rv, timeout_seconds=30)
    try:
        await w.wait_for(1)
        assert w.types() == [("ADDED", "b")]
        rv = api.resource_version
        await api.restart()  # watch streams end cleanly first
        await w.ended()
        assert w.error is None and api.port == port
    finally:
        await w.aclose()
    api.apply(svc("c"))
    w = Events(core.list_namespaced_service, "default", resource_version=rv)
    try:
        await w.wait_for(1)
        assert w.types() == [("ADDED", "c")]
    finally:
        await w.aclose()

    # Restarting without state: no objects, and every earlier version expired.
    rv = api.resource_version
    await api.restart(keep_state=False)
    assert (await core.list_namespaced_service("default")).items == []
    with pytest.raises(ApiException) as gone:
        await core.list_namespaced_service("default", resource_version=rv)
    assert gone.value.status == 410


async def test_several_instances() -> None:
    async with (
        KubeApiServer(token="one") as one,
        KubeApiServer(token="two", first_resource_version=1000) as two,
    ):
        assert one.port != two.port
        one.apply(svc("from-one"))
        two.apply(svc("from-two"))
        two.apply(svc("again"))
        c1, c2 = await api_client(one), await api_client(two)
        try:
            l1 = await client.CoreV1Api(c1).list_service_for_all_namespaces()
            l2 = await client.CoreV1Api(c2).list_service_for_all_namespaces()
            assert [s.metadata.name for s in l1.items] == ["from-one"]
            assert [s.metadata.name for s in l2.items] == ["again", "from-two"]
            assert l1.metadata.resource_version == "2" and l2.metadata.resource_version == "1002"
            # A version from another cluster, newer than this one's: 504 Too large.
            core1 = client.CoreV1Api(c1)
            with pytest.raises(ApiException) as too_large:
                await core1.list_service_for_all_namespaces(resource_version="1002")
            assert too_large.value.status == 504 and reason(too_large.value) == "Timeout"
            w = Events(
                core1.list_service_for_all_namespaces, resource_version="1002", timeout_seconds=5
            )
            await w.ended()
            assert isinstance(w.error, ApiException) and w.error.status == 504
            await w.aclose()
        finally:
            await c1.close()
            await c2.close()
        secret = one.remote_secret("cluster-1")
        assert secret["metadata"]["labels"] == {"istio/multiCluster": "true"}
        assert list(secret["data"]) == ["cluster-1"]
        kc = one.kubeconfig("cluster-1", namespace="shop")
        assert kc["clusters"][0]["cluster"]["server"] == one.url
        assert kc["users"][0]["user"] == {"token": "one"}
    assert not one.running and not two.running
