"""Istio tasks "End user authentication" and "Authorization with JWT"
(istio.io/latest/docs/tasks/security/authentication/authn-policy,
.../authorization/authz-jwt), with httpbin and sleep as in the tasks' samples.

A RequestAuthentication makes httpbin's sidecar verify tokens (jwt_authn): a valid
token passes, a token of another issuer, an expired or a forged one gets 401; a request
without a token passes until an AuthorizationPolicy requires a request principal
(`requestPrincipals: ["*"]`: 403 without one). A `when` on `request.auth.claims[groups]`
allows by claim. The key set comes inline or from a jwksUri that xdsd fetches from a
local identity provider and inlines (as istiod); outputPayloadToHeader and
outputClaimToHeaders reach the backend, and the token itself only with
forwardOriginalToken. The same at an ingress gateway (the task's end-user
authentication at ingress).
"""

from __future__ import annotations

import base64
import json

from tests.security.harness import Mesh, Reply, Workload
from tests.security.jwt import ISTIO_DEMO_ISSUER, JwtKey, tampered
from tests.security.test_ingress_authz import _setup as gateway_setup

DENIED = "RBAC: access denied"


def request_authn(name: str, ns: str, rule: str, selector: str = "app: httpbin") -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      {selector}
  jwtRules:
  - {rule}
