"""Istio task "Ingress Gateway" authorization
(istio.io/latest/docs/tasks/security/authorization/authz-ingress).

An ingress gateway Envoy (istio=ingressgateway, app=istio-ingressgateway, in
istio-system, with its own identity from xdsd's CA) routes httpbin-gateway's port to
httpbin.foo, which has a sidecar. AuthorizationPolicies on the gateway allow or deny by
the client's address: `ipBlocks` (the connection's peer) and `remoteIpBlocks` (the
original client, the peer here: no trusted proxies in front). Clients are two loopback
addresses of the test's block. At httpbin's sidecar, the gateway's own identity is the
source principal (the gateway speaks auto mTLS to the sidecar).
"""

from __future__ import annotations

import ssl

import pytest

from tests.security.harness import GATEWAY_SA, Mesh, Reply, Workload, parse_xfcc


def ingress_policy(action: str, field: str, ips: list[str]) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: {action}
  rules:
  - from:
    - source:
        {field}: {ips}
"""


async def _setup(mesh: Mesh) -> tuple[Workload, Workload, int]:
    httpbin = await mesh.server("httpbin", "foo")
    gateway = await mesh.gateway()
    gw_port = mesh.port()
    mesh.apply(
        "httpbin-gateway.yaml",
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
  namespace: foo
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {gw_port}
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: foo
spec:
  hosts:
  - "*"
  gateways:
  - httpbin-gateway
  http:
  - route:
    - destination:
        host: httpbin.foo.svc.cluster.local
        port:
          number: {httpbin.http_port}
""",
    )
    await mesh.up()
    await mesh.wait_listener(gateway, f"0.0.0.0_{gw_port}")
    return httpbin, gateway, gw_port


def _allowed(r: Reply) -> bool:
    return r.status == 200 and r.backend == "httpbin"


def _denied(r: Reply) -> bool:
    return r.status == 403 and r.body == "RBAC: access denied"


@pytest.mark.parametrize("field", ["ipBlocks", "remoteIpBlocks"])
async def test_ip_based_allow_list_and_deny_list(mesh: Mesh, field: str) -> None:
    _, gateway, port = await _setup(mesh)
    client, stranger = mesh.ip(), mesh.ip()
    host = "httpbin.example.com"
    r = await mesh.via_gateway(port, host, "/headers", source=client)
    assert _allowed(r), r

    # Allow list without the client: 403 at the gateway.
    mesh.apply("ingress-policy.yaml", ingress_policy("ALLOW", field, ["1.2.3.4", "5.6.7.0/24"]))
    await mesh.synced()
    assert _denied(await mesh.via_gateway(port, host, "/headers", source=client))

    # With the client's address (and a CIDR for the block's neighbours) : 200.
    mesh.apply(
        "ingress-policy.yaml",
        ingress_policy("ALLOW", field, ["1.2.3.4", "5.6.7.0/24", client]),
    )
    await mesh.synced()
    assert _allowed(await mesh.via_gateway(port, host, "/headers", source=client))
    assert _denied(await mesh.via_gateway(port, host, "/headers", source=stranger))

    # Deny list with the client's address: the client 403, others 200.
    mesh.apply("ingress-policy.yaml", ingress_policy("DENY", field, [client]))
    await mesh.synced()
    assert _denied(await mesh.via_gateway(port, host, "/headers", source=client))
    assert _allowed(await mesh.via_gateway(port, host, "/headers", source=stranger))
    # A CIDR covering the whole test block.
    block = ".".join(client.split(".")[:3]) + ".0/24"
    mesh.apply("ingress-policy.yaml", ingress_policy("DENY", field, [block]))
    await mesh.synced()
    before = await mesh.rbac(gateway)
    assert _denied(await mesh.via_gateway(port, host, "/headers", source=stranger))
    after = await mesh.rbac(gateway)
    assert after.get("denied", 0) - before.get("denied", 0) == 1, (before, after)
    await mesh.done()


async def test_gateway_identity_is_the_source_principal_at_the_sidecar(mesh: Mesh) -> None:
    httpbin, _, port = await _setup(mesh)
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    mesh.apply(
        "httpbin-from-gateway.yaml",
        f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: from-ingress-only
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/istio-system/sa/{GATEWAY_SA}"]
""",
    )
    await mesh.synced()
    r = await mesh.via_gateway(port, "httpbin.example.com", "/headers")
    assert _allowed(r), r
    assert r.peer_uris == [f"spiffe://cluster.local/ns/istio-system/sa/{GATEWAY_SA}"], r.xfcc
    assert _denied(await mesh.request(sleep, httpbin, "/headers"))

    # Mesh-wide STRICT: the gateway's hop to the sidecar is mTLS already, nothing changes.
    mesh.apply(
        "pa.yaml",
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
""",
    )
    await mesh.synced()
    assert _allowed(await mesh.via_gateway(port, "httpbin.example.com", "/headers"))
    assert await mesh.attempt(mesh.direct(httpbin, "/headers")) is None
    await mesh.done()


async def test_istio_mutual_gateway_server_takes_mesh_clients_only(mesh: Mesh) -> None:
    """A Gateway server with tls.mode ISTIO_MUTUAL: the gateway terminates mTLS with its
    own workload certificate and requires a client certificate from the mesh CA."""
    httpbin = await mesh.server("httpbin", "foo")
    gateway = await mesh.gateway()
    sleep = await mesh.client("sleep", "foo")
    gw_port, svc_port = mesh.port(), mesh.port()
    gw_host = "istio-ingressgateway.istio-system.svc.cluster.local"
    mesh.apply(
        "mtls-gateway.yaml",
        f"""
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{app: istio-ingressgateway}}
  ports: [{{name: http-mtls, port: {svc_port}, targetPort: {gw_port}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ingressgateway, namespace: foo}}
spec:
  host: {gw_host}
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mtls-gateway, namespace: foo}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: https, protocol: HTTPS}}
    tls: {{mode: ISTIO_MUTUAL}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin-via-gateway, namespace: foo}}
spec:
  hosts: ["*"]
  gateways: [mtls-gateway]
  http:
  - route:
    - destination:
        host: {httpbin.host}
        port: {{number: {httpbin.http_port}}}
""",
    )
    await mesh.up()
    await mesh.wait_listener(gateway, f"0.0.0.0_{gw_port}")

    # The mesh client (its sidecar presents sleep's certificate) gets through. XFCC as
    # istiod sets it up: the gateway (SANITIZE_SET, with the client's Cert) names sleep,
    # then httpbin's sidecar (APPEND_FORWARD) appends the gateway's own mTLS hop.
    r = await mesh.request(sleep, gw_host, "/headers", port=svc_port)
    assert _allowed(r), r
    assert r.peer_uris == [sleep.identity, gateway.identity], r.xfcc
    first, last = parse_xfcc(r.xfcc)
    assert first["By"] == gateway.identity and "BEGIN%20CERTIFICATE" in first["Cert"]
    assert last["By"] == httpbin.identity and "Cert" not in last
    stats = await mesh.stats(gateway, rf"^listener\.0\.0\.0\.0_{gw_port}\.ssl\.handshake$")
    assert sum(stats.values()) >= 1, stats

    # TLS without a client certificate, and plaintext, are refused at the gateway.
    no_cert = ssl.create_default_context(cadata=mesh.xds_root.decode())
    no_cert.check_hostname = False  # the gateway's certificate names a SPIFFE ID only
    assert await mesh.attempt(mesh.via_gateway(gw_port, gw_host, "/", tls=no_cert)) is None
    assert await mesh.attempt(mesh.via_gateway(gw_port, gw_host, "/")) is None
    await mesh.done()
