"""The gRPC server that carries the xDS services, as an async context manager.

Ports (each -1 for off): `port` plaintext (Istio's 15010), `tls_port` TLS with
a server certificate (15012; the CA service rides on the same server), and
`mtls_port` TLS that requires a client certificate of `client_ca_file`
(grpcio cannot ask for a client certificate without requiring one, so
certificate-authenticated clients get their own port). Certificate files are
re-read when they change, at the next handshake.

Connection hygiene: a max connection age (then a grace period) so proxies spread
over replicas, message size limits, max concurrent streams per connection; on
shutdown the server sends GOAWAY and gives streams `shutdown_grace_s` to end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from xdsd.server.ads import XdsServices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrpcSettings:
    host: str = "127.0.0.1"
    port: int = 15010
    max_receive_bytes: int = 4 * 1024 * 1024
    max_send_bytes: int = 256 * 1024 * 1024
    keepalive_time_s: float = 30.0
    shutdown_grace_s: float = 2.0
    tls_port: int = -1
    tls_cert_file: Path | None = None  # the server certificate (chain), PEM
    tls_key_file: Path | None = None
    mtls_port: int = -1
    client_ca_file: Path | None = None  # roots that client certificates must chain to
    max_connection_age_s: float = 30 * 60.0  # istiod's chart: 30 min (0: unlimited)
    max_connection_age_grace_s: float = 10.0
    max_concurrent_streams: int = 100  # per connection
    # New streams gRPC holds before the server takes them. gRPC's default (1,000, hard
    # 3,000) cancels new streams at random once exceeded, which a connect storm of a
    # few thousand proxies does while the loop is busy; admission control paces them.
    max_pending_streams: int = 20_000
    # Share the ports with other processes that set it too (xdsd.workers); off, a
    # busy port is an error instead of a silently shared one.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        for name, port in (("xDS", self.port), ("TLS", self.tls_port), ("mTLS", self.mtls_port)):
            if not -1 <= port < 65536:
                raise ValueError(f"{name} port {port} is out of range 0..65535 (-1: off)")
        if self.port < 0 and self.tls_port < 0 and self.mtls_port < 0:
            raise ValueError("no xDS port: give a plaintext, TLS or mTLS port")
        if (self.tls_port >= 0 or self.mtls_port >= 0) and (
            self.tls_cert_file is None or self.tls_key_file is None
        ):
            raise ValueError("a TLS port needs a server certificate and key file")
        if self.mtls_port >= 0 and self.client_ca_file is None:
            raise ValueError("the mTLS port needs a client CA file")
        if self.max_connection_age_s < 0 or self.max_connection_age_grace_s < 0:
            raise ValueError("connection age and grace must not be negative")
        if self.max_concurrent_streams < 1:
            raise ValueError("max concurrent streams must be at least 1")
        if self.max_pending_streams < 1:
            raise ValueError("max pending streams must be at least 1")


class _CertFiles:
    """Server certificate files, re-read when they change (checked at each handshake)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._stat()
        self.initial = self._config()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
            except OSError:
                return ()
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as e:
            raise OSError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._stat()
        if not stamp or stamp == self._stamp:
            return None
        try:
            config = self._config()
        except OSError as e:
            log.warning("keeping the current server certificate: %s", e)
            return None
        self._stamp = stamp
        log.info("server certificate files changed: serving the new certificate")
        return config

    def credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=require_client_cert
        )


class XdsServer:
    """`async with XdsServer(services, settings) as s:` serves xDS on s.port."""

    def __init__(
        self,
        services: XdsServices,
        settings: GrpcSettings | None = None,
        extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        self.services = services
        self.settings = settings or GrpcSettings()
        self.extra_handlers = tuple(extra_handlers)  # e.g. the CA service
        self.port = self.settings.port
        self.tls_port = self.settings.tls_port
        self.mtls_port = self.settings.mtls_port
        self._server: grpc.aio.Server | None = None

    async def __aenter__(self) -> XdsServer:
        s = self.settings
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", s.max_receive_bytes),
            ("grpc.max_send_message_length", s.max_send_bytes),
            ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
            ("grpc.server.max_pending_requests", s.max_pending_streams),
            ("grpc.server.max_pending_requests_hard_limit", 2 * s.max_pending_streams),
        ]
        if s.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000)),
            ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(self.services.handlers())
        if self.extra_handlers:
            server.add_generic_rpc_handlers(self.extra_handlers)

        def address(port: int) -> str:
            return f"{s.host}:{port}" if ":" not in s.host else f"[{s.host}]:{port}"

        def bound(port: int, what: str, creds: grpc.ServerCredentials | None) -> int:
            addr = address(port)
            got: int = (
                server.add_insecure_port(addr)
                if creds is None
                else server.add_secure_port(addr, creds)
            )
            if got == 0:
                raise OSError(f"cannot listen for xDS ({what}) on {addr}")
            log.info("xDS (%s) listening on %s:%d", what, s.host, got)
            return got

        if s.port >= 0:
            self.port = bound(s.port, "plaintext gRPC", None)
        if s.tls_port >= 0 or s.mtls_port >= 0:
            assert s.tls_cert_file is not None and s.tls_key_file is not None
            if s.tls_port >= 0:
                files = _CertFiles(s.tls_cert_file, s.tls_key_file, None)
                self.tls_port = bound(s.tls_port, "gRPC over TLS", files.credentials(False))
            if s.mtls_port >= 0:
                files = _CertFiles(s.tls_cert_file, s.tls_key_file, s.client_ca_file)
                self.mtls_port = bound(
                    s.mtls_port, "gRPC over TLS with client certificates", files.credentials(True)
                )
        await server.start()
        self._server = server
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_s)
            self._server = None