"""


def authz(name: str, ns: str, rules: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
{rules}
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(r: Reply) -> bool:
    return r.status == 200 and r.backend == "httpbin"


def unauthorized(r: Reply) -> bool:
    return r.status == 401 and not r.backend


def denied(r: Reply) -> bool:
    return r.status == 403 and r.body.strip() == DENIED and not r.backend


async def _setup(mesh: Mesh) -> tuple[Workload, Workload]:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    r = await mesh.request(sleep, httpbin, "/headers")
    assert ok(r), r
    return httpbin, sleep


async def test_tokens_verified_then_required_then_by_claim(mesh: Mesh) -> None:
    httpbin, sleep = await _setup(mesh)
    key = JwtKey.rsa(kid="demo")
    rule = f"issuer: {ISTIO_DEMO_ISSUER}\n    jwks: '{key.jwks_json()}'"
    mesh.apply("jwt-example.yaml", request_authn("jwt-example", "foo", rule))
    await mesh.synced()

    async def send(headers: dict[str, str] | None = None) -> Reply:
        return await mesh.request(sleep, httpbin, "/headers", headers=headers)

    # Connections opened before the change drain (their next response closes them):
    # the first check after each change waits for the new chain.
    r = await mesh.eventually(
        lambda: send(bearer(key.token(iss="other-issuer@example.com"))),
        unauthorized,
        "the token check in place",
    )
    assert "issuer" in r.body, r
    # A valid token passes.
    r = await send(bearer(key.token()))
    assert ok(r), r
    # The token is not forwarded by default (forwardOriginalToken: false).
    assert "authorization" not in r.seen_headers
    # Invalid tokens are rejected by the sidecar: another issuer, expired, forged,
    # signed by a key not in the set.
    r = await send(bearer(key.token(iss="other-issuer@example.com")))
    assert unauthorized(r) and "issuer" in r.body, r
    r = await send(bearer(key.token(exp_in=-600)))
    assert unauthorized(r) and "expired" in r.body, r
    r = await send(bearer(tampered(key.token())))
    assert unauthorized(r), r
    r = await send(bearer(JwtKey.rsa(kid="demo").token()))
    assert unauthorized(r), r
    r = await send({"Authorization": "Bearer not-a-jwt"})
    assert unauthorized(r), r
    # Without a token the request passes: no AuthorizationPolicy asks for one.
    r = await send()
    assert ok(r), r

    # Require a request principal: no token -> 403, a valid token -> 200.
    mesh.apply(
        "require-jwt.yaml",
        authz(
            "require-jwt",
            "foo",
            """  - from:
    - source:
        requestPrincipals: ["*"]""",
        ),
    )
    await mesh.synced()
    await mesh.eventually(send, denied, "no token: denied")
    r = await send(bearer(key.token()))
    assert ok(r), r
    r = await send(bearer(key.token(exp_in=-600)))
    assert unauthorized(r), r  # jwt_authn answers before RBAC

    # By claim (the task's "groups" claim), and by exact principal.
    mesh.apply(
        "require-jwt.yaml",
        authz(
            "require-jwt",
            "foo",
            f"""  - from:
    - source:
        requestPrincipals: ["{ISTIO_DEMO_ISSUER}/{ISTIO_DEMO_ISSUER}"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]""",
        ),
    )
    await mesh.synced()
    await mesh.eventually(
        lambda: send(bearer(key.token(groups=["group2"]))), denied, "group2: denied"
    )
    r = await send(bearer(key.token(groups=["group1", "group2"])))
    assert ok(r), r
    r = await send(bearer(key.token(sub="someone-else", groups=["group1"])))
    assert denied(r), r
    r = await send()
    assert denied(r), r

    # `presence: REQUIRED` (newer Istio): the sidecar itself refuses a request without
    # the token (401), no AuthorizationPolicy needed.
    mesh.remove("require-jwt.yaml")
    mesh.apply(
        "jwt-example.yaml",
        request_authn("jwt-example", "foo", rule + "\n    presence: REQUIRED"),
    )
    await mesh.synced()
    r = await mesh.eventually(send, unauthorized, "no token: 401")
    assert "missing" in r.body.lower(), r
    r = await send(bearer(key.token()))
    assert ok(r), r
    await mesh.done()


async def test_jwks_uri_fetched_and_claims_to_headers(mesh: Mesh) -> None:
    key = JwtKey.ec(kid="idp")
    idp = await mesh.jwks_server({"/.well-known/jwks.json": key.jwks()})
    url = idp.url("/.well-known/jwks.json")
    httpbin, sleep = await _setup(mesh)
    issuer = "https://idp.example.com"
    rule = f"""issuer: {issuer}
    jwksUri: {url}
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - header: x-jwt-group
      claim: group
    forwardOriginalToken: true"""
    mesh.apply("jwt-uri.yaml", request_authn("jwt-uri", "foo", rule))
    await mesh.synced()
    token = key.token(iss=issuer, sub="user-1", group="admins")

    async def send() -> Reply:
        return await mesh.request(sleep, httpbin, "/headers", headers=bearer(token))

    # xdsd fetched the key set (once, whatever the number of proxies) and inlined it:
    # the token passes, verified (its payload reaches the backend).
    def verified(r: Reply) -> bool:
        return ok(r) and "x-jwt-payload" in r.seen_headers

    r = await mesh.eventually(send, verified, "a token signed by the fetched key set passes")
    assert idp.fetches == {"/.well-known/jwks.json": 1}, "fetched once, by xdsd"
    assert mesh.app is not None
    (fetched,) = mesh.app.configz()["jwks"]
    assert (fetched["url"], fetched["state"], fetched["key_ids"]) == (url, "ok", ["idp"])
    # The backend sees the payload (base64url JSON), the claim, and the token.
    seen = r.seen_headers
    payload = seen["x-jwt-payload"]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert (claims["iss"], claims["sub"], claims["group"]) == (issuer, "user-1", "admins")
    assert seen["x-jwt-group"] == "admins"
    assert seen["authorization"] == f"Bearer {token}"
    # A token from another key is still refused.
    r = await mesh.request(sleep, httpbin, "/", headers=bearer(JwtKey.ec().token(iss=issuer)))
    assert unauthorized(r), r
    await mesh.done()


async def test_unreachable_jwks_uri_fails_closed_with_a_warning(mesh: Mesh) -> None:
    httpbin, sleep = await _setup(mesh)
    key = JwtKey.rsa()
    url = f"http://127.0.0.1:{mesh.port()}/jwks"  # nothing listens there
    mesh.apply(
        "jwt-down.yaml",
        request_authn("jwt-down", "foo", f"issuer: {ISTIO_DEMO_ISSUER}\n    jwksUri: {url}"),
    )
    await mesh.synced()
    assert mesh.app is not None
    app = mesh.app

    async def warned() -> bool:
        return any(
            e.object == "RequestAuthentication foo/jwt-down" and "could not be fetched" in e.message
            for e in app.snapshot.errors
        )

    await mesh.until(warned, "a warning on the RequestAuthentication")
    # No key set: every token fails (fail closed); a request without one still passes.
    await mesh.eventually(
        lambda: mesh.request(sleep, httpbin, "/", headers=bearer(key.token())),
        unauthorized,
        "a token is refused",
    )
    r = await mesh.request(sleep, httpbin, "/")
    assert ok(r), r
    assert app.registry.get_sample_value("xdsd_jwks_failing") == 1
    await mesh.done()


async def test_ingress_gateway_end_user_authentication(mesh: Mesh) -> None:
    """The task's "end-user authentication" at the ingress gateway: a
    RequestAuthentication selecting istio-ingressgateway, then a DENY policy for
    requests without a principal (`notRequestPrincipals: ["*"]`)."""
    httpbin, _gateway, gw_port = await gateway_setup(mesh)
    key = JwtKey.rsa(kid="gw")
    host = "httpbin.example.com"

    async def send(headers: dict[str, str] | None = None) -> Reply:
        return await mesh.via_gateway(gw_port, host, "/headers", headers=headers)

    await mesh.eventually(send, ok, "the gateway routes to httpbin")
    mesh.apply(
        "jwt-gw.yaml",
        request_authn(
            "jwt-example",
            "istio-system",
            f"issuer: {ISTIO_DEMO_ISSUER}\n    jwks: '{key.jwks_json()}'",
            selector="istio: ingressgateway",
        ),
    )
    await mesh.synced()
    await mesh.eventually(
        lambda: send(bearer(key.token(exp_in=-600))), unauthorized, "the gateway checks tokens"
    )
    r = await send(bearer(key.token()))
    assert ok(r), r
    r = await send()
    assert ok(r), r
    mesh.apply(
        "frontend-ingress.yaml",
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-ingress
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
""",
    )
    await mesh.synced()
    await mesh.eventually(send, denied, "no token: denied at the gateway")
    r = await send(bearer(key.token()))
    assert ok(r), r
    assert not httpbin.requests[-1].headers.get("authorization")
    await mesh.done()
