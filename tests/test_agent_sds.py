"""The bootstrap's `sds-grpc` cluster (Istio's, to pilot-agent's SDS socket) and the
agent stand-in tests use (tests/agent_sds.py), over a real unix-socket gRPC channel."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.agent_sds import FILE_ROOT_SYSTEM, AgentSds
from xdsd.cache.resources import SECRET
from xdsd.cli import main
from xdsd.translate.bootstrap import ISTIO_SDS_SOCKET, BootstrapOptions, build_bootstrap

NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
IDENTITY = "spiffe://cluster.local/ns/shop/sa/client"


def clusters(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    static = doc["static_resources"]
    assert isinstance(static, dict)
    return {c["name"]: c for c in static["clusters"]}


def test_bootstrap_has_istios_sds_cluster_by_default() -> None:
    sds = clusters(build_bootstrap(BootstrapOptions(node_id=NODE)))["sds-grpc"]
    # Istio's envoy_bootstrap.json: STATIC, HTTP/2, the agent's unix socket.
    assert sds["type"] == "STATIC"
    assert sds["alt_stat_name"] == "sds-grpc;"
    assert sds["connect_timeout"] == "1s"
    opts = sds["typed_extension_protocol_options"]
    assert isinstance(opts, dict)
    http = opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http["explicit_http_config"] == {"http2_protocol_options": {}}
    assert sds["load_assignment"] == {
        "cluster_name": "sds-grpc",
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": ISTIO_SDS_SOCKET}}}}]}
        ],
    }
    assert ISTIO_SDS_SOCKET == "./var/run/secrets/workload-spiffe-uds/socket"


def test_bootstrap_sds_socket_path_or_none() -> None:
    doc = build_bootstrap(BootstrapOptions(node_id=NODE, sds_socket="/tmp/agent.sock"))
    sds = clusters(doc)["sds-grpc"]
    assert json.dumps(sds).count('"/tmp/agent.sock"') == 1
    assert set(clusters(build_bootstrap(BootstrapOptions(node_id=NODE, sds_socket=None)))) == {
        "xds-grpc"
    }


def test_cli_bootstrap_sds_socket(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    assert (
        main(["bootstrap", "--node-id", NODE, "--sds-socket", "/x/s", "--output-file", str(out)])
        == 0
    )
    sds = clusters(json.loads(out.read_text()))["sds-grpc"]
    assert "/x/s" in json.dumps(sds)
    assert (
        main(["bootstrap", "--node-id", NODE, "--sds-socket", "", "--output-file", str(out)]) == 0
    )
    assert set(clusters(json.loads(out.read_text()))) == {"xds-grpc"}
    assert main(["bootstrap", "--node-id", NODE, "--output-file", str(out)]) == 0
    assert ISTIO_SDS_SOCKET in json.dumps(clusters(json.loads(out.read_text()))["sds-grpc"])


async def test_agent_serves_workload_cert_and_roots(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    async with (
        AgentSds(sock, identity=IDENTITY) as agent,
        grpc.aio.insecure_channel(f"unix:{agent.socket}") as channel,
    ):
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        req = discovery_pb2.DiscoveryRequest(
            type_url=SECRET, resource_names=["default", "ROOTCA", FILE_ROOT_SYSTEM]
        )
        req.node.id = NODE
        call = stub.StreamSecrets()
        await call.write(req)
        resp = await call.read()
        assert isinstance(resp, discovery_pb2.DiscoveryResponse)
        secrets = {}
        for any_ in resp.resources:
            s = secret_pb2.Secret()
            assert any_.Unpack(s)
            secrets[s.name] = s
        assert set(secrets) == {"default", "ROOTCA", FILE_ROOT_SYSTEM}
        call.cancel()

    # `default`: the workload cert with the SPIFFE ID, its key, signed by ROOTCA's CA.
    tls = secrets["default"].tls_certificate
    cert = x509.load_pem_x509_certificate(tls.certificate_chain.inline_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY]
    assert tls.private_key.inline_bytes.startswith(b"-----BEGIN PRIVATE KEY-----")
    roots = x509.load_pem_x509_certificate(
        secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes
    )
    assert cert.issuer == roots.subject
    cert.verify_directly_issued_by(roots)
    assert secrets[FILE_ROOT_SYSTEM].validation_context.trusted_ca.inline_bytes
    assert not sock.exists()
