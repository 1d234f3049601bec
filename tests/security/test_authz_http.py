"""Istio tasks "HTTP Traffic" and "Explicit Deny" authorization
(istio.io/latest/docs/tasks/security/authorization/authz-http, authz-deny), with
httpbin and sleep as in the task's samples.

AuthorizationPolicy ALLOW by principal, namespace, method, path and header; DENY
evaluated before ALLOW; the allow-nothing policy `spec: {}`. A denied request gets
Envoy's RBAC answer (403 "RBAC: access denied"), and the server sidecar counts it.
The principal the policy sees is the client's SPIFFE ID from its certificate (mTLS
between the sidecars, auto mTLS), so these need inbound mTLS too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.harness import Mesh, Reply, Workload

DENIED = "RBAC: access denied"


def policy(name: str, ns: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
{spec}
"""


def is_denied(r: Reply) -> bool:
    return r.status == 403 and r.body.strip() == DENIED and not r.backend


def is_allowed(r: Reply) -> bool:
    return r.status == 200 and r.backend == "httpbin"


async def _setup(mesh: Mesh) -> tuple[Workload, Workload, Workload]:
    httpbin = await mesh.server("httpbin", "foo")
    sleep_foo = await mesh.client("sleep", "foo")
    sleep_bar = await mesh.client("sleep", "bar")
    await mesh.up()
    for client in (sleep_foo, sleep_bar):
        r = await mesh.request(client, httpbin, "/ip")
        assert is_allowed(r), r
    return httpbin, sleep_foo, sleep_bar


async def test_allow_nothing_then_allow_by_principal_and_namespace(mesh: Mesh) -> None:
    httpbin, sleep_foo, sleep_bar = await _setup(mesh)

    # allow-nothing: an ALLOW policy without rules matches nothing, so denies everything.
    mesh.apply("allow-nothing.yaml", policy("allow-nothing", "foo", "  {}"))
    await mesh.synced()
    for client in (sleep_foo, sleep_bar):
        r = await mesh.request(client, httpbin, "/ip")
        assert is_denied(r), r
    assert (await mesh.rbac(httpbin)).get("denied", 0) >= 2
    assert httpbin.requests[-1].path == "/ip" and len(httpbin.requests) == 2  # setup's only

    # ALLOW sleep.foo's service account only (principals are ID without spiffe://).
    mesh.apply(
        "httpbin-viewer.yaml",
        policy(
            "httpbin-viewer",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]""",
        ),
    )
    await mesh.synced()
    r = await mesh.request(sleep_foo, httpbin, "/ip")
    assert is_allowed(r), r
    assert r.peer_uris == [sleep_foo.identity]
    r = await mesh.request(sleep_bar, httpbin, "/ip")
    assert is_denied(r), r

    # ALLOW by namespace instead: bar in, foo out.
    mesh.apply(
        "httpbin-viewer.yaml",
        policy(
            "httpbin-viewer",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  rules:
  - from:
    - source:
        namespaces: ["bar"]""",
        ),
    )
    await mesh.synced()
    before = await mesh.rbac(httpbin)
    assert is_allowed(await mesh.request(sleep_bar, httpbin, "/ip"))
    assert is_denied(await mesh.request(sleep_foo, httpbin, "/ip"))
    # The server sidecar's RBAC filter counted both (counters live as long as the
    # filter's config: compare within one config, not across changes).
    after = await mesh.rbac(httpbin)
    assert after.get("allowed", 0) - before.get("allowed", 0) == 1, (before, after)
    assert after.get("denied", 0) - before.get("denied", 0) == 1, (before, after)

    # Removing allow-nothing changes nothing for foo: the namespace rule still decides.
    mesh.remove("allow-nothing.yaml")
    await mesh.synced()
    assert is_denied(await mesh.request(sleep_foo, httpbin, "/ip"))
    mesh.remove("httpbin-viewer.yaml")
    await mesh.synced()
    assert is_allowed(await mesh.request(sleep_foo, httpbin, "/ip"))
    await mesh.done()


