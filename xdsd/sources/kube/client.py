"""kubernetes-asyncio glue: API clients from kubeconfigs, resource types, list/watch, discovery.

- `new_api_client(kubeconfig)`: an `ApiClient` for a kubeconfig mapping (its
  current context) or, with None, the in-cluster service account. The
  connection pool is unlimited: every watch holds one connection.
- `kubeconfig_problem(doc)`: why a kubeconfig mapping cannot be used (None when
  it looks usable); messages name keys and entries, never values.
- `ResourceType` / `CORE_TYPES` / `ISTIO_KINDS`: what xdsd watches;
  `discover_istio_types` picks, per Istio kind, the first version the server
  serves among v1, v1beta1, v1alpha3, v1alpha1 (GET /apis/GROUP and /apis/GROUP/VERSION),
  so each object is seen once.
- `KubeResourceApi`: the `ResourceApi` of `watch.list_watch` for one
  collection, through `ApiClient.call_api` with `_preload_content=False`: the
  raw JSON is parsed here, so objects stay plain API dicts (camelCase), and
  list items get their apiVersion/kind (the API server leaves them out).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_incluster_config, load_kube_config_from_dict

from xdsd.sources.kube.watch import ApiError, ListResult

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500


# -- clients ------------------------------------------------------------------------------


def kubeconfig_problem(doc: object) -> str | None:
    """Why `doc` is not a usable kubeconfig (current context, its cluster and user), or None."""
    if not isinstance(doc, Mapping):
        return "a kubeconfig must be a mapping"

    def named(section: str, name: object) -> Mapping[str, Any] | None:
        entries = doc.get(section)
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if isinstance(entry, Mapping) and entry.get("name") == name:
                return entry
        return None

    for section in ("clusters", "contexts"):
        if not isinstance(doc.get(section), list) or not doc.get(section):
            return f"no {section}"
    current = doc.get("current-context")
    if not isinstance(current, str) or not current:
        return "no current-context"
    context = named("contexts", current)
    if context is None or not isinstance(context.get("context"), Mapping):
        return f"current-context {current!r} is not among the contexts"
    cluster_name = context["context"].get("cluster")
    cluster = named("clusters", cluster_name)
    if cluster is None or not isinstance(cluster.get("cluster"), Mapping):
        return f"context {current!r}: cluster {cluster_name!r} is not among the clusters"
    server = cluster["cluster"].get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        return f"cluster {cluster_name!r}: server must be an http(s):// URL"
    user_name = context["context"].get("user")
    if user_name is not None:
        user = named("users", user_name)
        if user is None or not isinstance(user.get("user"), Mapping):
            return f"context {current!r}: user {user_name!r} is not among the users"
    return None


async def new_api_client(kubeconfig: Mapping[str, Any] | None) -> ApiClient:
    """An ApiClient for the kubeconfig's current context, or in-cluster credentials (None)."""
    config = Configuration()
    if kubeconfig is None:
        load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    else:
        problem = kubeconfig_problem(kubeconfig)
        if problem is not None:
            raise ValueError(f"invalid kubeconfig: {problem}")
        loader = await load_kube_config_from_dict(
            copy.deepcopy(dict(kubeconfig)), client_configuration=config
        )
        if _uses_exec_plugin(kubeconfig):
            config.refresh_api_key_hook = _exec_refresher(loader)
    config.connection_pool_maxsize = 0  # no limit: each watch holds a connection
    return ApiClient(configuration=config)


def _uses_exec_plugin(kubeconfig: Mapping[str, Any]) -> bool:
    """Whether the current context's user gets its credentials from an exec plugin."""
    try:
        current = kubeconfig["current-context"]
        ctx = next(c for c in kubeconfig["contexts"] if c["name"] == current)["context"]
        user = next(u for u in kubeconfig["users"] if u["name"] == ctx["user"])["user"]
    except (KeyError, TypeError, StopIteration):
        return False
    return isinstance(user, Mapping) and "exec" in user


