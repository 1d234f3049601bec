"""Istio task "Dry Run" (istio.io/latest/docs/tasks/security/authorization/authz-dry-run).

A policy annotated `istio.io/dry-run: "true"` is not enforced: traffic passes, and the
server sidecar's RBAC filter evaluates it as shadow rules, counting the result under
Istio's prefixes (`istio_dry_run_deny_` for DENY policies, `istio_dry_run_allow_`
for ALLOW ones: the task's `authz_dry_run_action`/`authz_dry_run_result` metric).
"""

from __future__ import annotations

from tests.security.harness import Mesh

DENY_PATH_HEADERS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""

ALLOW_PATH_IP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-path-ip
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/ip"]
"""


async def test_dry_run_deny_passes_traffic_and_counts_shadow_denials(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    mesh.apply("dry-run.yaml", DENY_PATH_HEADERS)
    await mesh.synced()

    n = 5
    for _ in range(n):
        r = await mesh.request(sleep, httpbin, "/headers", headers={"X-B3-Sampled": "1"})
        assert r.status == 200 and r.backend == "httpbin", r
    r = await mesh.request(sleep, httpbin, "/ip")
    assert r.status == 200, r

    async def counted() -> bool:
        stats = await mesh.rbac(httpbin)
        return stats.get("istio_dry_run_deny_shadow_denied", 0) == n

    await mesh.until(counted, f"{n} shadow denials counted")
    stats = await mesh.rbac(httpbin)
    assert stats.get("istio_dry_run_deny_shadow_allowed", 0) == 1, stats  # /ip
    assert stats.get("denied", 0) == 0, stats  # nothing enforced
    await mesh.done()


async def test_dry_run_allow_and_the_annotation_removed(mesh: Mesh) -> None:
    httpbin = await mesh.server("httpbin", "foo")
    sleep = await mesh.client("sleep", "foo")
    await mesh.up()
    mesh.apply("dry-run.yaml", ALLOW_PATH_IP)
    await mesh.synced()
    assert (await mesh.request(sleep, httpbin, "/ip")).status == 200
    assert (await mesh.request(sleep, httpbin, "/headers")).status == 200  # not enforced

    async def counted() -> bool:
        stats = await mesh.rbac(httpbin)
        return (
            stats.get("istio_dry_run_allow_shadow_allowed", 0) == 1
            and stats.get("istio_dry_run_allow_shadow_denied", 0) == 1
        )

    await mesh.until(counted, "one shadow allow (/ip) and one shadow denial (/headers)")

    # Without the annotation the same policy is enforced.
    mesh.apply("dry-run.yaml", ALLOW_PATH_IP.replace('"istio.io/dry-run": "true"', "{}"))
    await mesh.synced()
    assert (await mesh.request(sleep, httpbin, "/ip")).status == 200
    r = await mesh.request(sleep, httpbin, "/headers")
    assert r.status == 403 and r.body == "RBAC: access denied", r
    await mesh.done()
