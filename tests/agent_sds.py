"""A stand-in for pilot-agent's SDS server, for Envoys in tests.

Istio sidecars reach their local agent over the bootstrap cluster `sds-grpc` (a
unix socket) for the workload certificate `default`, the mesh trust bundle
`ROOTCA` and file based resources such as `file-root:system` (the system CA
bundle). ISTIO_MUTUAL (and file based) DestinationRule TLS contexts name them, and
Envoy keeps such clusters warming until they arrive.

`AgentSds` serves them with xdsd's own xDS server (`XdsServices`, which registers
envoy.service.secret.v3.SecretDiscoveryService) on `unix:PATH`:

    async with AgentSds(tmp_path / "agent.sock") as agent:
        async with EnvoyProcess(..., sds_socket=agent.socket) as envoy: ...

The workload certificate carries `identity` (a SPIFFE ID) as its URI SAN and is
signed by `ca` (a fresh TestCA unless given), whose certificate is `ROOTCA`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from prometheus_client import CollectorRegistry

from tests.certs import Issued, TestCA
from xdsd.cache.resources import SECRET, Resource, ResourceSet
from xdsd.server.ads import XdsServices
from xdsd.server.metrics import XdsMetrics

DEFAULT = "default"  # security.WorkloadKeyCertResourceName
ROOTCA = "ROOTCA"  # security.RootCertReqResourceName
FILE_ROOT_SYSTEM = "file-root:system"  # security.FileRootSystemCACert
DEFAULT_IDENTITY = "spiffe://cluster.local/ns/default/sa/default"


def system_ca_bundle() -> bytes | None:
    """The system's CA bundle (what the agent serves as file-root:system), if any."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path and Path(path).is_file():
            return Path(path).read_bytes()
    return None


def tls_certificate(name: str, issued: Issued) -> Resource:
    secret = secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=issued.cert_pem),
            private_key=base_pb2.DataSource(inline_bytes=issued.key_pem),
        ),
    )
    return Resource.from_message(name, SECRET, secret)


def trust_bundle(name: str, pem: bytes) -> Resource:
    secret = secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=pem)
        ),
    )
    return Resource.from_message(name, SECRET, secret)


class _Watch:
    def __init__(self, agent: AgentSds, node_id: str) -> None:
        self.agent = agent
        self.proxy_id = node_id

    def resources(self, type_url: str) -> ResourceSet:
        if type_url != SECRET:
            return ResourceSet.of(type_url, ())
        return self.agent.secrets

    def query_types(self) -> frozenset[str]:
        return frozenset()

    def query(self, type_url: str, names: tuple[str, ...]) -> list[Resource]:
        return []

    def close(self) -> None:
        pass


class AgentSds:
    """pilot-agent's SDS on a unix socket: `default`, `ROOTCA`, `file-root:system`."""

    def __init__(
        self,
        socket: Path,
        *,
        ca: TestCA | None = None,
        identity: str = DEFAULT_IDENTITY,
        system_roots: bytes | None = None,
    ) -> None:
        """`system_roots`: PEM served as file-root:system (default: the system bundle,
        or the test CA where there is none)."""
        self.socket = str(socket)
        self.ca = ca or TestCA("xdsd test mesh CA")
        self.identity = identity
        self.workload = self.ca.issue_workload(identity)
        roots = system_roots or system_ca_bundle() or self.ca.cert_pem
        self.secrets = ResourceSet.of(
            SECRET,
            [
                tls_certificate(DEFAULT, self.workload),
                trust_bundle(ROOTCA, self.ca.cert_pem),
                trust_bundle(FILE_ROOT_SYSTEM, roots),
            ],
        )
        self.services = XdsServices(self, XdsMetrics(CollectorRegistry()))
        self._server: grpc.aio.Server | None = None

    # -- ConfigProvider ----------------------------------------------------------------

    async def wait_ready(self) -> None:
        return None

    def open(self, node_id: str, metadata: Mapping[str, Any], peer: str, context: Any) -> _Watch:
        return _Watch(self, node_id)

    # -- what Envoy asked for ----------------------------------------------------------

    def acked(self) -> set[str]:
        """Secret names some stream has ACKed (Envoy applied them)."""
        out: set[str] = set()
        for conn in self.services.connections.values():
            state = conn.states.get(SECRET)
            if state is not None and state.acked:
                out |= set(state.sent) & set(state.names)
        return out

    def nacks(self) -> list[str]:
        """Error messages of every stream's last SDS NACK."""
        out = []
        for conn in self.services.connections.values():
            state = conn.states.get(SECRET)
            if state is not None and state.nack is not None:
                out.append(state.nack.message)
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def _remove_socket(self) -> None:
        Path(self.socket).unlink(missing_ok=True)

    async def __aenter__(self) -> AgentSds:
        self._remove_socket()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(self.services.handlers())
        if server.add_insecure_port(f"unix:{self.socket}") == 0:
            raise OSError(f"cannot listen for SDS on unix:{self.socket}")
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
            await self._server.stop(0.2)
            self._server = None
        self._remove_socket()
