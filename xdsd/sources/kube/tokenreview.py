"""TokenReview: is this a valid service-account token of that cluster, for audience istio-ca?

istiod authenticates proxies that present a Kubernetes JWT by asking the API
server of the cluster they name (the `clusterid` header; the config cluster when
absent) to review the token for the audience `istio-ca`. This is that call,
with kubernetes-asyncio (`AuthenticationV1Api.create_token_review`); the xDS
server reaches it through `xdsd.server.auth.TokenReviewer` (structurally: this
module does not import the server).

Tokens are never logged and never put into the reasons returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio.client import (
    ApiClient,
    AuthenticationV1Api,
    V1TokenReview,
    V1TokenReviewSpec,
)
from kubernetes_asyncio.client.rest import ApiException

from xdsd.sources.kube.client import new_api_client

log = logging.getLogger(__name__)

ISTIO_CA_AUDIENCE = "istio-ca"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"

# cluster id -> (found, kubeconfig): found False for an unknown cluster; a None
# kubeconfig means the in-cluster service account.
KubeconfigLookup = Callable[[str], tuple[bool, Mapping[str, Any] | None]]


class KubeTokenReviewer:
    """Reviews tokens against the API server of the cluster a caller names."""

    def __init__(
        self,
        lookup: KubeconfigLookup,
        default_cluster_id: str,
        *,
        audiences: Sequence[str] = (ISTIO_CA_AUDIENCE,),
        timeout: float = 10.0,
        client_factory: Callable[[Mapping[str, Any] | None], Awaitable[ApiClient]] = new_api_client,
    ) -> None:
        self._lookup = lookup
        self.default_cluster_id = default_cluster_id
        self.audiences = tuple(audiences)
        self.timeout = timeout
        self._factory = client_factory
        # cluster id -> (the kubeconfig the client was made from, the client)
        self._clients: dict[str, tuple[Mapping[str, Any] | None, ApiClient]] = {}
        self._lock = asyncio.Lock()

    async def _client(self, cluster_id: str) -> ApiClient | None:
        found, kubeconfig = self._lookup(cluster_id)
        if not found:
            return None
        async with self._lock:
            cached = self._clients.get(cluster_id)
            if cached is not None and cached[0] is kubeconfig:
                return cached[1]
            client = await self._factory(kubeconfig)
            self._clients[cluster_id] = (kubeconfig, client)
        if cached is not None:  # the cluster's credentials changed: drop the old client
            await cached[1].close()
        return client

    async def review(self, token: str, cluster_id: str | None) -> tuple[str | None, str]:
        """(user name, "") for a token the cluster authenticates for our audience, else
        (None, the reason)."""
        cluster = cluster_id or self.default_cluster_id
        try:
            client = await self._client(cluster)
        except (ValueError, OSError) as e:
            return None, f"cannot reach cluster {cluster!r} for token review: {e}"
        if client is None:
            return None, f"unknown cluster {cluster!r} for token review"
        body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=list(self.audiences)))
        try:
            result = await AuthenticationV1Api(client).create_token_review(
                body, _request_timeout=self.timeout
            )
        except ApiException as e:
            log.warning(
                "token review in cluster %s failed: HTTP %s %s", cluster, e.status, e.reason
            )
            return None, f"token review in cluster {cluster!r} failed (HTTP {e.status})"
        except (OSError, TimeoutError) as e:
            log.warning("token review in cluster %s failed: %s", cluster, type(e).__name__)
            return None, f"token review in cluster {cluster!r} failed ({type(e).__name__})"
        return _verdict(result, self.audiences, cluster)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for _, client in clients.values():
            await client.close()


def _verdict(result: Any, audiences: Sequence[str], cluster: str) -> tuple[str | None, str]:
    status = getattr(result, "status", None)
    if status is None or not status.authenticated:
        error = getattr(status, "error", None) or "not authenticated"
        # The API server's error names audiences, never the token.
        return None, f"cluster {cluster!r} did not authenticate the token: {error}"
    if audiences and not set(status.audiences or ()) & set(audiences):
        return None, f"the token is not for audience {', '.join(audiences)}"
    user = status.user
    username = getattr(user, "username", None) or ""
    groups = getattr(user, "groups", None) or []
    if SERVICE_ACCOUNTS_GROUP not in groups:
        return None, f"{username!r} is not in group {SERVICE_ACCOUNTS_GROUP}"
    return username, ""
