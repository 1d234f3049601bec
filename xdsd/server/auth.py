"""Authentication and authorization of gRPC streams, behind small interfaces.

The server knows how to get credentials off a gRPC call (a verified client
certificate's URI SANs, a bearer token, the `clusterid` header) and runs the
configured `Authenticator`s in order, as istiod does: the first that
recognizes the caller wins; if none does, the call is refused UNAUTHENTICATED
with every authenticator's reason. What an identity may do is an `Authorizer`'s
decision (Istio's rules are in `xdsd.ca.identity`).

Denials are logged (peer, reason, never the token) and counted in
`xdsd_auth_denied{reason}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
CLUSTER_ID = "clusterid"


@dataclass(frozen=True)
class Credentials:
    """What a call presents. The token is kept out of repr (and so out of logs)."""

    peer: str
    peer_uris: tuple[str, ...] = ()  # URI SANs of a client certificate the TLS layer verified
    bearer_token: str | None = field(default=None, repr=False)
    cluster_id: str | None = None  # the `clusterid` metadata header


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its identities (URIs) and how it was authenticated."""

    identities: tuple[str, ...]
    method: str


class AuthError(Exception):
    """Refuse the call: a gRPC status code, a short reason (metric label) and a message.

    The message is returned to the caller and logged; it must not carry secrets.
    """

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class Authenticator(Protocol):
    name: str

    async def authenticate(self, creds: Credentials) -> Caller | None:
        """The caller, None if these credentials are not for this authenticator, or AuthError."""
        ...


class Authorizer(Protocol):
    def authorize(self, caller: Caller, node_id: str, metadata: Mapping[str, Any]) -> None:
        """Raise AuthError (PERMISSION_DENIED) unless the caller may act as this node."""
        ...


class TokenReviewer(Protocol):
    async def review(self, token: str, cluster_id: str | None) -> tuple[str | None, str]:
        """(the authenticated user name, "") or (None, why not); never echoes the token."""
        ...


def _over_tls(context: Any) -> bool:
    auth = context.auth_context() or {}
    return b"ssl" in auth.get("transport_security_type", ())


def credentials(context: Any) -> Credentials:
    """Credentials of a grpc.aio call (its auth context and invocation metadata)."""
    peer = str(context.peer())
    uris: tuple[str, ...] = ()
    auth = context.auth_context() or {}
    if auth.get("x509_pem_cert"):  # present only for a certificate the handshake verified
        raw = auth.get("peer_uri") or [
            v for v in auth.get("x509_subject_alternative_name", []) if v.startswith(b"spiffe://")
        ]
        uris = tuple(v.decode(errors="replace") for v in raw)
    token = None
    cluster = None
    for key, value in context.invocation_metadata() or ():
        k = key.lower()
        if k == AUTHORIZATION and isinstance(value, str):
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                token = rest.strip()
        elif k == CLUSTER_ID and isinstance(value, str) and value:
            cluster = value
    return Credentials(peer, uris, token, cluster)


class ClientCertAuthenticator:
    """A verified client certificate: its SPIFFE URI SANs are the caller's identities."""

    name = "client certificate"

    async def authenticate(self, creds: Credentials) -> Caller | None:
        ids = tuple(u for u in creds.peer_uris if u.startswith("spiffe://"))
        if not creds.peer_uris:
            return None
        if not ids:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "no_identity",
                "the client certificate has no SPIFFE URI SAN",
            )
        return Caller(ids, self.name)


class BearerTokenAuthenticator:
    """A bearer token checked by a TokenReviewer, the user name mapped to an identity."""

    name = "kubernetes token"

    def __init__(self, reviewer: TokenReviewer, to_identity: Callable[[str], str | None]) -> None:
        self.reviewer = reviewer
        self.to_identity = to_identity

    async def authenticate(self, creds: Credentials) -> Caller | None:
        if creds.bearer_token is None:
            return None
        username, problem = await self.reviewer.review(creds.bearer_token, creds.cluster_id)
        if username is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid_token", problem)
        identity = self.to_identity(username)
        if identity is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "not_service_account",
                f"token of {username!r}, not of a service account",
            )
        return Caller((identity,), self.name)


class StreamAuth:
    """The authenticators in order and the authorizer; no authenticators: auth is off."""

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        authorizer: Authorizer | None,
        registry: CollectorRegistry,
        *,
        plaintext_unauthenticated: bool = False,
    ) -> None:
        self.authenticators = tuple(authenticators)
        self.authorizer = authorizer
        # Calls over a plaintext port (opted into by the operator) are not authenticated.
        self.plaintext_unauthenticated = plaintext_unauthenticated
        self.denied = Counter(
            "xdsd_auth_denied",
            "Calls refused by authentication or authorization, by reason.",
            ["reason"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.authenticators)

    async def authenticate(self, context: Any, what: str) -> Caller | None:
        """The caller of a call (None when auth is off); AuthError (logged, counted) if none."""
        if not self.authenticators:
            return None
        if self.plaintext_unauthenticated and not _over_tls(context):
            return None  # the plaintext port (15010): no authentication, as in istiod
        creds = credentials(context)
        problems: list[AuthError] = []
        for authn in self.authenticators:
            try:
                caller = await authn.authenticate(creds)
            except AuthError as e:
                problems.append(e)
                continue
            if caller is not None:
                return caller
        if problems:
            reason = problems[0].reason
            message = "; ".join(f"{a.message}" for a in problems)
        else:
            reason = "no_credentials"
            message = "no client certificate and no bearer token"
        err = AuthError(
            grpc.StatusCode.UNAUTHENTICATED, reason, f"authentication failed: {message}"
        )
        self.deny(err, creds.peer, what)
        raise err

    def authorize(
        self, caller: Caller | None, node_id: str, metadata: Mapping[str, Any], peer: str
    ) -> None:
        if caller is None or self.authorizer is None:
            return
        try:
            self.authorizer.authorize(caller, node_id, metadata)
        except AuthError as e:
            self.deny(e, peer, f"xDS for {node_id}")
            raise

    def deny(self, err: AuthError, peer: str, what: str) -> None:
        self.denied.labels(reason=err.reason).inc()
        log.warning("denied %s from %s (%s): %s", what, peer, err.reason, err.message)
