"""The gRPC server that carries the xDS services, as an async context manager."""

from __future__ import annotations

import logging
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"xDS port {self.port} is out of range 0..65535")


class XdsServer:
    """`async with XdsServer(services, settings) as s:` serves xDS on s.port."""

    def __init__(self, services: XdsServices, settings: GrpcSettings | None = None) -> None:
        self.services = services
        self.settings = settings or GrpcSettings()
        self.port = self.settings.port
        self._server: grpc.aio.Server | None = None

    async def __aenter__(self) -> XdsServer:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_receive_bytes),
                ("grpc.max_send_message_length", s.max_send_bytes),
                ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(self.services.handlers())
        address = f"{s.host}:{s.port}" if ":" not in s.host else f"[{s.host}]:{s.port}"
        bound = server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot listen for xDS on {address}")
        self.port = bound
        await server.start()
        self._server = server
        log.info("xDS (plaintext gRPC) listening on %s:%d", s.host, bound)
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
