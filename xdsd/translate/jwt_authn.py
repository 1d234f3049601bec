"""RequestAuthentication -> envoy.filters.http.jwt_authn (filled in by issue 12's JWT work).

The contract with RBAC (xdsd.translate.rbac): a verified token's payload is
written to the dynamic metadata namespace `envoy.filters.http.jwt_authn`
under the key `payload` (every provider the same key), so
`requestPrincipals` (`ISS/SUB`) and `request.auth.*` conditions match
`payload.iss`, `payload.sub`, `payload.aud`, `payload.azp` and claims there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

if TYPE_CHECKING:
    from xdsd.translate.context import ProxyContext

JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "payload"


def jwt_authn_filter(ctx: ProxyContext) -> hcm_pb2.HttpFilter | None:
    """The proxy's jwt_authn filter, or None when no RequestAuthentication applies."""
    return None
