"""Istio task "External Authorization"
(istio.io/latest/docs/tasks/security/authorization/authz-custom).

Our ext_authz server (tests/security/harness.py `ExtAuthz`, the sample's behaviour:
allow iff `x-ext-authz: allow`) runs as Service ext-authz.foo with an HTTP port and a
gRPC port; MeshConfig (ConfigMap `istio` in istio-system, key `mesh`) defines the two
extensionProviders; a CUSTOM AuthorizationPolicy on httpbin sends `/headers` to the
provider and lets every other path through unchecked.
"""

from __future__ import annotations

import pytest

from tests.security.harness import ExtAuthz, Mesh


def custom_policy(provider: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: CUSTOM
  provider:
    name: {provider}
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""


def providers(ext: ExtAuthz) -> dict[str, object]:
    host = ext.workload.host
    return {
        "extensionProviders": [
            {
                "name": "sample-ext-authz-grpc",
                "envoyExtAuthzGrpc": {"service": host, "port": str(ext.grpc_port)},
            },
            {
                "name": "sample-ext-authz-http",
                "envoyExtAuthzHttp": {
                    "service": host,
                    "port": str(ext.http_port),
                    "includeRequestHeadersInCheck": ["x-ext-authz"],
                    # Not in the task's example: the HTTP server's headers reach the app
                    # only when named (the gRPC server's OkHttpResponse headers always do).
                    "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
                },
            },
        ]
    }


@pytest.mark.parametrize("flavour", ["http", "grpc"])
async def test_custom_action_with_our_ext_authz(mesh: Mesh, flavour: str) -> None:
    ext = await mesh.ext_authz("ext-authz", "foo")
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    mesh.mesh_config(providers(ext))
    await mesh.up()
    r = await mesh.request(sleep, httpbin, "/ip")
    assert r.status == 200, r

    mesh.apply("ext-authz.yaml", custom_policy(f"sample-ext-authz-{flavour}"))
    await mesh.synced()

    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-ext-authz": "deny"})
    assert r.status == 403 and not r.backend, r
    assert r.body.startswith("denied by ext_authz"), r
    assert ext.checks and ext.checks[-1][0] == flavour, ext.checks

    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-ext-authz": "allow"})
    assert r.status == 200 and r.backend == "httpbin", r
    # The server's answer header reached the app, and the app saw the client's identity.
    assert r.seen_headers.get("x-ext-authz-check-result") == "allowed", r.seen_headers
    assert r.peer_uris == [sleep.identity], r.xfcc

    # Paths the rules do not name are not sent to the provider.
    checks = len(ext.checks)
    r = await mesh.request(sleep, httpbin, "/ip", headers={"x-ext-authz": "deny"})
    assert r.status == 200 and r.backend == "httpbin", r
    assert len(ext.checks) == checks
    stats = await mesh.ext_authz_stats(httpbin)
    assert stats.get("denied", 0) >= 1 and stats.get("ok", 0) >= 1, stats
    await mesh.done()


async def test_custom_then_deny_then_allow_order(mesh: Mesh) -> None:
    """CUSTOM is evaluated first: a request the provider denies is denied even when an
    ALLOW policy allows it; one it allows still meets DENY."""
    ext = await mesh.ext_authz("ext-authz", "foo")
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    mesh.mesh_config(providers(ext))
    await mesh.up()
    mesh.apply("ext-authz.yaml", custom_policy("sample-ext-authz-http"))
    mesh.apply(
        "allow-all.yaml",
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-user]
      values: ["blocked"]
""",
    )
    await mesh.synced()
    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-ext-authz": "deny"})
    assert r.status == 403 and r.body.startswith("denied by ext_authz"), r
    r = await mesh.request(
        sleep, httpbin, "/headers", headers={"x-ext-authz": "allow", "x-user": "blocked"}
    )
    assert r.status == 403 and r.body == "RBAC: access denied", r
    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-ext-authz": "allow"})
    assert r.status == 200 and r.backend == "httpbin", r
    await mesh.done()


async def test_custom_with_an_unknown_provider_denies_what_its_rules_match(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    mesh.apply("ext-authz.yaml", custom_policy("no-such-provider"))
    await mesh.synced()
    r = await mesh.request(sleep, httpbin, "/headers", headers={"x-ext-authz": "allow"})
    assert r.status == 403 and not r.backend, r
    r = await mesh.request(sleep, httpbin, "/ip")
    assert r.status == 200 and r.backend == "httpbin", r
    assert mesh.app is not None
    assert any("no-such-provider" in str(e) for e in mesh.app.snapshot.errors), [
        str(e) for e in mesh.app.snapshot.errors
    ]
    await mesh.done()