async def test_allow_by_method_path_and_header(mesh: Mesh) -> None:
    httpbin, sleep_foo, _ = await _setup(mesh)
    mesh.apply(
        "httpbin.yaml",
        policy(
            "httpbin",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/ip", "/status/*"]
  - to:
    - operation:
        methods: ["POST"]
        paths: ["/post"]
    when:
    - key: request.headers[x-token]
      values: ["admin"]""",
        ),
    )
    await mesh.synced()
    req = mesh.request
    assert is_allowed(await req(sleep_foo, httpbin, "/ip"))
    assert is_allowed(await req(sleep_foo, httpbin, "/status/200"))  # path template prefix
    assert is_denied(await req(sleep_foo, httpbin, "/headers"))
    assert is_denied(await req(sleep_foo, httpbin, "/ip", method="POST"))
    assert is_denied(await req(sleep_foo, httpbin, "/post", method="POST"))
    r = await req(sleep_foo, httpbin, "/post", method="POST", headers={"x-token": "admin"})
    assert is_allowed(r) and r.echo["method"] == "POST", r
    r = await req(sleep_foo, httpbin, "/post", method="POST", headers={"x-token": "guest"})
    assert is_denied(r), r
    await mesh.done()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_deny_is_evaluated_before_allow(tmp_path: Path, delta: bool) -> None:
    mesh = Mesh(tmp_path, delta=delta)
    try:
        await _deny_before_allow(mesh)
    finally:
        await mesh.close()


async def _deny_before_allow(mesh: Mesh) -> None:
    httpbin, sleep_foo, _ = await _setup(mesh)
    assert mesh.app is not None
    assert {c["delta"] for c in mesh.app.syncz()} == {mesh.delta}
    # authz-deny: deny GET unless x-token: admin.
    mesh.apply(
        "deny-method-get.yaml",
        policy(
            "deny-method-get",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]""",
        ),
    )
    await mesh.synced()
    req = mesh.request
    assert is_allowed(await req(sleep_foo, httpbin, "/get", headers={"x-token": "admin"}))
    assert is_denied(await req(sleep_foo, httpbin, "/get", headers={"x-token": "guest"}))
    assert is_denied(await req(sleep_foo, httpbin, "/get"))

    # allow-path-ip: with an ALLOW policy as well, DENY still decides first.
    mesh.apply(
        "allow-path-ip.yaml",
        policy(
            "allow-path-ip",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/ip"]""",
        ),
    )
    await mesh.synced()
    assert is_denied(await req(sleep_foo, httpbin, "/ip", headers={"x-token": "guest"}))
    assert is_allowed(await req(sleep_foo, httpbin, "/ip", headers={"x-token": "admin"}))
    assert is_denied(await req(sleep_foo, httpbin, "/get", headers={"x-token": "admin"}))
    await mesh.done()


async def test_deny_by_principal_and_not_principals(mesh: Mesh) -> None:
    httpbin, sleep_foo, sleep_bar = await _setup(mesh)
    mesh.apply(
        "deny.yaml",
        policy(
            "deny-bar",
            "foo",
            """  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bar/sa/sleep"]""",
        ),
    )
    await mesh.synced()
    assert is_denied(await mesh.request(sleep_bar, httpbin, "/ip"))
    assert is_allowed(await mesh.request(sleep_foo, httpbin, "/ip"))
    # notNamespaces: everyone but foo denied.
    mesh.apply(
        "deny.yaml",
        policy(
            "deny-bar",
            "foo",
            """  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]""",
        ),
    )
    await mesh.synced()
    assert is_denied(await mesh.request(sleep_bar, httpbin, "/ip"))
    assert is_allowed(await mesh.request(sleep_foo, httpbin, "/ip"))
    # A client without a sidecar has no principal: notNamespaces matches it, denied.
    legacy = mesh.legacy("sleep", "legacy")
    await mesh.synced()
    assert is_denied(await mesh.direct(httpbin, "/ip", source=legacy))
    await mesh.done()


async def test_more_match_attributes(mesh: Mesh) -> None:
    """notPaths, hosts, ports, ipBlocks and `when` keys (source.namespace,
    source.principal, destination.port, request.headers) from Istio's reference."""
    httpbin, sleep_foo, sleep_bar = await _setup(mesh)
    legacy = mesh.legacy("sleep", "legacy")
    await mesh.synced()
    target = httpbin.http_target
    mesh.apply(
        "httpbin.yaml",
        policy(
            "httpbin",
            "foo",
            f"""  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        hosts: ["{httpbin.host}"]
        ports: ["{target}"]
        notPaths: ["/admin*"]
    when:
    - key: source.namespace
      values: ["foo"]
    - key: destination.port
      values: ["{target}"]
  - from:
    - source:
        ipBlocks: ["{legacy.ip}/32"]
  - when:
    - key: source.principal
      values: ["cluster.local/ns/bar/sa/sleep"]
    - key: request.headers[x-user]
      values: ["alice", "bob*"]""",
        ),
    )
    await mesh.synced()
    req = mesh.request
    # Rule 0: foo's client, the service's host, any path but /admin*.
    assert is_allowed(await req(sleep_foo, httpbin, "/ip"))
    assert is_denied(await req(sleep_foo, httpbin, "/admin/users"))
    # Rule 1: the legacy client's address (no principal needed).
    assert is_allowed(await mesh.direct(httpbin, "/admin", source=legacy))
    assert is_denied(await mesh.direct(httpbin, "/ip", source=mesh.ip()))
    # Rule 2: bar's principal with a matching header (a prefix value).
    assert is_allowed(await req(sleep_bar, httpbin, "/admin", headers={"x-user": "bobby"}))
    assert is_denied(await req(sleep_bar, httpbin, "/ip", headers={"x-user": "carol"}))
    assert is_denied(await req(sleep_bar, httpbin, "/ip"))
    await mesh.done()


async def test_a_broken_policy_fails_closed(mesh: Mesh) -> None:
    """An AuthorizationPolicy that does not validate (and has no last good version) is
    served as allow-nothing for the workloads it selects, never dropped: a DENY that
    cannot be represented must not let traffic through."""
    httpbin, sleep_foo, _ = await _setup(mesh)
    other = await mesh.server("other", "foo")
    await mesh.up()
    mesh.apply(
        "broken.yaml",
        policy(
            "broken",
            "foo",
            """  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - when:
    - key: request.nonsense[x]
      values: ["1"]""",
        ),
    )
    await mesh.synced()
    assert is_denied(await mesh.request(sleep_foo, httpbin, "/ip"))
    # The workload the selector does not name is not affected.
    r = await mesh.request(sleep_foo, other, "/ip")
    assert r.status == 200 and r.backend == "other", r
    assert mesh.app is not None
    errors = [str(e) for e in mesh.app.snapshot.errors if "broken" in str(e)]
    assert errors, [str(e) for e in mesh.app.snapshot.errors]
    await mesh.done()
