"""Istio's auto mutual TLS ("Authentication Policy" task, "Auto mutual TLS").

Without any DestinationRule, a client sidecar speaks Istio mTLS to endpoints that have a
sidecar (pod label security.istio.io/tlsMode: istio) and plaintext to those without:
the server sidecar completes TLS handshakes on its inbound listener and hands the app
the client's SPIFFE ID in x-forwarded-client-cert; the workload without a sidecar sees
no XFCC. A DestinationRule that sets TLS (here DISABLE) wins over auto mTLS.
"""

from __future__ import annotations

import re

from tests.security.harness import Mesh, Workload, parse_xfcc


async def client_handshakes(mesh: Mesh, client: Workload, target: Workload) -> int:
    """TLS handshakes of `client`'s outbound clusters to `target`'s Service."""
    host = re.escape(target.host)
    stats = await mesh.stats(client, rf"^cluster\.outbound\|[0-9]+\|\|{host}\.ssl\.handshake$")
    return sum(stats.values())


async def test_sidecar_workload_gets_mtls_legacy_gets_plaintext(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo", tcp=1)
    legacy = await mesh.server("httpbin", "legacy", sidecar=False)
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()

    before = await mesh.handshakes(httpbin)
    r = await mesh.request(sleep, httpbin, "/headers")
    assert r.status == 200 and r.backend == "httpbin", r
    # XFCC as Istio's inbound HCM sets it (APPEND_FORWARD; subject, dns, uri): By the
    # server's identity, URI the client's.
    elements = parse_xfcc(r.xfcc)
    assert elements, f"no x-forwarded-client-cert: {r.seen_headers}"
    assert elements[-1].get("By") == httpbin.identity, r.xfcc
    assert elements[-1].get("URI") == sleep.identity, r.xfcc
    assert "Hash" in elements[-1] and "Subject" in elements[-1], r.xfcc
    # A client's own XFCC does not survive its sidecar (outbound: sanitized), so the app
    # sees exactly the element the server sidecar made from the client certificate.
    spoof = {"x-forwarded-client-cert": "By=spiffe://evil;URI=spiffe://cluster.local/ns/x/sa/y"}
    r = await mesh.request(sleep, httpbin, "/headers", headers=spoof)
    assert r.peer_uris == [sleep.identity], r.xfcc
    assert await mesh.handshakes(httpbin) > before
    assert await client_handshakes(mesh, sleep, httpbin) >= 1

    # TCP too: the server sidecar's TCP listener completes a handshake.
    before = await mesh.handshakes(httpbin)
    assert await mesh.tcp(sleep, httpbin, 0, b"hello there") == "httpbin: hello there"
    assert await mesh.handshakes(httpbin) > before

    # No sidecar at the destination: plaintext, no XFCC, no client handshake.
    r = await mesh.request(sleep, legacy, "/headers")
    assert r.status == 200 and r.namespace_seen == "legacy", r
    assert r.xfcc == "", r.xfcc
    assert await client_handshakes(mesh, sleep, legacy) == 0
    await mesh.done()


async def test_destination_rule_tls_wins_over_auto_mtls(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    r = await mesh.request(sleep, httpbin, "/headers")
    assert r.peer_uris == [sleep.identity], r

    mesh.apply(
        "dr.yaml",
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: foo}}
spec:
  host: {httpbin.host}
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
""",
    )
    await mesh.synced()
    r = await mesh.request(sleep, httpbin, "/headers")
    assert r.status == 200 and r.xfcc == "", r
    await mesh.done()
