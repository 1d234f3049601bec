"""xdsd's security settings end to end in one process: flags -> app -> TLS xDS + CA."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from tests.kube.apiserver import KubeApiServer
from tests.test_auth import bearer, create_certificate, first_response, status_of
from tests.test_ca import make_csr, verified_uris
from xdsd import cli
from xdsd.app import AppSettings, XdsdApp
from xdsd.cache.resources import CLUSTER

pytestmark = pytest.mark.timeout(60)

MESH = """\
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{name: http, port: 8080}]
"""


def serve_args(*argv: str) -> object:
    return cli._parser().parse_args(["serve", "--config-dir", ".", *argv])


def test_flags_tls_by_default_with_certs_plaintext_only_when_asked(tmp_path: Path) -> None:
    grpc_s, sec = cli._security_settings(serve_args("--dev-certs", str(tmp_path / "c")))
    assert (grpc_s.tls_port, grpc_s.port, grpc_s.mtls_port) == (15012, -1, -1)
    assert grpc_s.tls_cert_file == tmp_path / "c" / "server-cert.pem"
    assert sec.authenticate and sec.ca_cert_file == tmp_path / "c" / "root-cert.pem"
    assert grpc_s.max_connection_age_s == 1800
    grpc_s, sec = cli._security_settings(
        serve_args("--dev-certs", str(tmp_path / "c"), "--plaintext-port", "15010")
    )
    assert (grpc_s.tls_port, grpc_s.port) == (15012, 15010)
    grpc_s, sec = cli._security_settings(
        serve_args("--dev-certs", str(tmp_path / "c"), "--insecure-no-auth")
    )
    assert not sec.authenticate
    # The deploy/ flags: explicit files, --xds-port is the TLS port.
    c = tmp_path / "c"
    grpc_s, sec = cli._security_settings(
        serve_args(
            "--xds-port=15012",
            f"--tls-cert-file={c / 'server-cert.pem'}",
            f"--tls-key-file={c / 'server-key.pem'}",
            f"--ca-cert-file={c / 'root-cert.pem'}",
            f"--ca-key-file={c / 'root-key.pem'}",
        )
    )
    assert (grpc_s.tls_port, grpc_s.port) == (15012, -1) and sec.ca_key_file == c / "root-key.pem"
    # No certificate at all: a plaintext lab server, unauthenticated.
    grpc_s, sec = cli._security_settings(serve_args("--xds-port", "1234"))
    assert (grpc_s.tls_port, grpc_s.port) == (-1, 1234) and not sec.authenticate
    with pytest.raises(ValueError):
        cli._security_settings(serve_args("--tls-cert-file", "x"))
    with pytest.raises(ValueError):
        cli._security_settings(serve_args("--mtls-port", "1"))


async def test_app_serves_tls_xds_and_the_ca_with_tokens(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "cart.yaml").write_text(MESH)
    async with KubeApiServer() as api:
        api.add_token("shop-token", username="system:serviceaccount:shop:cart")
        api.add_token("other-token", username="system:serviceaccount:other:cart")
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        grpc_s, sec = cli._security_settings(
            serve_args(
                "--dev-certs",
                str(tmp_path / "certs"),
                "--xds-port",
                "0",
                "--plaintext-port",
                "0",
                "--token-review-kubeconfig",
                str(tmp_path / "kubeconfig"),
            )
        )
        settings = AppSettings(
            config_dir=tmp_path / "mesh", xds=grpc_s, security=sec, admin_port=-1
        )
        registry = CollectorRegistry()
        async with XdsdApp(settings, registry) as app:
            root = (tmp_path / "certs" / "root-cert.pem").read_bytes()
            creds = grpc.ssl_channel_credentials(root)
            async with grpc.aio.secure_channel(f"localhost:{app.tls_port}", creds) as ch:
                resp = await first_response(ch, bearer("shop-token"))
                assert resp.type_url == CLUSTER and resp.resources
                code = await status_of(first_response(ch, bearer("other-token")))
                assert code == grpc.StatusCode.PERMISSION_DENIED
                code = await status_of(first_response(ch, bearer("nope")))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                signed = await create_certificate(ch, make_csr()[0], bearer("shop-token"))
                assert verified_uris(tuple(signed.cert_chain), root.decode()) == [
                    "spiffe://cluster.local/ns/shop/sa/cart"
                ]
                # The stream and the CA call of one token: one TokenReview (cached), the
                # other tokens each reviewed (refusals are not cached).
                reviews = api.count("tokenreview", "tokenreviews")
                await first_response(ch, bearer("shop-token"))
                assert api.count("tokenreview", "tokenreviews") == reviews == 3
            # The plaintext port (asked for) needs no token; its CA signs nothing.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as ch:
                assert (await first_response(ch, ())).type_url == CLUSTER
                code = await status_of(create_certificate(ch, make_csr()[0], ()))
                assert code == grpc.StatusCode.UNAUTHENTICATED
        assert registry.get_sample_value("xdsd_auth_denied_total", {"reason": "unauthorized"}) == 1
        assert registry.get_sample_value("xdsd_token_review_cache_total", {"result": "hit"}) == 2


def test_bootstrap_sends_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "istio-token"
    token.write_text("eyJhbGciOi.payload.sig\n")
    rc = cli.main(
        [
            "bootstrap",
            "--node-id",
            "sidecar~10.0.0.1~cart-1.shop~shop.svc.cluster.local",
            "--xds-address",
            "gateway.example:15012",
            "--token-file",
            str(token),
            "--cluster-id",
            "remote-1",
            "--xds-ca-file",
            "/etc/certs/root-cert.pem",
            "--xds-server-name",
            "xdsd.example",
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    svc = doc["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert svc["initial_metadata"] == [
        {"key": "authorization", "value": "Bearer eyJhbGciOi.payload.sig"},
        {"key": "clusterid", "value": "remote-1"},
    ]
    xds = doc["static_resources"]["clusters"][0]
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == "xdsd.example"
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == (
        "/etc/certs/root-cert.pem"
    )
    token.write_text("")
    node = "sidecar~10.0.0.1~cart-1.shop~shop.svc.cluster.local"
    assert cli.main(["bootstrap", "--node-id", node, "--token-file", str(token)]) == 2
