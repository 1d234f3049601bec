"""Istio task "Mutual TLS Migration" and the PeerAuthentication parts of
"Authentication Policy" (istio.io/latest/docs/tasks/security/authentication/).

Namespaces foo and bar run httpbin and sleep with sidecars; legacy has a sleep (and an
httpbin) without one. PERMISSIVE (the default) accepts plaintext and mTLS; STRICT refuses
the plaintext client (the connection is closed: curl's exit code 56) and accepts the
sidecar client over mTLS; a workload policy's portLevelMtls DISABLE opens one port
again; a workload policy overrides the namespace's.
"""

from __future__ import annotations

from tests.security.harness import ROOT_NS, Mesh, Reply, Workload


async def _mesh(mesh: Mesh) -> dict[str, Workload]:
    w = {
        "httpbin.foo": await mesh.server("httpbin", "foo", tcp=1),
        "httpbin.bar": await mesh.server("httpbin", "bar", tcp=1),
        "httpbin.legacy": await mesh.server("httpbin", "legacy", sidecar=False),
        "sleep.foo": await mesh.client("sleep", "foo"),
        "sleep.bar": await mesh.client("sleep", "bar"),
        "sleep.legacy": mesh.legacy("sleep", "legacy"),
    }
    await mesh.up()
    return w


def peer_authentication(name: str, ns: str, spec: str, version: str = "v1") -> str:
    return f"""
apiVersion: security.istio.io/{version}
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {ns}
spec:
{spec}
"""


async def _legacy_to(mesh: Mesh, w: dict[str, Workload], target: str) -> Reply | None:
    """sleep.legacy (no sidecar) to httpbin.TARGET: plaintext straight to the pod."""
    return await mesh.attempt(mesh.direct(w[target], "/ip", source=w["sleep.legacy"]))


async def _matrix(mesh: Mesh, w: dict[str, Workload]) -> dict[str, int]:
    """`sleep.FROM to httpbin.TO: CODE` for every pair, as the task prints it (000: the
    connection was closed without a response)."""
    out = {}
    for src in ("foo", "bar", "legacy"):
        for dst in ("foo", "bar", "legacy"):
            client, target = w[f"sleep.{src}"], w[f"httpbin.{dst}"]
            if client.sidecar:
                reply = await mesh.attempt(mesh.request(client, target, "/ip"))
            else:
                reply = await mesh.attempt(mesh.direct(target, "/ip", source=client))
            out[f"sleep.{src} to httpbin.{dst}"] = reply.status if reply else 0
    return out


ALL_200 = {f"sleep.{s} to httpbin.{d}": 200 for s in ("foo", "bar", "legacy")
           for d in ("foo", "bar", "legacy")}  # fmt: skip


async def test_permissive_accepts_plaintext_and_mtls(mesh: Mesh) -> None:
    w = await _mesh(mesh)
    httpbin = w["httpbin.foo"]
    assert await _matrix(mesh, w) == ALL_200
    # The sidecar client's request arrived over mTLS (the server sidecar put the client's
    # SPIFFE ID into XFCC); the legacy client's in plaintext (no XFCC).
    r = await mesh.request(w["sleep.foo"], httpbin, "/headers")
    assert r.peer_uris == [w["sleep.foo"].identity], r.xfcc
    assert await mesh.handshakes(httpbin) >= 1
    r = await mesh.direct(httpbin, "/headers", source=w["sleep.legacy"])
    assert r.status == 200 and r.xfcc == "", r

    # PERMISSIVE said explicitly, mesh-wide: the same.
    mesh.apply("pa.yaml", peer_authentication("default", ROOT_NS, "  mtls: {mode: PERMISSIVE}"))
    await mesh.synced()
    assert await _matrix(mesh, w) == ALL_200
    await mesh.done()


async def test_strict_namespace_then_mesh_wide(mesh: Mesh) -> None:
    w = await _mesh(mesh)
    # Lock down foo to mutual TLS (the migration task's `kubectl apply -n foo`).
    mesh.apply("pa-foo.yaml", peer_authentication("default", "foo", "  mtls: {mode: STRICT}"))
    await mesh.synced()
    assert await _matrix(mesh, w) == {**ALL_200, "sleep.legacy to httpbin.foo": 0}
    # The sidecar client still gets through, over mTLS (its pooled connection may be
    # the one the matrix opened: handshakes are counted, not compared).
    r = await mesh.request(w["sleep.bar"], w["httpbin.foo"], "/headers")
    assert r.status == 200 and r.peer_uris == [w["sleep.bar"].identity], r
    assert await mesh.handshakes(w["httpbin.foo"]) >= 2  # sleep.foo's and sleep.bar's
    # TCP too: the plaintext TCP client is refused on foo's STRICT TCP port.
    assert (
        await mesh.tcp_direct(w["httpbin.foo"], 0, b"hello there", source=w["sleep.legacy"]) == ""
    )
    assert (
        await mesh.tcp(w["sleep.foo"], w["httpbin.foo"], 0, b"hello there")
        == "httpbin: hello there"
    )

    # Mesh-wide STRICT (root namespace): bar's httpbin refuses plaintext too; the legacy
    # httpbin has no sidecar and answers everybody.
    # (v1beta1, as the authn-policy task writes it.)
    mesh.apply(
        "pa-mesh.yaml",
        peer_authentication("default", ROOT_NS, "  mtls: {mode: STRICT}", version="v1beta1"),
    )
    await mesh.synced()
    assert await _matrix(mesh, w) == {
        **ALL_200,
        "sleep.legacy to httpbin.foo": 0,
        "sleep.legacy to httpbin.bar": 0,
    }
    await mesh.done()


async def test_workload_strict_with_port_level_disable(mesh: Mesh) -> None:
    w = await _mesh(mesh)
    bar = w["httpbin.bar"]
    policy = """  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT"""
    mesh.apply("pa-bar.yaml", peer_authentication("httpbin", "bar", policy))
    await mesh.synced()
    assert await _matrix(mesh, w) == {**ALL_200, "sleep.legacy to httpbin.bar": 0}

    # portLevelMtls names the workload's port (the pod port behind the Service port).
    assert bar.http_target is not None
    port_level = f"{policy}\n  portLevelMtls:\n    {bar.http_target}:\n      mode: DISABLE"
    mesh.apply("pa-bar.yaml", peer_authentication("httpbin", "bar", port_level))
    await mesh.synced()
    assert await _matrix(mesh, w) == ALL_200
    # The other (TCP) port stays STRICT.
    assert await mesh.tcp_direct(bar, 0, b"hello there", source=w["sleep.legacy"]) == ""
    assert await mesh.tcp(w["sleep.foo"], bar, 0, b"hello there") == "httpbin: hello there"
    await mesh.done()


async def test_workload_policy_overrides_namespace_policy(mesh: Mesh) -> None:
    w = await _mesh(mesh)
    mesh.apply("pa-foo.yaml", peer_authentication("default", "foo", "  mtls: {mode: STRICT}"))
    await mesh.synced()
    assert await _legacy_to(mesh, w, "httpbin.foo") is None
    overwrite = """  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: DISABLE"""
    mesh.apply("pa-overwrite.yaml", peer_authentication("overwrite-example", "foo", overwrite))
    await mesh.synced()
    r = await _legacy_to(mesh, w, "httpbin.foo")
    assert r is not None and r.status == 200, r
    # DISABLE at the destination: the client sidecar sends plaintext (auto mTLS).
    r = await mesh.request(w["sleep.foo"], w["httpbin.foo"], "/headers")
    assert r.status == 200 and r.xfcc == "", r
    await mesh.done()
