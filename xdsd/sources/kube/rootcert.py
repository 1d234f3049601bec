"""The root-cert ConfigMap writer and the `cacerts` Secret reader.

Istio's istiod writes the ConfigMap `istio-ca-root-cert` (key `root-cert.pem`,
label `istio.io/config: "true"`) into every namespace of the clusters it
leads, so proxies can verify istiod and the CA. In the external control plane
model a cluster is led when its system namespace (istio-system) carries the
annotation `topology.istio.io/controlPlaneClusters`: a comma-separated list of
the ids of clusters running control planes allowed to manage it, or `*` for any.

- `RootCertPublisher(control_plane_cluster_id, system_namespace, root_pem, ...)`:
  `sync(specs)` starts one `RootCertWriter` per cluster spec given (the config
  cluster and the remote clusters), restarts one whose kubeconfig changed and
  stops those no longer given; `set_root(pem)` rewrites every ConfigMap;
  `aclose()`. Each writer list+watches Namespaces and the `istio-ca-root-cert`
  ConfigMaps and, while the system namespace names this control plane, creates
  missing ConfigMaps (also after another party deletes one), updates different
  ones and leaves identical ones alone. Errors are logged and counted
  (`xdsd_root_cert_errors_total{cluster}`), retried after a backoff, never fatal.
- `read_cacerts_secret(kubeconfig, namespace, name)`: the PEM data of Istio's
  plug-in CA Secret (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
  `cert-chain.pem`); key material is never logged nor put in errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry, Counter

from xdsd.model.discovery import DiscoverySelectors
from xdsd.sources.kube.client import (
    CORE_TYPES,
    KubeResourceApi,
    _status_message,
    get_json,
    new_api_client,
)
from xdsd.sources.kube.watch import (
    DEFAULT_BACKOFF,
    ApiError,
    Backoff,
    Sleep,
    WatchEvent,
    describe_error,
    list_watch,
)

if TYPE_CHECKING:
    from xdsd.sources.kube.cluster import ClusterSpec

log = logging.getLogger(__name__)

ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
CONFIG_LABEL = "istio.io/config"
CONTROL_PLANE_CLUSTERS = "topology.istio.io/controlPlaneClusters"
# Kubernetes' own namespaces, which Istio leaves alone (inject.IgnoredNamespaces).
IGNORED_NAMESPACES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
)
CACERTS_KEYS = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")

ClientFactory = Callable[[Mapping[str, Any] | None], Awaitable[ApiClient]]


def namespace_in_revision(labels: Mapping[str, str], revision: str | None) -> bool:
    """A namespace whose proxies this control plane serves: with `--revision REV`, one
    labelled `istio.io/rev=REV` (for REV `default`, also `istio-injection=enabled`);
    without a revision, every namespace."""
    if not revision:
        return True
    rev = labels.get("istio.io/rev")
    if rev is not None:
        return rev == revision
    return revision == "default" and labels.get("istio-injection") == "enabled"


def leads(annotations: Mapping[str, Any] | None, cluster_id: str) -> bool:
    """Whether a system namespace's annotations let the control plane of `cluster_id` lead."""
    value = (annotations or {}).get(CONTROL_PLANE_CLUSTERS)
    if not isinstance(value, str):
        return False
    ids = {v.strip() for v in value.split(",")}
    return "*" in ids or cluster_id in ids


def desired_configmap(namespace: str, root_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CERT_CONFIGMAP,
            "namespace": namespace,
            "labels": {CONFIG_LABEL: "true"},
        },
        "data": {ROOT_CERT_KEY: root_pem},
    }


def up_to_date(cm: Mapping[str, Any], root_pem: str) -> bool:
    data = cm.get("data") or {}
    labels = (cm.get("metadata") or {}).get("labels") or {}
    return data.get(ROOT_CERT_KEY) == root_pem and labels.get(CONFIG_LABEL) == "true"


async def _send(
    api: ApiClient,
    method: str,
    path: str,
    body: Mapping[str, Any],
    *,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> dict[str, Any]:
    """A write with the client's credentials; the stored object, or ApiError."""
    resp: aiohttp.ClientResponse = await api.call_api(
        path,
        method,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=dict(body),
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout),
    )
    try:
        data = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status < 300:
        raise ApiError(resp.status, f"{method} {path}: {_status_message(resp.status, data)}")
    doc = json.loads(data)
    return doc if isinstance(doc, dict) else {}


@dataclass
class _Counters:
    writes: Counter
    errors: Counter


