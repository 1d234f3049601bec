"""The harness itself, with no security policy: a client sidecar reaches a server
sidecar through the server's Sidecar ingress listener, each Envoy holding its own
workload certificate signed by xdsd's CA (visible in Envoy's /certs admin)."""

from __future__ import annotations

from tests.security.harness import Mesh, spiffe


async def test_client_sidecar_reaches_server_sidecar_with_ca_identities(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    plain = await mesh.server("plain", "foo", sidecar=False)
    sleep = await mesh.client("sleep", "foo")
    # Envoy loads SDS secrets only when a cluster or listener names them: a service
    # with an ISTIO_MUTUAL DestinationRule (and no endpoints) makes every sidecar load
    # `default` and `ROOTCA`, whatever inbound mTLS does.
    mesh.apply(
        "probe.yaml",
        f"""
apiVersion: v1
kind: Service
metadata: {{name: probe, namespace: foo}}
spec:
  ports: [{{name: http, port: {mesh.port()}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: probe, namespace: foo}}
spec:
  host: probe.foo.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
""",
    )
    await mesh.up()

    # Each sidecar holds the certificate xdsd's CA signed for its own service account,
    # and xdsd's root as ROOTCA.
    assert await mesh.cert_uris(httpbin) == [spiffe("foo", "httpbin")]
    assert await mesh.cert_uris(sleep) == [spiffe("foo", "sleep")]
    assert httpbin.agent is not None and sleep.agent is not None
    assert httpbin.agent.root_pem == mesh.xds_root
    assert httpbin.agent.certificate_uris() == [httpbin.identity]
    assert await mesh.ca_certs(httpbin), "ROOTCA is loaded"

    # Through the client's outbound listener and the server's ingress listener.
    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-test": "1"})
    assert r.status == 200, r
    assert r.backend == "httpbin" and r.echo["path"] == "/headers"
    assert r.seen_headers["x-test"] == "1"
    assert httpbin.requests, "the app behind the sidecar saw the request"

    # The server sidecar's inbound side also answers a client without a sidecar.
    r = await mesh.direct(httpbin, "/ip")
    assert r.status == 200 and r.backend == "httpbin", r

    # A workload without a sidecar is reached through the client sidecar too.
    r = await mesh.request(sleep, plain, "/")
    assert r.status == 200 and r.backend == "plain", r
    await mesh.done()


async def test_tcp_through_sidecars(mesh: Mesh) -> None:
    echo = await mesh.server("tcp-echo", "foo", http=False, tcp=1)
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    assert await mesh.tcp(sleep, echo, 0, b"hello") == "tcp-echo: hello"
    assert await mesh.tcp_direct(echo, 0, b"hello there") == "tcp-echo: hello there"
    await mesh.done()


async def test_config_change_reaches_the_envoys(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    mesh.apply(
        "vs.yaml",
        f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: foo}}
spec:
  hosts: [{httpbin.host}]
  http:
  - headers: {{request: {{add: {{x-vs: added}}}}}}
    route: [{{destination: {{host: {httpbin.host}}}}}]
""",
    )
    await mesh.synced()
    r = await mesh.request(sleep, httpbin, "/")
    assert r.status == 200 and r.seen_headers.get("x-vs") == "added", r
    await mesh.done()
