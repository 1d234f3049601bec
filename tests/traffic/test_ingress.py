"""Istio tasks "Ingress Gateways" and "Secure Gateways": a gateway Envoy (router,
istio=ingressgateway, in istio-system) routes by Host to services bound with
`gateways:`; TLS terminates with a certificate from a credentialName Secret
served over SDS; hosts not on the Gateway get 404."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import aiohttp
import pytest

from tests.meshgen import tls_secret
from tests.traffic.harness import GATEWAY_NS, TlsMaterial, Traffic, make_tls

NS = "bookinfo"
HOST = "bookinfo.example.com"
SECURE = "secure.example.com"


def gateway_spec(*servers: dict[str, object]) -> dict[str, object]:
    return {"selector": {"istio": "ingressgateway"}, "servers": list(servers)}


def bookinfo_vs(hosts: list[str], port: int, gateways: list[str]) -> dict[str, object]:
    return {
        "hosts": hosts,
        "gateways": gateways,
        "http": [{
            "match": [{"uri": {"exact": "/productpage"}}, {"uri": {"prefix": "/static"}}],
            "route": [{"destination": {"host": "productpage", "port": {"number": port}}}],
        }],
    }  # fmt: skip


async def test_http_gateway_routes_by_host_and_path(traffic: Traffic) -> None:
    port, gw_port = traffic.port(), traffic.port()
    await traffic.workloads("productpage", NS, port, ("v1",))
    await traffic.workloads("details", NS, traffic.port(), ("v1",))
    traffic.istio("gw.yaml", "Gateway", "bookinfo-gateway", NS, gateway_spec({
        "port": {"number": gw_port, "name": "http", "protocol": "HTTP"},
        "hosts": [HOST],
    }))  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "bookinfo", NS,
                  bookinfo_vs([HOST], port, ["bookinfo-gateway"]))  # fmt: skip
    await traffic.gateway()

    ok = await traffic.until_answers(
        gw_port, HOST, lambda r: r.status == 200, "gateway routes /productpage",
        path="/productpage",
    )  # fmt: skip
    assert ok.backend == "productpage-v1"
    static = await traffic.get(gw_port, HOST, "/static/style.css")
    assert (static.status, static.backend) == (200, "productpage-v1")
    # Path not matched by the VirtualService: 404 from Envoy.
    assert (await traffic.get(gw_port, HOST, "/api/v1/products")).status == 404
    # Host not on the Gateway: 404, nothing reaches a backend.
    before = traffic.backends["productpage-v1"].count
    other = await traffic.get(gw_port, "details.example.com", "/productpage")
    assert other.status == 404
    assert traffic.backends["productpage-v1"].count == before
    assert traffic.backends["details-v1"].count == 0
    await traffic.no_rejections()


async def test_vs_without_gateway_binding_is_not_served_by_gateway(traffic: Traffic) -> None:
    port, gw_port = traffic.port(), traffic.port()
    await traffic.workloads("productpage", NS, port, ("v1",))
    traffic.istio("gw.yaml", "Gateway", "bookinfo-gateway", NS, gateway_spec({
        "port": {"number": gw_port, "name": "http", "protocol": "HTTP"},
        "hosts": ["*"],
    }))  # fmt: skip
    # Bound to the mesh only (no `gateways:`): the gateway has no route for it.
    traffic.istio("vs-mesh.yaml", "VirtualService", "mesh-only", NS,
                  bookinfo_vs(["mesh.example.com"], port, []) | {"gateways": ["mesh"]})  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "bookinfo", NS,
                  bookinfo_vs([HOST], port, [f"{NS}/bookinfo-gateway"]))  # fmt: skip
    await traffic.gateway()
    await traffic.until_answers(
        gw_port, HOST, lambda r: r.status == 200, "gateway routes", path="/productpage"
    )
    assert (await traffic.get(gw_port, "mesh.example.com", "/productpage")).status == 404
    await traffic.no_rejections()


async def test_tls_gateway_with_credential_name(traffic: Traffic) -> None:
    port, https_port, http_port = traffic.port(), traffic.port(), traffic.port()
    await traffic.workloads("productpage", NS, port, ("v1",))
    tls = make_tls([SECURE])
    # The Secret lives with the gateway workload (istio-system), as in the task.
    traffic.write("secret.yaml", [
        tls_secret("bookinfo-credential", GATEWAY_NS, tls.cert_pem, tls.key_pem)
    ])  # fmt: skip
    traffic.istio("gw.yaml", "Gateway", "secure-gateway", NS, gateway_spec(
        {
            "port": {"number": https_port, "name": "https", "protocol": "HTTPS"},
            "hosts": [SECURE],
            "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-credential"},
        },
        {
            "port": {"number": http_port, "name": "http", "protocol": "HTTP"},
            "hosts": [SECURE],
            "tls": {"httpsRedirect": True},
        },
    ))  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "secure", NS,
                  bookinfo_vs([SECURE], port, ["secure-gateway"]))  # fmt: skip
    gateway = await traffic.gateway()
    ctx = tls.client_context()

    ok = await traffic.until_answers(
        https_port, SECURE, lambda r: r.status == 200, "TLS through the gateway",
        path="/productpage", tls=ctx,
    )  # fmt: skip
    assert ok.backend == "productpage-v1"
    # The backend got plain HTTP with the original Host.
    assert traffic.backends["productpage-v1"].requests[-1].host == SECURE
    # The certificate came over SDS under Istio's name.
    secrets = await gateway.config_dump("dynamic_active_secrets")
    assert "kubernetes://bookinfo-credential" in str(secrets)

    # A client that does not trust our CA fails the handshake.
    with pytest.raises(aiohttp.ClientConnectorError):
        await traffic.get(
            https_port, SECURE, "/productpage", tls=make_tls([SECURE]).client_context()
        )
    # The plain-HTTP server redirects to HTTPS.
    redirect = await traffic.get(http_port, SECURE, "/productpage", allow_redirects=False)
    assert redirect.status == 301
    assert redirect.headers.get("location", "").startswith(f"https://{SECURE}")
    await traffic.no_rejections()


async def test_credential_rotation_over_sds(traffic: Traffic) -> None:
    port, https_port = traffic.port(), traffic.port()
    await traffic.workloads("productpage", NS, port, ("v1",))
    old, new = make_tls([SECURE]), make_tls([SECURE])
    traffic.write("secret.yaml", [tls_secret("rotating", GATEWAY_NS, old.cert_pem, old.key_pem)])
    traffic.istio("gw.yaml", "Gateway", "secure-gateway", NS, gateway_spec({
        "port": {"number": https_port, "name": "https", "protocol": "HTTPS"},
        "hosts": [SECURE],
        "tls": {"mode": "SIMPLE", "credentialName": "rotating"},
    }))  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "secure", NS,
                  bookinfo_vs([SECURE], port, ["secure-gateway"]))  # fmt: skip
    await traffic.gateway()
    await traffic.until_answers(
        https_port, SECURE, lambda r: r.status == 200, "old certificate served",
        path="/productpage", tls=old.client_context(),
    )  # fmt: skip

    # The Secret changes: the gateway serves the new certificate, no restart.
    traffic.write("secret.yaml", [tls_secret("rotating", GATEWAY_NS, new.cert_pem, new.key_pem)])
    await traffic.until_answers(
        https_port, SECURE, lambda r: r.status == 200, "new certificate served",
        path="/productpage", tls=new.client_context(),
    )  # fmt: skip
    with pytest.raises(aiohttp.ClientConnectorError):
        await traffic.get(https_port, SECURE, "/productpage", tls=old.client_context())
    await traffic.no_rejections()


async def test_mutual_tls_gateway_requires_a_client_certificate(traffic: Traffic) -> None:
    port, https_port = traffic.port(), traffic.port()
    await traffic.workloads("productpage", NS, port, ("v1",))
    tls = make_tls([SECURE])
    traffic.write("secret.yaml", [
        tls_secret("mtls-credential", GATEWAY_NS, tls.cert_pem, tls.key_pem, ca_pem=tls.ca_pem)
    ])  # fmt: skip
    traffic.istio("gw.yaml", "Gateway", "mtls-gateway", NS, gateway_spec({
        "port": {"number": https_port, "name": "https", "protocol": "HTTPS"},
        "hosts": [SECURE],
        "tls": {"mode": "MUTUAL", "credentialName": "mtls-credential"},
    }))  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "secure", NS,
                  bookinfo_vs([SECURE], port, ["mtls-gateway"]))  # fmt: skip
    await traffic.gateway()
    ok = await traffic.until_answers(
        https_port, SECURE, lambda r: r.status == 200, "mutual TLS through the gateway",
        path="/productpage", tls=tls.client_context(present_cert=True),
    )  # fmt: skip
    assert ok.backend == "productpage-v1"
    # Without a client certificate the handshake (or the first read) fails.
    with pytest.raises(aiohttp.ClientError):
        await traffic.get(https_port, SECURE, "/productpage", tls=tls.client_context())
    # A client certificate from another CA is refused too.
    stranger = make_tls([SECURE])
    ctx = tls.client_context()
    ctx.load_verify_locations(cadata=stranger.ca_pem.decode())
    with pytest.raises(aiohttp.ClientError):
        await traffic.get(https_port, SECURE, "/productpage", tls=_with_cert(ctx, stranger))
    await traffic.no_rejections()


def _with_cert(ctx: ssl.SSLContext, material: TlsMaterial) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_bytes(material.client_cert_pem)
        key.write_bytes(material.client_key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


async def test_tls_passthrough_by_sni(traffic: Traffic) -> None:
    """Istio task "Ingress Gateway without TLS Termination": the gateway routes TLS by
    SNI to a backend that terminates TLS itself."""
    port, gw_port = traffic.port(), traffic.port()
    nginx_host = "nginx.example.com"
    material = make_tls([nginx_host])
    nginx = (
        await traffic.workloads("my-nginx", NS, port, ("v1",), port_name="https", tls=material)
    )["v1"]
    traffic.istio("gw.yaml", "Gateway", "mygateway", NS, gateway_spec({
        "port": {"number": gw_port, "name": "https", "protocol": "HTTPS"},
        "hosts": [nginx_host],
        "tls": {"mode": "PASSTHROUGH"},
    }))  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "nginx", NS, {
        "hosts": [nginx_host],
        "gateways": ["mygateway"],
        "tls": [{
            "match": [{"port": gw_port, "sniHosts": [nginx_host]}],
            "route": [{"destination": {"host": "my-nginx", "port": {"number": port}}}],
        }],
    })  # fmt: skip
    await traffic.gateway()
    # The backend's own certificate (its CA) is what the client verifies.
    ok = await traffic.until_answers(
        gw_port, nginx_host, lambda r: r.status == 200, "TLS passed through by SNI",
        tls=material.client_context(),
    )  # fmt: skip
    assert ok.backend == "my-nginx-v1"
    assert set(nginx.sni) == {nginx_host}
    # Another SNI: no route, the connection is closed (the client would accept the
    # backend's certificate for any name, so only the gateway can refuse).
    lenient = material.client_context()
    lenient.check_hostname = False
    with pytest.raises(aiohttp.ClientError):
        await traffic.get(gw_port, "other.example.com", tls=lenient)
    assert set(nginx.sni) == {nginx_host}
    await traffic.no_rejections()
