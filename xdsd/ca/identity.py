"""Istio's workload identities and who may ask for what (istiod's authenticate/authorize).

- Identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
- A Kubernetes service-account token reviewed by TokenReview authenticates as
  `system:serviceaccount:NAMESPACE:SA`, which maps to that identity.
- Authorization of an xDS stream (istiod's `authorize` in the xDS server): one of
  the caller's identities must have the proxy's namespace (node metadata
  NAMESPACE, else from the node id) and, when the node metadata names a
  SERVICE_ACCOUNT, that service account.

The xDS server only knows the `Authorizer` interface (xdsd.server.auth); the
Istio rules live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from xdsd.model.proxy import NodeIdError, parse_proxy
from xdsd.server.auth import AuthError, Caller

SPIFFE = "spiffe://"
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{SPIFFE}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def parse_spiffe(uri: str) -> SpiffeId | None:
    """`spiffe://TD/ns/NS/sa/SA` as its parts; None for anything else."""
    if not uri.startswith(SPIFFE):
        return None
    parts = uri[len(SPIFFE) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return SpiffeId(parts[0], parts[2], parts[4])


def identity_from_username(username: str, trust_domain: str) -> str | None:
    """The SPIFFE identity of a Kubernetes service account user name, None for other users."""
    if not username.startswith(SA_PREFIX):
        return None
    parts = username[len(SA_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return str(SpiffeId(trust_domain, parts[0], parts[1]))


class IstioAuthorizer:
    """istiod's rule: an identity of the caller matches the proxy's namespace (and SA)."""

    def __init__(self, domain_suffix: str = "cluster.local") -> None:
        self.domain_suffix = domain_suffix

    def authorize(self, caller: Caller, node_id: str, metadata: Mapping[str, Any]) -> None:
        try:
            proxy = parse_proxy(node_id, metadata)
        except NodeIdError as e:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "bad_node", str(e)) from None
        namespace = proxy.namespace
        sa = metadata.get("SERVICE_ACCOUNT")
        service_account = sa if isinstance(sa, str) and sa else None
        ids = [i for i in (parse_spiffe(u) for u in caller.identities) if i is not None]
        for ident in ids:
            if ident.namespace != namespace:
                continue
            if service_account is not None and ident.service_account != service_account:
                continue
            return
        want = f"namespace {namespace!r}" + (
            f" and service account {service_account!r}" if service_account else ""
        )
        raise AuthError(
            grpc.StatusCode.PERMISSION_DENIED,
            "unauthorized",
            f"authenticated as {', '.join(caller.identities) or 'nobody'} "
            f"({caller.method}), which is not allowed for {want}",
        )
