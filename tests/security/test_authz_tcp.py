"""Istio task "TCP Traffic" authorization
(istio.io/latest/docs/tasks/security/authorization/authz-tcp) with tcp-echo's three
ports (9000, 9001 and 9002 there; the pod's ports here, which is what `ports` means).

A TCP connection a policy denies is closed by the server sidecar's network RBAC filter
before the app answers (the task's "connection rejected"). An HTTP-only field (methods)
in a rule on a TCP port makes an ALLOW rule match nothing and a DENY rule match
everything the rest of it matches, as istiod does.
"""

from __future__ import annotations

from tests.security.harness import Mesh, Workload


def policy(action: str, rules: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: {action}
  rules:
{rules}
"""


async def _setup(mesh: Mesh) -> tuple[Workload, Workload, Workload]:
    echo = await mesh.server("tcp-echo", "foo", http=False, tcp=3)
    sleep = await mesh.client("sleep", "foo")
    other = await mesh.client("sleep", "bar")
    await mesh.up()
    return echo, sleep, other


async def connects(mesh: Mesh, client: Workload, echo: Workload, index: int) -> bool:
    payload = f"port {index}".encode()
    answer = await mesh.tcp(client, echo, index, payload)
    assert answer in ("", f"tcp-echo: port {index}"), answer
    return answer != ""


async def test_allow_and_deny_tcp_ports(mesh: Mesh) -> None:
    echo, sleep, _ = await _setup(mesh)
    p = [target for _, target in echo.tcp_ports]
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [True, True, True]

    mesh.apply(
        "tcp.yaml",
        policy("ALLOW", f'  - to:\n    - operation:\n        ports: ["{p[0]}", "{p[1]}"]'),
    )
    await mesh.synced()
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [True, True, False]
    assert (await mesh.rbac(echo)).get("denied", 0) >= 1

    # methods is HTTP-only: on a TCP port the ALLOW rule matches nothing.
    mesh.apply(
        "tcp.yaml",
        policy(
            "ALLOW",
            f'  - to:\n    - operation:\n        methods: ["GET"]\n        ports: ["{p[0]}"]',
        ),
    )
    await mesh.synced()
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [False, False, False]

    # DENY with methods only: the HTTP-only field is left out, the rule denies all TCP.
    mesh.apply("tcp.yaml", policy("DENY", '  - to:\n    - operation:\n        methods: ["GET"]'))
    await mesh.synced()
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [False, False, False]

    # DENY with methods and a port: only that port is denied.
    mesh.apply(
        "tcp.yaml",
        policy(
            "DENY",
            f'  - to:\n    - operation:\n        methods: ["GET"]\n        ports: ["{p[0]}"]',
        ),
    )
    await mesh.synced()
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [False, True, True]
    await mesh.done()


async def test_allow_and_deny_tcp_by_principal(mesh: Mesh) -> None:
    echo, sleep, other = await _setup(mesh)
    p0 = echo.tcp_ports[0][1]
    mesh.apply(
        "tcp.yaml",
        policy(
            "ALLOW",
            '  - from:\n    - source:\n        principals: ["cluster.local/ns/foo/sa/sleep"]',
        ),
    )
    await mesh.synced()
    assert await connects(mesh, sleep, echo, 0)
    assert not await connects(mesh, other, echo, 0)

    mesh.apply(
        "tcp.yaml",
        policy(
            "DENY",
            '  - from:\n    - source:\n        principals: ["cluster.local/ns/foo/sa/sleep"]\n'
            f'    to:\n    - operation:\n        ports: ["{p0}"]',
        ),
    )
    await mesh.synced()
    assert [await connects(mesh, sleep, echo, i) for i in range(3)] == [False, True, True]
    assert [await connects(mesh, other, echo, i) for i in range(3)] == [True, True, True]
    await mesh.done()


async def test_http_only_fields_on_a_tcp_port_are_warned(mesh: Mesh) -> None:
    """Issue 12: HTTP-only fields on a TCP port make the rule not match "with a warning,
    as istiod does": the policy gets a warning naming the field (logs, validate,
    /debug/configz and status read the same list)."""
    echo, sleep, _ = await _setup(mesh)
    p0 = echo.tcp_ports[0][1]
    mesh.apply(
        "tcp.yaml",
        policy(
            "ALLOW", f'  - to:\n    - operation:\n        methods: ["GET"]\n        ports: ["{p0}"]'
        ),
    )
    await mesh.synced()
    assert not await connects(mesh, sleep, echo, 0)
    assert mesh.app is not None
    warnings = [str(e) for e in mesh.app.snapshot.errors if "tcp-policy" in e.object]
    assert any("methods" in w for w in warnings), [str(e) for e in mesh.app.snapshot.errors]
    await mesh.done()
