"""Kubernetes sources: list+watch of API servers with kubernetes-asyncio.

Only `xdsd.sources` may import kubernetes_asyncio (an import-linter contract).

- `watch.list_watch`: the list+watch engine (relist diffs on 410 Gone,
  bookmarks, reconnect with backoff; I/O behind the `ResourceApi` protocol).
- `client`: ApiClients from kubeconfigs / in-cluster, resource types, Istio
  version discovery, `KubeResourceApi` (raw JSON through `ApiClient.call_api`).
- `cluster.ClusterSource(spec, *, kinds=None, sleep=asyncio.sleep, backoff=...,
  domain_suffix=..., watch_timeout=300, request_timeout=30.0, batch_window=0.0,
  clock=time.time, api_client_factory=None)`: one cluster as a stream of
  `ConfigChange` (`changes()`, `synced`, `status()`, `aclose()`).
  `ClusterSpec(cluster_id, kubeconfig=None, role="config", namespaces=None)`;
  `ClusterStatus(cluster_id, state, last_error, last_sync, objects, role, server)`.
- `status.StatusWriter(source_of, *, delay=0.5, ...)`: `serve --write-status`,
  writes validation results into Istio objects' `status` (`update(errors,
  served)`, `run()`); uses `ClusterSource.api_client` and `.istio_objects()`.
- `remote.RemoteSecrets(cluster=None, *, namespace="istio-system", folder=None,
  local_cluster_id=None, namespaces=None, poll_interval=1.0, sleep=..., ...)`:
  `changes()` yields `ClusterAdded(spec)` / `ClusterUpdated(spec)` /
  `ClusterRemoved(cluster_id)`; also `synced`, `clusters()`, `problems()`,
  `status()`, `aclose()`.

Additions to the agreed interfaces (all optional, nothing removed):
`ClusterStatus.role` and `.server` (defaults "config" / ""), `ClusterSource.notes`
(Istio groups/kinds the server does not serve), `RemoteSecrets.problems()`.
"""

from xdsd.sources.kube.cluster import (
    CONFIG_KINDS,
    REMOTE_KINDS,
    ClusterSource,
    ClusterSpec,
    ClusterStatus,
)
from xdsd.sources.kube.remote import (
    ClusterAdded,
    ClusterRemoved,
    ClusterUpdated,
    RemoteEvent,
    RemoteProblem,
    RemoteSecrets,
)
from xdsd.sources.kube.watch import Backoff

__all__ = [
    "CONFIG_KINDS",
    "REMOTE_KINDS",
    "Backoff",
    "ClusterAdded",
    "ClusterRemoved",
    "ClusterSource",
    "ClusterSpec",
    "ClusterStatus",
    "ClusterUpdated",
    "RemoteEvent",
    "RemoteProblem",
    "RemoteSecrets",
]
