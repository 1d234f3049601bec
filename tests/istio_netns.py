"""A real istio-proxy in a pod network namespace, captured by Istio's own iptables.

What a kubelet does with a pod xdsd's injector patched (REDIRECT mode), in a
pod namespace of tests/netns.py (made with `capture=False`):

- the init container: its args (`istio-iptables -p 15001 -z 15006 -u 1337 -m
  REDIRECT ...`) run as `pilot-agent <args>` as root in the pod's namespace, so
  the capture rules are the ones Istio's own code writes;
- the istio-proxy container: its args and env (downward API resolved with the
  pod's IP) run pilot-agent as uid/gid 1337 in the namespace (`setpriv`), so
  the agent's and Envoy's own traffic is exempt from capture as in a pod. Only
  Envoy's binary, drain times and the concurrency are changed in PROXY_CONFIG;
  the ports are Istio's defaults (15000, 15001, 15006, 15020, 15021, 15090):
  the namespace has its own.

The working directory (the container's file system) belongs to uid 1337 and
holds a hard link (or copy) of pilot-agent: the cache it is built into may be
under root's 0700 home. HTTP to the agent and Envoy goes from inside the
namespace as root on 127.0.0.1, which the rules leave alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.istio_proxy import TEMPLATE_PATH, IstioProxy, IstioProxySpec
from tests.netns import PROXY_UID, Pod, http_get, run

ADMIN_PORT = 15000
STATUS_PORT = 15020  # the agent's status server
ENVOY_STATUS_PORT = 15021  # Envoy's readiness listener, proxied to the agent
PROMETHEUS_PORT = 15090


def resolve_args(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """A container's args with $(VAR) expanded from its env, as the kubelet does."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def container_env(c: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """A container's env with downward API fields resolved (`fields`: path -> value)."""
    out: dict[str, str] = {}
    for e in c.get("env", ()):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


@contextlib.contextmanager
def pod_resolv_conf(pod: Pod, nameserver: str, search: Sequence[str]) -> Iterator[None]:
    """The pod's /etc/resolv.conf as the kubelet writes it (the cluster DNS, search
    domains; not its ndots:5, which would send every dotted name through the search
    list first, and the agent forwards names it does not know to `nameserver`):
    `ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf, for the
    app and for istio-iptables, which captures DNS to the servers named there.
    Removed on exit."""
    folder = Path("/etc/netns") / pod.ns
    folder.mkdir(parents=True)
    try:
        (folder / "resolv.conf").write_text(f"nameserver {nameserver}\nsearch {' '.join(search)}\n")
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # only when no other namespace has one


async def run_init(
    pod: Pod, agent: Path, args: Sequence[str], env: Mapping[str, str] | None = None
) -> str:
    """The init container (`pilot-agent istio-iptables ...`) as root in the pod, with
    the container's env (proxyMetadata, e.g. ISTIO_META_DNS_CAPTURE); its log."""
    proc = await asyncio.create_subprocess_exec(
        *pod.exec_args(str(agent), *args),
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"istio-iptables exited {proc.returncode}:\n{text[-4000:]}")
    return text


_RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


async def resolve_in(pod: Pod, name: str) -> str:
    """`name` resolved by the app (root, the pod's resolv.conf): an IPv4 address."""
    proc = await asyncio.create_subprocess_exec(
        *pod.exec_args(sys.executable, "-c", _RESOLVE, name),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise LookupError(f"{name} in {pod.ns}: {err.decode().strip()[-300:]}")
    return out.decode().strip()


def iptables_nat(pod: Pod) -> str:
    """The pod's nat table as iptables-save prints it."""
    return run(*pod.exec_args("iptables-save", "-t", "nat"))


class NetnsIstioProxy(IstioProxy):
    """pilot-agent (uid 1337) + Envoy in `pod`'s namespace, from an injected container."""

    def __init__(
        self,
        pod: Pod,
        spec: IstioProxySpec,
        container: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> None:
        super().__init__(spec)
        self.pod = pod
        self.admin_port = ADMIN_PORT
        self.status_port = STATUS_PORT
        self.envoy_status_port = ENVOY_STATUS_PORT
        self.prometheus_port = PROMETHEUS_PORT
        self.injected_args = resolve_args(container["args"], env)
        self.injected_env = dict(env)

    def proxy_config(self) -> dict[str, Any]:
        pc: dict[str, Any] = json.loads(self.injected_env["PROXY_CONFIG"])
        pc.update(
            binaryPath=str(self.envoy),
            concurrency=1,
            drainDuration="1s",
            terminationDrainDuration="0s",
        )
        return pc

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.workdir),
            **self.injected_env,
            "PROXY_CONFIG": json.dumps(self.proxy_config()),
            # The ConfigMap istio-ca-root-cert, mounted (here: in the working folder).
            "XDS_ROOT_CA": str(self.workdir / "var/run/secrets/istio/root-cert.pem"),
            "CA_ROOT_CA": str(self.workdir / "var/run/secrets/istio/root-cert.pem"),
            "CLOUD_PLATFORM": "none",  # no cloud metadata probes
            "GCE_METADATA_HOST": "127.0.0.1:1",
        }
        if self.spec.istiod_san:
            env["ISTIOD_SAN"] = self.spec.istiod_san
        env.update(self.spec.extra_env)
        return env

    def annotations(self) -> dict[str, str]:
        return {}  # the namespace has only lo and eth0: nothing to exclude

    def _lay_out(self) -> None:
        super()._lay_out()
        # Istio's template as the image has it: readiness and Prometheus on 0.0.0.0 (the
        # pod's own addresses), so the kubelet's probe reaches 15021 on the pod IP.
        (self.workdir / TEMPLATE_PATH).write_text(self.template.read_text())
        local = self.workdir / "pilot-agent"
        try:
            os.link(self.agent, local)
        except OSError:
            shutil.copy2(self.agent, local)
        self.agent = local
        for path in [self.workdir, *self.workdir.rglob("*")]:
            if path != local:  # a hard link: chown would change the cached binary
                os.lchown(path, PROXY_UID, PROXY_UID)

    async def __aenter__(self) -> NetnsIstioProxy:
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="ipn-", dir="/tmp")
        try:
            self._lay_out()
            self._log = self.log_path.open("wb")
            uid = str(PROXY_UID)
            self.proc = await asyncio.create_subprocess_exec(
                *self.pod.exec_args(
                    "setpriv",
                    f"--reuid={uid}",
                    f"--regid={uid}",
                    "--clear-groups",
                    "--",
                    str(self.agent),
                    *self.injected_args,
                ),
                cwd=self.workdir,
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # ip netns exec and setpriv exec: the agent's group
            )
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def http(self, port: int, path: str) -> tuple[int, str]:
        return await http_get(self.pod.ns, "127.0.0.1", port, path, timeout=5)

    async def ready(self) -> bool:
        with contextlib.suppress(ConnectionError, TimeoutError):
            status, _ = await self.http(self.envoy_status_port, "/healthz/ready")
            return status == 200
        return False