def _exec_refresher(loader: Any) -> Callable[[Configuration], Awaitable[None]]:
    """A hook run before each request: re-runs the exec plugin once its token expired.

    (kubernetes-asyncio runs the plugin only when loading the kubeconfig.) A plugin
    that gives no expirationTimestamp is not re-run.
    """

    async def refresh(config: Configuration) -> None:
        if not hasattr(loader, "exec_plugin_expiry"):
            return
        await loader.load_from_exec_plugin()  # runs the plugin only when expired
        token = getattr(loader, "token", None)
        if token:
            config.api_key["BearerToken"] = token

    return refresh


def server_of(kubeconfig: Mapping[str, Any] | None) -> str:
    """The API server URL of the kubeconfig's current context ("in-cluster" for None)."""
    if kubeconfig is None:
        return "in-cluster"
    try:
        current = kubeconfig["current-context"]
        ctx = next(c for c in kubeconfig["contexts"] if c["name"] == current)["context"]
        cluster = next(c for c in kubeconfig["clusters"] if c["name"] == ctx["cluster"])
        return str(cluster["cluster"]["server"])
    except (KeyError, TypeError, StopIteration):
        return "?"


# -- resource types -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"


CORE_TYPES: dict[str, ResourceType] = {
    t.kind: t
    for t in (
        ResourceType("Service", "", "v1", "services", True),
        ResourceType("Pod", "", "v1", "pods", True),
        ResourceType("Namespace", "", "v1", "namespaces", False),
        ResourceType("Secret", "", "v1", "secrets", True),
        ResourceType("Node", "", "v1", "nodes", False),
        ResourceType("ConfigMap", "", "v1", "configmaps", True),
        ResourceType("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True),
    )
}

# Istio kinds by group, and the versions to try, preferred first.
ISTIO_KINDS: dict[str, tuple[str, ...]] = {
    "networking.istio.io": (
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "WorkloadEntry",
        "WorkloadGroup",
        "Sidecar",
        "EnvoyFilter",
        "ProxyConfig",
    ),
    "security.istio.io": (
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ),
    # Read only to report that they are not translated (a warning on each object).
    "telemetry.istio.io": ("Telemetry",),
    "extensions.istio.io": ("WasmPlugin",),
}
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3", "v1alpha1")
ISTIO_GROUP_OF: dict[str, str] = {k: g for g, kinds in ISTIO_KINDS.items() for k in kinds}


# -- requests -----------------------------------------------------------------------------


def _status_message(status: int, body: bytes) -> str:
    """The message of a Kubernetes Status body (never other content)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, Mapping) and doc.get("kind") == "Status":
        reason = doc.get("reason") or ""
        message = doc.get("message") or ""
        return f"{reason}: {message}" if reason else str(message)
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


async def _get(
    api: ApiClient,
    path: str,
    query: Sequence[tuple[str, str]],
    timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    """GET with the client's credentials; returns the open response (2xx) or raises ApiError."""
    resp: aiohttp.ClientResponse = await api.call_api(
        path,
        "GET",
        query_params=list(query),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=timeout,
    )
    if 200 <= resp.status < 300:
        return resp
    try:
        body = await resp.read()
    finally:
        resp.release()
    raise ApiError(resp.status, _status_message(resp.status, body))


async def get_json(
    api: ApiClient,
    path: str,
    query: Sequence[tuple[str, str]] = (),
    *,
    timeout: float = 30.0,
) -> Any:
    resp = await _get(
        api, path, query, aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)
    )
    try:
        body = await resp.read()
    finally:
        resp.release()
    return json.loads(body)