class RootCertWriter:
    """Keeps `istio-ca-root-cert` in every namespace of one cluster while it is led."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        control_plane_cluster_id: str,
        system_namespace: str,
        root_pem: str,
        counters: _Counters,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Sleep = asyncio.sleep,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        client_factory: ClientFactory = new_api_client,
    ) -> None:
        self.spec = spec
        self.cluster_id = spec.cluster_id
        self._us = control_plane_cluster_id
        self._system_ns = system_namespace
        self.root_pem = root_pem
        self._counters = counters
        self._backoff = backoff
        self._sleep = sleep
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._factory = client_factory
        self._namespaces: dict[str, Mapping[str, Any]] = {}
        self._configmaps: dict[str, Mapping[str, Any]] = {}
        self._synced: set[str] = set()
        self._dirty = asyncio.Event()
        self._failures = 0
        self.leading = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        # None until the config cluster's MeshConfig is known: nothing is written before.
        self._selectors: DiscoverySelectors | None = None

    def set_selectors(self, selectors: DiscoverySelectors) -> None:
        """MeshConfig discoverySelectors: only selected namespaces get the ConfigMap."""
        if selectors != self._selectors:
            self._selectors = selectors
            self._dirty.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"root-cert[{self.cluster_id}]")

    def set_root(self, root_pem: str) -> None:
        if root_pem != self.root_pem:
            self.root_pem = root_pem
            self._dirty.set()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        api = await self._factory(self.spec.kubeconfig)
        pumps: list[asyncio.Task[None]] = []
        try:
            ns_api = KubeResourceApi(
                api,
                CORE_TYPES["Namespace"],
                watch_timeout=self._watch_timeout,
                request_timeout=self._request_timeout,
            )
            cm_api = KubeResourceApi(
                api,
                CORE_TYPES["ConfigMap"],
                field_selector=f"metadata.name={ROOT_CERT_CONFIGMAP}",
                watch_timeout=self._watch_timeout,
                request_timeout=self._request_timeout,
            )
            for kind, res, state in (
                ("Namespace", ns_api, self._namespaces),
                ("ConfigMap", cm_api, self._configmaps),
            ):
                events = list_watch(res, kind=kind, sleep=self._sleep, backoff=self._backoff)
                pumps.append(asyncio.create_task(self._pump(events, state)))
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if self._synced >= {"Namespace", "ConfigMap"} and self._selectors is not None:
                    await self._reconcile(api)
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            with contextlib.suppress(Exception):
                await api.close()

    async def _pump(
        self, events: AsyncGenerator[WatchEvent, None], state: dict[str, Mapping[str, Any]]
    ) -> None:
        try:
            async for ev in events:
                # Namespaces are keyed by name, ConfigMaps by namespace (one name only).
                key = ev.name if ev.kind == "Namespace" else ev.namespace
                if ev.type in ("ADDED", "MODIFIED") and ev.object is not None:
                    state[key] = ev.object
                elif ev.type == "DELETED":
                    state.pop(key, None)
                elif ev.type == "SYNCED":
                    self._synced.add(ev.kind)
                elif ev.type == "ERROR":
                    self._error(f"watching {ev.kind}s: {ev.error}")
                    continue
                else:
                    continue
                self._dirty.set()
        finally:
            await events.aclose()

    def _error(self, message: str) -> None:
        self.last_error = message
        self._counters.errors.labels(self.cluster_id).inc()
        log.warning("root cert ConfigMaps in cluster %s: %s", self.cluster_id, message)

    def _wanted(self) -> list[str]:
        out = []
        filt = self.spec.namespaces
        for name, ns in sorted(self._namespaces.items()):
            if name in IGNORED_NAMESPACES or (filt is not None and name not in filt):
                continue
            labels = (ns.get("metadata") or {}).get("labels") or {}
            if name != self._system_ns and not (
                namespace_in_revision(labels, self.spec.revision)
                and self._selectors is not None
                and self._selectors.selects(labels)
            ):
                continue
            if ((ns.get("status") or {}).get("phase")) == "Terminating":
                continue
            out.append(name)
        return out

    async def _reconcile(self, api: ApiClient) -> None:
        system = self._namespaces.get(self._system_ns)
        lead = system is not None and leads(
            (system.get("metadata") or {}).get("annotations"), self._us
        )
        if lead != self.leading:
            self.leading = lead
            log.info(
                "cluster %s: %s the root cert ConfigMaps (%s on namespace %s)",
                self.cluster_id,
                "writing" if lead else "not writing",
                CONTROL_PLANE_CLUSTERS,
                self._system_ns,
            )
        if not lead:
            return
        failed = False
        root = self.root_pem
        for ns in self._wanted():
            cm = self._configmaps.get(ns)
            if cm is not None and up_to_date(cm, root):
                continue
            try:
                self._configmaps[ns] = await self._write(api, ns, root, exists=cm is not None)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if isinstance(e, ApiError) and e.status == 404 and ns not in self._namespaces:
                    continue  # the namespace went away meanwhile
                failed = True
                self._error(f"namespace {ns}: {describe_error(e)}")
        if failed:
            self._failures += 1
            delay = self._backoff.delay(self._failures)
            asyncio.get_running_loop().call_later(delay, self._dirty.set)
        else:
            self._failures = 0

    async def _write(self, api: ApiClient, ns: str, root: str, *, exists: bool) -> dict[str, Any]:
        path = CORE_TYPES["ConfigMap"].path(ns)
        body = desired_configmap(ns, root)
        if not exists:
            try:
                obj = await _send(api, "POST", path, body, timeout=self._request_timeout)
                self._counted("create", ns)
                return obj
            except ApiError as e:
                if e.status != 409:  # AlreadyExists: not seen by the watch yet; patch it
                    raise
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "data": body["data"]}
        obj = await _send(
            api,
            "PATCH",
            f"{path}/{ROOT_CERT_CONFIGMAP}",
            patch,
            content_type="application/merge-patch+json",
            timeout=self._request_timeout,
        )
        self._counted("update", ns)
        return obj

    def _counted(self, op: str, ns: str) -> None:
        self._counters.writes.labels(self.cluster_id, op).inc()
        log.info("cluster %s: %sd ConfigMap %s/%s", self.cluster_id, op, ns, ROOT_CERT_CONFIGMAP)


class RootCertPublisher:
    """One `RootCertWriter` per cluster given to `sync`."""

    def __init__(
        self,
        control_plane_cluster_id: str,
        system_namespace: str,
        root_pem: str,
        *,
        registry: CollectorRegistry | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = 300,
        client_factory: ClientFactory = new_api_client,
    ) -> None:
        self.control_plane_cluster_id = control_plane_cluster_id
        self.system_namespace = system_namespace
        self.root_pem = root_pem
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._factory = client_factory
        self._counters = _Counters(
            Counter(
                "xdsd_root_cert_writes",
                "istio-ca-root-cert ConfigMaps created or updated.",
                ["cluster", "op"],
                registry=registry,
            ),
            Counter(
                "xdsd_root_cert_errors",
                "Failed reads or writes of istio-ca-root-cert ConfigMaps.",
                ["cluster"],
                registry=registry,
            ),
        )
        self.writers: dict[str, RootCertWriter] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.selectors: DiscoverySelectors | None = None  # known after the first build

    def sync(self, specs: Iterable[ClusterSpec]) -> None:
        """Write into exactly these clusters (a changed kubeconfig restarts its writer)."""
        wanted = {s.cluster_id: s for s in specs}
        for cid, w in list(self.writers.items()):
            spec = wanted.get(cid)
            if spec is None or spec.kubeconfig is not w.spec.kubeconfig:
                del self.writers[cid]
                self._stop(w)
        for cid, spec in wanted.items():
            if cid not in self.writers:
                w = RootCertWriter(
                    spec,
                    control_plane_cluster_id=self.control_plane_cluster_id,
                    system_namespace=self.system_namespace,
                    root_pem=self.root_pem,
                    counters=self._counters,
                    backoff=self._backoff,
                    watch_timeout=self._watch_timeout,
                    client_factory=self._factory,
                )
                if self.selectors is not None:
                    w.set_selectors(self.selectors)
                self.writers[cid] = w
                w.start()

    def set_selectors(self, selectors: DiscoverySelectors) -> None:
        self.selectors = selectors
        for w in self.writers.values():
            w.set_selectors(selectors)

    def set_root(self, root_pem: str) -> None:
        self.root_pem = root_pem
        for w in self.writers.values():
            w.set_root(root_pem)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            cid: {"leading": w.leading, "last_error": w.last_error}
            for cid, w in sorted(self.writers.items())
        }

    def _stop(self, w: RootCertWriter) -> None:
        task = asyncio.create_task(w.aclose())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def aclose(self) -> None:
        writers, self.writers = list(self.writers.values()), {}
        await asyncio.gather(*(w.aclose() for w in writers), *self._stopping)


# -- the cacerts Secret ------------------------------------------------------------------------


async def read_cacerts_secret(
    kubeconfig: Mapping[str, Any] | None,
    namespace: str,
    name: str,
    *,
    timeout: float = 30.0,
    client_factory: ClientFactory = new_api_client,
) -> dict[str, bytes]:
    """The PEM entries of Istio's plug-in CA Secret present in it (CACERTS_KEYS).

    ValueError names the Secret and the problem, never its content.
    """
    api = await client_factory(kubeconfig)
    try:
        doc = await get_json(api, f"{CORE_TYPES['Secret'].path(namespace)}/{name}", timeout=timeout)
    except ApiError as e:
        raise ValueError(f"cannot read Secret {namespace}/{name}: {describe_error(e)}") from None
    except (OSError, TimeoutError) as e:
        raise ValueError(f"cannot read Secret {namespace}/{name}: {type(e).__name__}") from None
    finally:
        await api.close()
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, Mapping):
        raise ValueError(f"Secret {namespace}/{name} has no data")
    out: dict[str, bytes] = {}
    for key in CACERTS_KEYS:
        value = data.get(key)
        if value is None:
            continue
        try:
            out[key] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"Secret {namespace}/{name}: {key} is not base64") from None
    return out
