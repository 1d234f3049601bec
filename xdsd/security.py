"""Security wiring: authenticators, Istio's authorization, the CA service, stream limits.

`Security` builds, from `SecuritySettings`, what the xDS server is given: a
`StreamAuth` (client certificate, then Kubernetes token by TokenReview, Istio's
namespace/service-account rule), the `IstioCertificateService` handlers when a
CA is configured, and the new-streams limiter. It is the only place that
knows all three (the server knows interfaces, the CA knows certificates,
sources know the Kubernetes API).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from xdsd.ca.authority import DEFAULT_MAX_TTL, CertificateAuthority
from xdsd.ca.identity import IstioAuthorizer, identity_from_username
from xdsd.ca.service import CertificateService
from xdsd.server.auth import (
    Authenticator,
    BearerTokenAuthenticator,
    ClientCertAuthenticator,
    StreamAuth,
    TokenReviewer,
)
from xdsd.server.limits import TokenBucket
from xdsd.server.token_cache import DEFAULT_MAX_TTL_S, CachedTokenReviewer

log = logging.getLogger(__name__)

# cluster id -> (known, kubeconfig); a None kubeconfig is the in-cluster service account.
KubeconfigLookup = Callable[[str], tuple[bool, Mapping[str, Any] | None]]


@dataclass(frozen=True)
class SecuritySettings:
    # Authenticate every TLS stream and CA call (off: a trusted lab, --insecure-no-auth).
    # Calls on the plaintext port are never authenticated (as istiod's 15010).
    authenticate: bool = False
    trust_domain: str = "cluster.local"
    # The CA (Istio's plug-in CA files: ca-cert.pem, ca-key.pem, cert-chain.pem); None: no CA.
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    ca_chain_file: Path | None = None  # intermediates up to the root, when ca-cert is not a root
    # Or the CA from Istio's plug-in CA Secret (ca-cert.pem, ca-key.pem, cert-chain.pem,
    # root-cert.pem) of this name in the own namespace (the Kubernetes mode; `load_ca_secret`).
    ca_secret: str | None = None
    max_cert_ttl: datetime.timedelta = DEFAULT_MAX_TTL
    # TokenReview: the audience tokens must be for, and (folder mode) the cluster that reviews.
    token_audience: str = "istio-ca"
    token_review_kubeconfig: Path | None = None
    # An authenticated token is trusted again without a review until it expires, at
    # most this long (seconds; 0: review every call). See xdsd/server/token_cache.py.
    token_review_cache_ttl: float = DEFAULT_MAX_TTL_S
    # New xDS streams and CA calls per second (0: unlimited), and the burst allowed.
    new_streams_per_second: float = 100.0
    new_streams_burst: float = 200.0
    # The port where client certificates authenticate (-1: none), for the warning below.
    mtls_port: int = -1

    def __post_init__(self) -> None:
        if (self.ca_cert_file is None) != (self.ca_key_file is None):
            raise ValueError("the CA needs both a certificate and a key file")
        if self.ca_chain_file is not None and self.ca_cert_file is None:
            raise ValueError("a CA chain file needs a CA certificate and key")
        if self.ca_secret is not None and self.ca_cert_file is not None:
            raise ValueError("give the CA as files or as a Secret, not both")
        if self.new_streams_per_second < 0:
            raise ValueError("new streams per second must not be negative")
        if self.token_review_cache_ttl < 0:
            raise ValueError("the token review cache TTL must not be negative")


class Security:
    def __init__(
        self,
        settings: SecuritySettings,
        registry: CollectorRegistry,
        *,
        domain_suffix: str = "cluster.local",
        kubeconfigs: KubeconfigLookup | None = None,
        default_cluster_id: str = "Kubernetes",
    ) -> None:
        self.settings = settings
        self._registry_for_cache = registry
        self.ca: CertificateAuthority | None = None
        self._ca_entries: dict[str, bytes] = {}  # what `ca` was made from (Secret mode)
        if settings.ca_cert_file is not None and settings.ca_key_file is not None:
            # CAError names the files, never their content.
            self.ca = CertificateAuthority.from_files(
                settings.ca_cert_file,
                settings.ca_key_file,
                settings.ca_chain_file,
                max_ttl=settings.max_cert_ttl,
            )
            log.info("CA loaded: %r, root %s", self.ca, self.ca.root.subject.rfc4514_string())
        self._reviewer: Any = None
        authenticators: list[Authenticator] = []
        if settings.authenticate:
            authenticators.append(ClientCertAuthenticator())
            reviewer = self._token_reviewer(kubeconfigs, default_cluster_id)
            if reviewer is not None:
                td = settings.trust_domain
                authenticators.append(
                    BearerTokenAuthenticator(reviewer, lambda u: identity_from_username(u, td))
                )
            elif settings.mtls_port >= 0:
                log.warning(
                    "no Kubernetes cluster to review tokens: only client certificates "
                    "authenticate (on --mtls-port %d); add --token-review-kubeconfig PATH to "
                    "accept service-account tokens",
                    settings.mtls_port,
                )
            else:
                log.warning(
                    "no Kubernetes cluster to review tokens and no --mtls-port: every proxy "
                    "will be refused; add --token-review-kubeconfig PATH (service-account "
                    "tokens), --mtls-port PORT (client certificates) or --insecure-no-auth "
                    "(a trusted lab)"
                )
        self.auth = StreamAuth(
            authenticators,
            IstioAuthorizer(domain_suffix),
            registry,
            plaintext_unauthenticated=True,
        )
        rate = settings.new_streams_per_second
        self.new_streams = (
            TokenBucket(rate, max(settings.new_streams_burst, 1.0)) if rate > 0 else None
        )
        self._registry = registry
        self.ca_service: CertificateService | None = None
        self._make_ca_service()

    def _make_ca_service(self) -> None:
        rate, burst = self.settings.new_streams_per_second, self.settings.new_streams_burst
        ca_limit = TokenBucket(rate, max(burst, 1.0)) if rate > 0 else None
        self.ca_service = (
            CertificateService(self.ca, self.auth, self._registry, ca_limit) if self.ca else None
        )

    async def load_ca_secret(self, kubeconfig: Mapping[str, Any] | None, namespace: str) -> None:
        """Load the CA from the `ca_secret` Secret (before `handlers()`); ValueError if unusable.

        Errors name the Secret and what is wrong, never key material.
        """
        name = self.settings.ca_secret
        if name is None or self.ca is not None:
            return
        from xdsd.sources.kube.rootcert import read_cacerts_secret

        entries = await read_cacerts_secret(kubeconfig, namespace, name)
        self._ca_entries = dict(entries)
        self.ca = CertificateAuthority.from_cacerts(
            entries, max_ttl=self.settings.max_cert_ttl, source=f"Secret {namespace}/{name}"
        )
        log.info(
            "CA loaded from Secret %s/%s: %r, root %s",
            namespace,
            name,
            self.ca,
            self.ca.root.subject.rfc4514_string(),
        )
        self._make_ca_service()

    def rotate_ca(self, entries: Mapping[str, bytes], source: str) -> bool:
        """Serve a new CA from Istio's cacerts layout (a rotated Secret); False if unchanged.

        ValueError (naming `source`, never key material) leaves the current CA serving.
        """
        if entries == self._ca_entries:
            return False
        ca = CertificateAuthority.from_cacerts(
            entries, max_ttl=self.settings.max_cert_ttl, source=source
        )
        self._ca_entries = dict(entries)
        self.ca = ca
        if self.ca_service is not None:
            self.ca_service.ca = ca  # the server keeps its handlers; they sign with this
        else:
            self._make_ca_service()
        log.info("CA rotated from %s: %r, root %s", source, ca, ca.root.subject.rfc4514_string())
        return True

    def _token_reviewer(
        self, kubeconfigs: KubeconfigLookup | None, default_cluster_id: str
    ) -> TokenReviewer | None:
        from xdsd.sources.kube.tokenreview import KubeTokenReviewer

        s = self.settings
        if s.token_review_kubeconfig is not None:
            from xdsd.sources.kube.remote import parse_kubeconfig

            try:
                data = s.token_review_kubeconfig.read_bytes()
            except OSError as e:
                raise ValueError(
                    f"cannot read kubeconfig {s.token_review_kubeconfig}: {e.strerror}"
                ) from None
            doc, problem = parse_kubeconfig(data)
            if doc is None:
                raise ValueError(f"kubeconfig {s.token_review_kubeconfig}: {problem}")
            fixed = doc
            base = kubeconfigs

            def lookup(cluster_id: str) -> tuple[bool, Mapping[str, Any] | None]:
                if cluster_id == default_cluster_id:
                    return True, fixed
                return base(cluster_id) if base is not None else (False, None)

            kubeconfigs = lookup
        if kubeconfigs is None:
            return None
        reviewer: Any = KubeTokenReviewer(
            kubeconfigs, default_cluster_id, audiences=(s.token_audience,)
        )
        if s.token_review_cache_ttl > 0:
            reviewer = CachedTokenReviewer(
                reviewer, self._registry_for_cache, max_ttl=s.token_review_cache_ttl
            )
        self._reviewer = reviewer
        return self._reviewer  # type: ignore[no-any-return]

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """gRPC services beside xDS on the same server (the CA)."""
        return self.ca_service.handlers() if self.ca_service is not None else []

    async def aclose(self) -> None:
        if self._reviewer is not None:
            await self._reviewer.aclose()
