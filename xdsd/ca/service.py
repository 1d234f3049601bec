"""gRPC `istio.v1.auth.IstioCertificateService/CreateCertificate`, as istiod serves it.

Served on the same TLS server as xDS. The caller is authenticated by the same
authenticators as xDS streams; the certificate carries the caller's identities
only, whatever the CSR asks for.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from xdsd.ca import proto
from xdsd.ca.authority import CAError, CertificateAuthority, CSRError
from xdsd.server.auth import AuthError, StreamAuth
from xdsd.server.limits import TokenBucket

log = logging.getLogger(__name__)


class CertificateService:
    """The CA's gRPC service; register `handlers()` on the xDS server."""

    def __init__(
        self,
        ca: CertificateAuthority,
        auth: StreamAuth,
        registry: CollectorRegistry,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.ca = ca
        self.auth = auth
        self.limiter = limiter
        self._messages = proto.messages()
        # Istio's CA metric names.
        self.m_csr = Counter(
            "citadel_server_csr_count", "Certificate signing requests received.", registry=registry
        )
        self.m_issued = Counter(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued.",
            registry=registry,
        )
        self.m_auth_failed = Counter(
            "citadel_server_authentication_failure_count",
            "Certificate requests whose caller could not be authenticated.",
            registry=registry,
        )
        self.m_csr_error = Counter(
            "citadel_server_csr_parsing_err_count",
            "Certificate requests with an unusable CSR.",
            registry=registry,
        )
        self.m_root_expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time when the root certificate expires.",
            registry=registry,
        )
        self.m_root_expiry.set(ca.root.not_valid_after_utc.timestamp())

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler(
                proto.SERVICE,
                {
                    proto.METHOD: grpc.unary_unary_rpc_method_handler(
                        self.create_certificate,
                        request_deserializer=self._messages.request.FromString,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            )
        ]

    async def create_certificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._create(request, context)
        except _Refused as e:
            await context.abort(e.code, e.message)

    async def _create(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.m_csr.inc()
        if self.limiter is not None and not self.limiter.take():
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many certificate requests; retry later"
            )
        try:
            caller = await self.auth.authenticate(context, "certificate request")
        except AuthError as e:
            self.m_auth_failed.inc()
            raise _Refused(e.code, e.message) from None
        if caller is None:  # auth is off: there is no identity to put in a certificate
            self.m_auth_failed.inc()
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the CA signs only for authenticated callers (authentication is turned off)",
            )
        ttl = datetime.timedelta(seconds=request.validity_duration)
        try:
            signed = self.ca.sign_csr(request.csr, caller.identities, ttl)
        except CSRError as e:
            self.m_csr_error.inc()
            log.warning("certificate request from %s refused: %s", context.peer(), e)
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except CAError as e:
            log.error("cannot sign for %s: %s", ", ".join(caller.identities), e)
            raise _Refused(grpc.StatusCode.INTERNAL, "the CA cannot sign") from None
        self.m_issued.inc()
        log.info(
            "issued certificate for %s (%s, serial %x) valid until %s",
            ", ".join(caller.identities),
            caller.method,
            signed.serial,
            signed.not_after.isoformat(),
        )
        return self._messages.response(cert_chain=list(signed.chain))


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