class KubeResourceApi:
    """List and watch one collection of a real API server (see `watch.ResourceApi`)."""

    def __init__(
        self,
        api: ApiClient,
        rtype: ResourceType,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.api = api
        self.rtype = rtype
        self.path = rtype.path(namespace)
        self._selectors: list[tuple[str, str]] = []
        if label_selector:
            self._selectors.append(("labelSelector", label_selector))
        if field_selector:
            self._selectors.append(("fieldSelector", field_selector))
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.page_size = page_size

    def _item(self, item: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(item)
        out.setdefault("apiVersion", self.rtype.api_version)
        out.setdefault("kind", self.rtype.kind)
        return out

    async def list(self, resource_version: str | None) -> ListResult:
        items: list[dict[str, Any]] = []
        list_rv = ""
        token = ""
        while True:
            query = [*self._selectors, ("limit", str(self.page_size))]
            if token:
                query.append(("continue", token))
            elif resource_version is not None:
                query.append(("resourceVersion", resource_version))
            doc = await get_json(self.api, self.path, query, timeout=self.request_timeout)
            if not isinstance(doc, Mapping) or not isinstance(doc.get("metadata"), Mapping):
                raise ApiError(0, f"GET {self.path}: not a list")
            meta = doc["metadata"]
            if not list_rv:
                list_rv = str(meta.get("resourceVersion") or "")
            for item in doc.get("items") or ():
                if isinstance(item, Mapping):
                    items.append(self._item(item))
            token = str(meta.get("continue") or "")
            if not token:
                break
        if not list_rv:
            raise ApiError(0, f"GET {self.path}: the list has no resourceVersion")
        return ListResult(items, list_rv)

    @contextlib.asynccontextmanager
    async def watch(self, resource_version: str) -> AsyncIterator[AsyncIterator[Mapping[str, Any]]]:
        query = [
            *self._selectors,
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.watch_timeout)),
        ]
        # No read timeout below the server's own: a silent stream is not an error until then.
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.request_timeout,
            sock_read=self.watch_timeout + self.request_timeout,
        )
        resp = await _get(self.api, self.path, query, timeout)
        try:
            yield self._events(resp)
        finally:
            resp.close()

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Mapping[str, Any]]:
        while True:
            line = await resp.content.readline()
            if not line:
                return
            if not line.strip():
                continue
            event = json.loads(line)
            if not isinstance(event, Mapping):
                raise ApiError(0, "malformed watch event (not an object)")
            obj = event.get("object")
            if isinstance(obj, Mapping) and event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                event = {"type": event["type"], "object": self._item(obj)}
            yield event


# -- discovery ----------------------------------------------------------------------------


async def discover_istio_types(
    api: ApiClient,
    kinds: Sequence[str],
    *,
    timeout: float = 30.0,
) -> tuple[dict[str, ResourceType], list[str]]:
    """Resource types of the Istio `kinds` the server serves, and notes on the others.

    Per kind, the first served version among ISTIO_VERSIONS that has the kind.
    A group or kind the server does not serve is left out (with a note);
    other errors raise.
    """
    found: dict[str, ResourceType] = {}
    notes: list[str] = []
    by_group: dict[str, list[str]] = {}
    for kind in kinds:
        by_group.setdefault(ISTIO_GROUP_OF[kind], []).append(kind)
    for group, wanted in sorted(by_group.items()):
        try:
            doc = await get_json(api, f"/apis/{group}", timeout=timeout)
        except ApiError as e:
            if e.status != 404:
                raise
            notes.append(f"API group {group} is not served: {', '.join(wanted)} not watched")
            continue
        versions = doc.get("versions") if isinstance(doc, Mapping) else None
        served = {v.get("version") for v in versions or () if isinstance(v, Mapping)}
        remaining = list(wanted)
        for version in ISTIO_VERSIONS:
            if version not in served or not remaining:
                continue
            try:
                listing = await get_json(api, f"/apis/{group}/{version}", timeout=timeout)
            except ApiError as e:
                if e.status == 404:
                    continue
                raise
            resources = listing.get("resources") if isinstance(listing, Mapping) else None
            for res in resources or ():
                if not isinstance(res, Mapping):
                    continue
                plural = res.get("name")
                res_kind = res.get("kind")
                if not isinstance(plural, str) or "/" in plural or res_kind not in remaining:
                    continue
                found[res_kind] = ResourceType(
                    res_kind, group, version, plural, bool(res.get("namespaced", True))
                )
                remaining.remove(res_kind)
        if remaining:
            notes.append(f"{group} does not serve {', '.join(remaining)}: not watched")
    return found, notes
