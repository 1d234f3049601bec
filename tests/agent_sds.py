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

Or, as pilot-agent does, the certificate comes from xdsd's own CA: `from_istio_ca`
makes a key and CSR, calls `istio.v1.auth.IstioCertificateService/CreateCertificate`
on xdsd's TLS port with a service-account token (`authorization: Bearer`), and
serves the signed chain as `default` and xdsd's root as `ROOTCA`:

    agent = await AgentSds.from_istio_ca(sock, address="localhost:15012",
                                         xds_root=root_pem, token="sa-token")
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from prometheus_client import CollectorRegistry

from tests.certs import Issued, TestCA
from xdsd.ca import proto as ca_proto
from xdsd.cache.resources import SECRET, Resource, ResourceSet
from xdsd.server.ads import XdsServices
from xdsd.server.auth import Caller
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


def workload_csr(identity: str) -> tuple[str, bytes]:
    """A P-256 key and a CSR naming `identity` (as pilot-agent's CSR does; xdsd's CA
    signs for the caller's identity whatever the CSR asks for). (CSR PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key_pem


async def request_certificate(
    address: str,
    xds_root: bytes,
    token: str,
    identity: str = DEFAULT_IDENTITY,
    *,
    cluster_id: str = "Kubernetes",
    ttl_s: int = 3600,
    server_name: str | None = None,
) -> tuple[Issued, list[bytes]]:
    """pilot-agent's CA client: CreateCertificate on `address` (TLS verified with
    `xds_root`) with `token`; the workload key + chain (leaf first, without the root)
    and the chain the CA returned (PEM, leaf..root)."""
    csr, key_pem = workload_csr(identity)
    messages = ca_proto.messages()
    creds = grpc.ssl_channel_credentials(xds_root)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    async with grpc.aio.secure_channel(address, creds, options) as channel:
        method = channel.unary_unary(
            f"/{ca_proto.SERVICE}/{ca_proto.METHOD}",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=messages.response.FromString,
        )
        request = messages.request(csr=csr, validity_duration=ttl_s)
        request.metadata["ClusterID"] = cluster_id
        response = await method(
            request,
            metadata=(("authorization", f"Bearer {token}"), ("clusterid", cluster_id)),
            timeout=10,
        )
    chain = [c.encode() if isinstance(c, str) else bytes(c) for c in response.cert_chain]
    if not chain:
        raise RuntimeError("the CA returned an empty chain")
    served = chain[:-1] if len(chain) > 1 else chain  # leaf + intermediates, not the root
    return Issued(cert_pem=b"".join(served), key_pem=key_pem), chain


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

    def query(self, type_url: str, names: tuple[str, ...], caller: Caller | None) -> list[Resource]:
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
        workload: Issued | None = None,
        root_pem: bytes | None = None,
    ) -> None:
        """`system_roots`: PEM served as file-root:system (default: the system bundle,
        or the test CA where there is none). `workload` + `root_pem`: serve this
        certificate and trust bundle (e.g. from xdsd's CA, `from_istio_ca`) instead of
        issuing one from `ca`."""
        self.socket = str(socket)
        self.identity = identity
        if workload is not None:
            if root_pem is None:
                raise ValueError("a given workload certificate needs its root (root_pem)")
            self.ca: TestCA | None = ca
            self.workload = workload
            self.root_pem = root_pem
        else:
            self.ca = ca or TestCA("xdsd test mesh CA")
            self.workload = self.ca.issue_workload(identity)
            self.root_pem = self.ca.cert_pem
        roots = system_roots or system_ca_bundle() or self.root_pem
        self.secrets = ResourceSet.of(
            SECRET,
            [
                tls_certificate(DEFAULT, self.workload),
                trust_bundle(ROOTCA, self.root_pem),
                trust_bundle(FILE_ROOT_SYSTEM, roots),
            ],
        )
        self.services = XdsServices(self, XdsMetrics(CollectorRegistry()))
        self._server: grpc.aio.Server | None = None

    @classmethod
    async def from_istio_ca(
        cls,
        socket: Path,
        *,
        address: str,
        xds_root: bytes,
        token: str,
        identity: str = DEFAULT_IDENTITY,
        cluster_id: str = "Kubernetes",
        server_name: str | None = None,
        system_roots: bytes | None = None,
    ) -> AgentSds:
        """An agent whose `default` certificate xdsd's CA signed for `token`'s identity
        (`identity` is what the CSR asks for and what the agent reports; the CA puts
        the token's identity in the certificate) and whose ROOTCA is the CA's root."""
        workload, chain = await request_certificate(
            address, xds_root, token, identity, cluster_id=cluster_id, server_name=server_name
        )
        return cls(
            socket,
            identity=identity,
            workload=workload,
            root_pem=chain[-1],
            system_roots=system_roots,
        )

    def certificate_uris(self) -> Sequence[str]:
        """The URI SANs of the served workload certificate (its SPIFFE identity)."""
        leaf = x509.load_pem_x509_certificate(self.workload.cert_pem)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))

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
