"""Harness of the security conformance suite: real Envoy sidecars with xdsd's certificates.

A `Mesh` belongs to one test. On loopback only (no network namespaces):

- xdsd in process (`XdsdApp`) with its CA: xDS in plaintext for the Envoys (as 15010),
  and the TLS port (as 15012) where each workload's agent asks the CA for its
  certificate with a service-account token; TokenReview is answered by the Kubernetes
  API test server (`tests/kube/apiserver.py`).
- a config folder the test writes Istio YAML into (`apply`, `remove`), also at runtime
  (`synced()` waits until xdsd pushed it and every Envoy ACKed it).
- workloads, each on its own loopback IP of a fresh 127.B.C block:
  - `server(name, ns)`: a Service, a Pod labelled `security.istio.io/tlsMode: istio`
    (app/version labels, serviceAccountName) and, with a sidecar, a Sidecar CR with
    `ingress` listeners bound to the pod IP (captureMode NONE, defaultEndpoint the
    app on 127.0.0.1) and `egress` bound to the pod IP; an Envoy sidecar with its own
    identity from xdsd's CA (`AgentSds.from_istio_ca`). The apps echo what they saw
    (method, path, headers, x-forwarded-client-cert) as JSON. `sidecar=False`: a plain
    app on the pod IP, pod without the tlsMode label.
  - `client(name, ns)`: a sidecar only (egress bound to its own IP), for `request`.
  - `gateway()`: an ingress gateway Envoy (istio=ingressgateway in istio-system).
  - `ext_authz(name, ns)`: our ext_authz server (HTTP and gRPC Check) as a plain
    mesh Service; it allows a request iff it carries `x-ext-authz: allow`.
  - `jwks_server(...)`: JWKS documents over HTTP for `jwksUri` (tokens: `jwt.py`).
  - `legacy(name, ns)`: a client without a sidecar (a source address for `direct`).
- `up()` starts xdsd and every Envoy not started yet, in parallel (`Mesh(delta=True)`:
  Delta xDS).
- traffic: `request(client, target, path, method=, headers=)` through the client's
  sidecar (its outbound listener CLIENT_IP:SERVICE_PORT, Host = the target's name);
  `direct(target, path, source=)` plaintext straight to the pod (no client sidecar);
  `tcp(client, target, i)` / `tcp_direct(target, i)`; `via_gateway(port, host, ...)`;
  `attempt(...)` is None when the connection was refused/reset (STRICT).
  `Reply.echo`/`seen_headers`/`xfcc`/`peer_uris`: what the app behind the sidecar saw.
- Envoy admin: `handshakes` (server listener `ssl.handshake`), `rbac` (allowed,
  denied, istio_dry_run_{allow,deny}_shadow_{allowed,denied}), `ext_authz_stats`,
  `cert_uris` (/certs), `stats`; `done()` asserts no NACK anywhere (call it last).

Ports: every Service port differs from every pod (target) port, so a sidecar's
egress listeners (`POD_IP_SERVICEPORT`) never meet its ingress ones
(`POD_IP_TARGETPORT`). HTTP services share one service port; each TCP port is its
own (a NONE-mode TCP listener cannot tell two services on one port apart).

Every wait polls with a deadline; nothing sleeps a fixed time. Everything started is
stopped when the test ends (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.agent_sds import AgentSds
from tests.kube.apiserver import KubeApiServer
from tests.meshgen import istio_config, pod, service, write_docs
from tests.traffic.harness import (
    DOMAIN,
    GATEWAY_LABELS,
    GATEWAY_NS,
    ISTIO_VERSION,
    Seen,
    address_block,
    app_settings,
    fqdn,
    port_free_everywhere,
)
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import EnvoyProcess, poll
from xdsd.security import SecuritySettings
from xdsd.server.grpc_server import GrpcSettings

TRUST_DOMAIN = "cluster.local"
ROOT_NS = "istio-system"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
CLUSTER_ID = "Kubernetes"
GATEWAY_SA = "istio-ingressgateway-service-account"
# Envoys drop old listeners/filter chains at once (no drain time), so once a change is
# ACKed and nothing drains (`synced`), every connection runs the new filters.
ENVOY_ARGS = ("--drain-time-s", "0", "--drain-strategy", "immediate")
_NOISE = ("Deprecated field", "deprecated runtime key", "no configured limit")


def spiffe(ns: str, sa: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"


def load_yaml(text: str) -> list[dict[str, Any]]:
    """The documents of a YAML text (e.g. an istio.io example), empty ones left out."""
    return [d for d in yaml.safe_load_all(text) if d]


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """`x-forwarded-client-cert` as a list of elements (By=..;Hash=..;Subject="..";URI=..)."""
    out = []
    for element in _split(value, ","):
        fields: dict[str, str] = {}
        for pair in _split(element, ";"):
            key, _, val = pair.partition("=")
            fields[key.strip()] = val.strip().strip('"')
        out.append(fields)
    return out


def _split(value: str, sep: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, repr=False)
class Reply:
    """A response as the client saw it; `echo` is what the backend saw (its JSON)."""

    status: int
    body: str
    headers: Mapping[str, str]

    @property
    def echo(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def backend(self) -> str:
        return str(self.echo.get("backend", ""))

    @property
    def namespace_seen(self) -> str:
        """The namespace of the backend that answered."""
        return str(self.echo.get("namespace", ""))

    @property
    def seen_headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.echo.get("headers", {}))

    @property
    def xfcc(self) -> str:
        """The x-forwarded-client-cert the backend got ('' when none)."""
        return self.seen_headers.get("x-forwarded-client-cert", "")

    @property
    def peer_uris(self) -> list[str]:
        """The client URIs (SPIFFE IDs) the backend's sidecar put into XFCC."""
        return [e["URI"] for e in parse_xfcc(self.xfcc) if "URI" in e]

    def __repr__(self) -> str:
        return f"Reply(HTTP {self.status}, {self.body[:400]!r})"


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """A pod of the test mesh, with or without a sidecar."""

    name: str
    ns: str
    sa: str
    ip: str
    labels: dict[str, str]
    sidecar: bool
    role: str  # server, client, gateway
    http_port: int | None = None  # Service port
    http_target: int | None = None  # pod port: the sidecar's ingress listener or the app
    app_port: int | None = None  # the app behind the sidecar (127.0.0.1)
    tcp_ports: list[tuple[int, int]] = field(default_factory=list)  # (service, pod) ports
    extra_ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (svc, pod)
    requests: list[Seen] = field(default_factory=list)
    envoy: EnvoyProcess | None = None
    agent: AgentSds | None = None
    trust_domain: str = TRUST_DOMAIN

    @property
    def host(self) -> str:
        return fqdn(self.name, self.ns)

    @property
    def identity(self) -> str:
        return spiffe(self.ns, self.sa, self.trust_domain)

    @property
    def pod_name(self) -> str:
        return f"{self.name}-0"

    @property
    def proxy_id(self) -> str:
        return f"{self.pod_name}.{self.ns}"

    def proxy(self) -> EnvoyProcess:
        assert self.envoy is not None, f"{self.name}.{self.ns} has no Envoy"
        return self.envoy

    def __str__(self) -> str:
        return f"{self.name}.{self.ns}@{self.ip}"


def _echo_handler(w: Workload) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        w.requests.append(
            Seen(request.method, request.path_qs, request.host, CIMultiDict(request.headers))
        )
        peer = request.transport.get_extra_info("peername") if request.transport else None
        echo = {
            "backend": w.name,
            "namespace": w.ns,
            "method": request.method,
            "path": request.path_qs,
            "host": request.host,
            "headers": dict(request.headers),
            "peer": peer[0] if peer else "",
            "body": body.decode(errors="replace"),
        }
        return web.json_response(echo, headers={"x-backend": w.name})

    return handle


# --------------------------------------------------------------------------- ext_authz


@dataclass
class ExtAuthz:
    """Our ext_authz server: allows a request iff header `x-ext-authz: allow` (as Istio's
    samples/extauthz), over HTTP (any path) and gRPC (envoy.service.auth.v3 Check).

    Allowed checks answer header `x-ext-authz-check-result: allowed` (Envoy passes it to
    the backend); denied ones 403 `denied`. Every check is recorded."""

    workload: Workload
    header: str = "x-ext-authz"
    allow_value: str = "allow"
    checks: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (flavour, headers)

    @property
    def http_port(self) -> int:
        assert self.workload.http_port is not None
        return self.workload.http_port

    @property
    def grpc_port(self) -> int:
        return self.workload.extra_ports["grpc"][0]

    def allowed(self, headers: Mapping[str, str]) -> bool:
        return CIMultiDict(headers).get(self.header, "") == self.allow_value

    async def http_check(self, request: web.Request) -> web.Response:
        headers = dict(request.headers)
        self.checks.append(("http", headers))
        if self.allowed(headers):
            return web.Response(status=200, headers={"x-ext-authz-check-result": "allowed"})
        return web.Response(
            status=403,
            text=f"denied by ext_authz for not found header `{self.header}: "
            f"{self.allow_value}` in the request",
            headers={"x-ext-authz-check-result": "denied"},
        )

    def grpc_servicer(self) -> Any:
        from envoy.config.core.v3 import base_pb2
        from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
        from envoy.type.v3 import http_status_pb2
        from google.rpc import status_pb2

        ext = self

        class Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
            async def Check(self, request: Any, context: Any) -> Any:
                headers = dict(request.attributes.request.http.headers)
                ext.checks.append(("grpc", headers))
                if ext.allowed(headers):
                    value = base_pb2.HeaderValue(key="x-ext-authz-check-result", value="allowed")
                    return external_auth_pb2.CheckResponse(
                        status=status_pb2.Status(code=0),
                        ok_response=external_auth_pb2.OkHttpResponse(
                            headers=[base_pb2.HeaderValueOption(header=value)]
                        ),
                    )
                value = base_pb2.HeaderValue(key="x-ext-authz-check-result", value="denied")
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=7),  # PERMISSION_DENIED
                    denied_response=external_auth_pb2.DeniedHttpResponse(
                        status=http_status_pb2.HttpStatus(code=403),
                        headers=[base_pb2.HeaderValueOption(header=value)],
                        body="denied by ext_authz (grpc)",
                    ),
                )

        return Servicer()


# --------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    """An HTTP server of JWKS documents for RequestAuthentication `jwksUri` (xdsd fetches
    it, as istiod does). `documents[path]` is served as JSON; `status` (e.g. 500) makes
    every fetch fail; `fetches` counts requests per path."""

    ip: str
    port: int
    documents: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    fetches: dict[str, int] = field(default_factory=dict)

    def url(self, path: str = "/jwks.json") -> str:
        return f"http://{self.ip}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches[request.path] = self.fetches.get(request.path, 0) + 1
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        if request.path not in self.documents:
            return web.Response(status=404, text="no such JWKS")
        return web.json_response(self.documents[request.path])


# --------------------------------------------------------------------------- the mesh


class Mesh:
    """One test's mesh: xdsd with its CA, a config folder, workloads, Envoys."""

    def __init__(
        self, tmp_path: Path, *, delta: bool = False, trust_domain: str = TRUST_DOMAIN
    ) -> None:
        """`delta`: the Envoys use Delta xDS (else state of the world); `trust_domain`:
        the one xdsd's CA issues identities in (`--trust-domain`)."""
        self.tmp = tmp_path
        self.delta = delta
        self.trust_domain = trust_domain
        self.dir = tmp_path / "config"
        self.dir.mkdir()
        self.prefix = address_block()
        self._hosts = iter(range(2, 255))
        self._ports: set[int] = set()
        self._stack = AsyncExitStack()
        self.workloads: dict[str, Workload] = {}
        self.app: XdsdApp | None = None
        self.api: KubeApiServer | None = None
        self.certs = ensure_dev_certs(tmp_path / "xdsd-certs", ["localhost", "127.0.0.1"])
        self.http_port = self.port()  # the Service port of every HTTP service
        self.http_target = self.port()  # the pod port of every HTTP service
        self._socks = 0
        self._removed: set[Path] = set()  # files removed: synced() waits until xdsd knows

    # ---- addresses

    def ip(self) -> str:
        host = next(self._hosts, None)
        assert host is not None, "address block exhausted"
        return f"{self.prefix}.{host}"

    def port(self) -> int:
        """A port free on every address (0.0.0.0), never handed out before in this test."""
        import socket

        for _ in range(100):
            with socket.socket() as s:
                s.bind(("0.0.0.0", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports and port_free_everywhere(port, ("127.0.0.1",)):
                self._ports.add(port)
                return port
        raise RuntimeError("no free port")

    # ---- config

    def apply(self, name: str, docs: str | Iterable[Mapping[str, Any]]) -> None:
        """Write file `name` (YAML text or documents), replacing what was there."""
        write_docs(self.dir / name, load_yaml(docs) if isinstance(docs, str) else docs)
        self._removed.discard(self.dir / name)

    def remove(self, name: str) -> None:
        (self.dir / name).unlink()
        self._removed.add(self.dir / name)

    def istio(
        self,
        name: str,
        kind: str,
        obj: str,
        ns: str,
        spec: Mapping[str, Any],
        *,
        api_version: str = "security.istio.io/v1",
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        doc = istio_config(kind, obj, ns, spec, api_version=api_version)
        if annotations:
            doc["metadata"]["annotations"] = dict(annotations)
        self.apply(name, [doc])

    def mesh_config(self, mesh: Mapping[str, Any], name: str = "meshconfig.yaml") -> None:
        """MeshConfig as istiod reads it: ConfigMap `istio` in istio-system, key `mesh`."""
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ROOT_NS},
            "data": {"mesh": yaml.safe_dump(dict(mesh), sort_keys=False)},
        }
        self.apply(name, [cm])

    # ---- workloads

    def _new(
        self,
        name: str,
        ns: str,
        *,
        sa: str | None,
        labels: Mapping[str, str] | None,
        sidecar: bool,
        role: str,
    ) -> Workload:
        key = f"{name}.{ns}"
        assert key not in self.workloads, f"{key} exists"
        all_labels = {"app": name, "version": "v1", **(labels or {})}
        if sidecar:
            all_labels[TLS_MODE_LABEL] = "istio"
        w = Workload(name, ns, sa or name, self.ip(), all_labels, sidecar, role)
        w.trust_domain = self.trust_domain
        self.workloads[key] = w
        return w

    def __getitem__(self, key: str) -> Workload:
        return self.workloads[key]

    async def _http_app(self, w: Workload, ip: str, port: int, handler: Any = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler or _echo_handler(w))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, ip, port, reuse_address=True).start()

    async def _tcp_app(self, w: Workload, ip: str, port: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                data = await reader.read(65536)
                w.requests.append(Seen("TCP", str(port), "", CIMultiDict()))
                writer.write(f"{w.name}: ".encode() + data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, ip, port, reuse_address=True)

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        self._stack.push_async_callback(stop)

    async def server(
        self,
        name: str,
        ns: str,
        *,
        sidecar: bool = True,
        sa: str | None = None,
        labels: Mapping[str, str] | None = None,
        http: bool = True,
        tcp: int = 0,
    ) -> Workload:
        """A workload behind a Service `name` in `ns`: an HTTP echo app (`http`) and
        `tcp` TCP echo ports, with a sidecar (Sidecar ingress bound to the pod IP) or
        without one (the apps on the pod IP). The Envoy starts with `up()`."""
        w = self._new(name, ns, sa=sa, labels=labels, sidecar=sidecar, role="server")
        ports: list[tuple[str, int, int]] = []
        ingress: list[dict[str, Any]] = []
        if http:
            w.http_port, w.http_target = self.http_port, self.http_target
            ports.append(("http", self.http_port, self.http_target))
            if sidecar:
                w.app_port = self.port()
                await self._http_app(w, "127.0.0.1", w.app_port)
                ingress.append(self._ingress("HTTP", "http", w.http_target, w.app_port, w))
            else:
                await self._http_app(w, w.ip, w.http_target)
        for i in range(tcp):
            svc_port, target = self.port(), self.port()
            w.tcp_ports.append((svc_port, target))
            ports.append((f"tcp-{i}", svc_port, target))
            if sidecar:
                app_port = self.port()
                await self._tcp_app(w, "127.0.0.1", app_port)
                ingress.append(self._ingress("TCP", f"tcp-{i}", target, app_port, w))
            else:
                await self._tcp_app(w, w.ip, target)
        self._write_workload(w, ports, ingress)
        return w

    @staticmethod
    def _ingress(protocol: str, name: str, port: int, app_port: int, w: Workload) -> dict[str, Any]:
        return {
            "port": {"number": port, "protocol": protocol, "name": name},
            "bind": w.ip,
            "captureMode": "NONE",
            "defaultEndpoint": f"127.0.0.1:{app_port}",
        }

    def _write_workload(
        self,
        w: Workload,
        ports: Sequence[tuple[str, int, int]],
        ingress: Sequence[Mapping[str, Any]],
    ) -> None:
        docs: list[dict[str, Any]] = []
        if ports:
            docs.append(service(w.name, w.ns, ports, selector={"app": w.name}))
        docs.append(pod(w.pod_name, w.ns, w.ip, w.labels, service_account=w.sa))
        if w.sidecar and w.role != "gateway":
            spec: dict[str, Any] = {
                "workloadSelector": {"labels": {"app": w.name}},
                "egress": [{"bind": w.ip, "captureMode": "NONE", "hosts": ["*/*"]}],
            }
            if ingress:
                spec["ingress"] = list(ingress)
            docs.append(istio_config("Sidecar", w.name, w.ns, spec))
        self.apply(f"wl-{w.name}.{w.ns}.yaml", docs)

    async def client(
        self,
        name: str = "sleep",
        ns: str = "foo",
        *,
        sa: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Workload:
        """A client pod with a sidecar whose outbound listeners bind its own IP."""
        w = self._new(name, ns, sa=sa, labels=labels, sidecar=True, role="client")
        self._write_workload(w, (), ())
        return w

    def legacy(self, name: str = "sleep", ns: str = "legacy") -> Workload:
        """A client without a sidecar: just a source address (requests go `direct`)."""
        w = self._new(name, ns, sa=None, labels=None, sidecar=False, role="client")
        self._write_workload(w, (), ())
        return w

    async def gateway(self) -> Workload:
        """An ingress gateway (router) in istio-system labelled istio=ingressgateway."""
        w = self._new(
            "istio-ingressgateway",
            GATEWAY_NS,
            sa=GATEWAY_SA,
            labels=dict(GATEWAY_LABELS),
            sidecar=True,
            role="gateway",
        )
        self._write_workload(w, (), ())
        return w

    async def ext_authz(self, name: str = "ext-authz", ns: str = "foo") -> ExtAuthz:
        """Our ext_authz server as a plain mesh Service `name` (ports http, grpc)."""
        w = self._new(name, ns, sa=None, labels=None, sidecar=False, role="server")
        ext = ExtAuthz(w)
        w.http_port, w.http_target = self.port(), self.port()
        grpc_svc, grpc_target = self.port(), self.port()
        w.extra_ports["grpc"] = (grpc_svc, grpc_target)
        await self._http_app(w, w.ip, w.http_target, ext.http_check)
        server = grpc.aio.server()
        from envoy.service.auth.v3 import external_auth_pb2_grpc

        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ext.grpc_servicer(), server)
        if server.add_insecure_port(f"{w.ip}:{grpc_target}") == 0:
            raise OSError(f"cannot listen on {w.ip}:{grpc_target}")
        await server.start()

        async def stop() -> None:
            await server.stop(0.2)

        self._stack.push_async_callback(stop)
        ports = [("http", w.http_port, w.http_target), ("grpc", grpc_svc, grpc_target)]
        self._write_workload(w, ports, ())
        return ext

    async def jwks_server(self, documents: Mapping[str, Any] | None = None) -> JwksServer:
        """A JWKS server on a loopback address of this test (not a mesh workload)."""
        server = JwksServer(self.ip(), self.port(), dict(documents or {}))
        app = web.Application()
        app.router.add_get("/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, server.ip, server.port, reuse_address=True).start()
        return server

    # ---- processes

    async def start_xdsd(self) -> XdsdApp:
        assert self.app is None
        self.api = await self._stack.enter_async_context(KubeApiServer())
        kubeconfig = self.tmp / "kubeconfig"
        kubeconfig.write_text(self.api.kubeconfig_yaml())
        settings = dataclasses.replace(
            app_settings(self.dir),
            xds=GrpcSettings(
                port=0,
                tls_port=0,
                tls_cert_file=self.certs.server_cert,
                tls_key_file=self.certs.server_key,
                shutdown_grace_s=0.2,
            ),
            security=SecuritySettings(
                authenticate=True,
                ca_cert_file=self.certs.root_cert,
                ca_key_file=self.certs.root_key,
                token_review_kubeconfig=kubeconfig,
                trust_domain=self.trust_domain,
            ),
        )
        self.app = await self._stack.enter_async_context(XdsdApp(settings))
        await asyncio.wait_for(self.app.ready.wait(), 30)
        return self.app

    @property
    def xds_root(self) -> bytes:
        return self.certs.root_cert.read_bytes()

    async def _agent(self, w: Workload) -> AgentSds:
        assert self.app is not None and self.api is not None
        token = f"token-{w.ns}-{w.sa}"
        self.api.add_token(token, username=f"system:serviceaccount:{w.ns}:{w.sa}")
        self._socks += 1
        agent = await AgentSds.from_istio_ca(
            self.tmp / f"sds{self._socks}.sock",
            address=f"localhost:{self.app.tls_port}",
            xds_root=self.xds_root,
            token=token,
            identity=w.identity,
        )
        return await self._stack.enter_async_context(agent)

    def _node(self, w: Workload) -> tuple[str, dict[str, Any]]:
        meta: dict[str, Any] = {
            "NAMESPACE": w.ns,
            "ISTIO_VERSION": ISTIO_VERSION,
            "LABELS": dict(w.labels),
            "INSTANCE_IPS": w.ip,
            "SERVICE_ACCOUNT": w.sa,
            "NAME": w.pod_name,
            "WORKLOAD_NAME": w.name,
            "CLUSTER_ID": CLUSTER_ID,
            "MESH_ID": self.trust_domain,
        }
        kind = "router" if w.role == "gateway" else "sidecar"
        if kind == "sidecar":
            meta["INTERCEPTION_MODE"] = "NONE"
        return f"{kind}~{w.ip}~{w.pod_name}.{w.ns}~{w.ns}.{DOMAIN}", meta

    async def _start_envoy(self, w: Workload) -> None:
        assert self.app is not None
        w.agent = await self._agent(w)
        node, meta = self._node(w)
        envoy = EnvoyProcess(
            node,
            meta,
            xds_port=self.app.xds_port,
            delta=self.delta,
            sds_socket=w.agent.socket,
            extra_args=ENVOY_ARGS,
        )
        await self._stack.enter_async_context(envoy)
        w.envoy = envoy
        await envoy.wait_ready(timeout=30)

    async def up(self) -> None:
        """Start xdsd (first time) and the Envoys of every workload with a sidecar not
        started yet, in parallel; then wait until each has its config (`synced`)."""
        if self.app is None:
            await self.start_xdsd()
        todo = [w for w in self.workloads.values() if w.sidecar and w.envoy is None]
        try:
            await asyncio.gather(*(self._start_envoy(w) for w in todo))
        except Exception as e:
            raise AssertionError(f"{e}\n{self.envoy_logs()}") from None
        await self.synced()
        for w in todo:
            await self._wait_listeners(w)

    async def _wait_listeners(self, w: Workload) -> None:
        """The listeners `w` must hold are active (bound) in its Envoy."""
        wanted = set()
        if w.role == "server":
            if w.http_target is not None:
                wanted.add(f"{w.ip}_{w.http_target}")
            wanted |= {f"{w.ip}_{target}" for _, target in w.tcp_ports}
        if w.role == "client":
            for other in self.workloads.values():
                if other.role != "server":
                    continue
                if other.http_port is not None:
                    wanted.add(f"{w.ip}_{other.http_port}")
                wanted |= {f"{w.ip}_{svc}" for svc, _ in other.tcp_ports}

        async def present() -> bool:
            return wanted <= await self.active_listeners(w)

        await self.until(present, f"listeners {sorted(wanted)} active on {w}")

    async def wait_listener(self, w: Workload, name: str, timeout: float = 15) -> None:
        """Wait until listener `name` (e.g. 0.0.0.0_PORT on a gateway) is active on `w`."""

        async def present() -> bool:
            return name in await self.active_listeners(w)

        await self.until(present, f"listener {name} active on {w}", timeout)

    async def active_listeners(self, w: Workload) -> set[str]:
        dump = await w.proxy().config_dump("dynamic_listeners")
        return {
            c["active_state"]["listener"]["name"]
            for c in dump.get("configs", [])
            if "active_state" in c and "warming_state" not in c
        }

    # ---- waiting

    def _unconverged(self) -> list[str]:
        """Why xdsd's streams are not in sync yet (empty: they are)."""
        assert self.app is not None
        app = self.app
        if app.debouncer.pending is not None:
            return ["a push is pending"]
        out = []
        for conn in app.services.connections.values():
            if conn.watch is None or not conn.proxy_id:
                continue
            if conn.push_queued or conn.change_started is not None or conn.converging:
                out.append(f"{conn.proxy_id}: push not yet sent or ACKed")
            for type_url, st in conn.states.items():
                if st.nack is not None:
                    out.append(f"{conn.proxy_id}: {type_url} NACKed: {st.nack.message}")
                elif not st.acked:
                    out.append(f"{conn.proxy_id}: {type_url} not ACKed")
        return out

    def _reflected(self, path: Path) -> bool:
        """xdsd's store holds the file as it is on disk (or no longer, once removed)."""
        assert self.app is not None
        from xdsd.model.parse import parse_documents

        store = self.app.store
        files = store._files  # a test harness looks inside
        source = next((s for s in files if Path(s).name == path.name), None)
        if not path.exists():
            return source is None
        if source is None:
            return False
        result = parse_documents(load_yaml(path.read_text()), source)
        entry = files[source]
        # A broken object is served as its last good version or a fail-closed fallback:
        # then the file's errors (object, field path) tell that this version was read.
        if result.errors:
            seen = {(e.object, e.path) for e in entry.errors}
            return {(e.object, e.path) for e in result.errors} <= seen
        held = list(entry.objects.values())
        expected = result.objects
        return len(held) == len(expected) and all(o in held for o in expected)

    async def synced(self, timeout: float = 15) -> None:
        """Wait until xdsd holds every file of the folder as written, has pushed it, and
        every connected Envoy ACKed every type (and no listener is warming)."""
        assert self.app is not None

        why: list[str] = []

        async def done() -> bool:
            files = sorted({*self.dir.glob("*.yaml"), *self._removed})
            why[:] = [f"{p.name} not (un)loaded" for p in files if not self._reflected(p)]
            why.extend(self._unconverged())
            for w in self.workloads.values():
                if w.envoy is not None:
                    # Connections accepted under a listener's old filter chains keep
                    # their old filters (e.g. no RBAC yet) until they are drained.
                    draining = await w.envoy.stats(
                        r"^(listener_manager\.total_(filter_chains|listeners)_draining"
                        r"|cluster_manager\.warming_clusters)$"
                    )
                    if any(draining.values()):
                        why.append(f"{w}: draining {draining}")
                    dump = await w.envoy.config_dump("dynamic_listeners")
                    warming = [c["name"] for c in dump.get("configs", []) if "warming_state" in c]
                    if warming:
                        why.append(f"{w}: listeners warming: {warming}")
            return not why

        async def checked() -> bool:
            try:
                return await done()
            except Exception as e:
                why[:] = [f"check failed: {e!r}"]
                raise

        try:
            await poll(checked, timeout=timeout, what="config pushed to and ACKed by every Envoy")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {why}\n{self.diagnostics()}") from None

    async def until(
        self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15
    ) -> None:
        """Poll `check` until true; on timeout fail with xdsd's errors and Envoy logs."""
        try:
            await poll(check, timeout=timeout, what=what)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from None

    async def eventually(
        self,
        send: Callable[[], Awaitable[Reply]],
        expected: Callable[[Reply], bool],
        what: str,
        timeout: float = 15,
    ) -> Reply:
        """Send until the reply satisfies `expected` (e.g. a policy took effect)."""
        last: list[Reply | BaseException] = []

        async def check() -> bool:
            try:
                r = await send()
            except Exception as e:
                last[:] = [e]
                raise
            last[:] = [r]
            return expected(r)

        try:
            await poll(check, timeout=timeout, what=what)
        except TimeoutError as e:
            raise AssertionError(
                f"{e}; last reply: {last[0] if last else None}\n{self.diagnostics()}"
            ) from None
        assert isinstance(last[0], Reply)
        return last[0]

    # ---- traffic

    @staticmethod
    async def attempt(send: Awaitable[Reply]) -> Reply | None:
        """The reply, or None when the connection was refused, reset or closed before
        any HTTP response (as a STRICT sidecar does to a plaintext client)."""
        from aiohttp import ClientConnectionError, ClientPayloadError

        try:
            return await send
        except (ClientConnectionError, ClientPayloadError, ConnectionError):
            return None

    @staticmethod
    async def _http(
        url: str,
        host: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
        body: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Reply:
        connector = TCPConnector(force_close=True, local_addr=(source, 0) if source else None)
        async with (
            ClientSession(timeout=ClientTimeout(total=10), connector=connector) as s,
            s.request(
                method,
                url,
                headers={"Host": host, **(headers or {})},
                data=body,
                allow_redirects=False,
                **({"ssl": tls} if tls is not None else {}),
            ) as r,
        ):
            text = await r.text()
            return Reply(r.status, text, CIMultiDictProxy(CIMultiDict(r.headers)))

    async def request(
        self,
        client: Workload,
        target: Workload | str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        port: int | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """HTTP through `client`'s sidecar: to its outbound listener CLIENT_IP:PORT with
        the target's Host (a Workload: its Service's name and HTTP port)."""
        if isinstance(target, Workload):
            host, port = target.host, port or target.http_port
        else:
            host, port = target, port or self.http_port
        assert client.envoy is not None, f"{client} has no sidecar: use direct()"
        return await self._http(
            f"http://{client.ip}:{port}{path}", host, method=method, headers=headers, body=body
        )

    async def direct(
        self,
        target: Workload,
        path: str = "/",
        *,
        source: Workload | str | None = None,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Plaintext HTTP without any sidecar on the client side: straight to the pod
        (its sidecar's ingress listener, or the app itself), from `source`'s IP."""
        src = source.ip if isinstance(source, Workload) else source
        assert target.http_target is not None
        return await self._http(
            f"http://{target.ip}:{target.http_target}{path}",
            target.host,
            method=method,
            headers=headers,
            source=src,
        )

    async def via_gateway(
        self,
        port: int,
        host: str,
        path: str = "/",
        *,
        source: Workload | str | None = None,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Reply:
        """HTTP to the ingress gateway's listener 0.0.0.0:`port` (reached on 127.0.0.1)
        from `source`'s IP (what remoteIpBlocks/ipBlocks see); HTTPS with `tls`."""
        src = source.ip if isinstance(source, Workload) else source
        scheme = "https" if tls is not None else "http"
        return await self._http(
            f"{scheme}://127.0.0.1:{port}{path}", host, headers=headers, source=src, tls=tls
        )

    @staticmethod
    async def _tcp(ip: str, port: int, payload: bytes, source: str | None = None) -> str:
        """One TCP connection: send, read the answer ('' when closed or reset without one).

        Send at least 5 bytes: on a port with Envoy's TLS inspector (PERMISSIVE/STRICT
        inbound), fewer bytes cannot be told apart from a TLS record header, and the
        inspector waits for more (no listener filter timeout, as istiod's default)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(ip, port, local_addr=(source, 0) if source else None), 5
        )
        try:
            writer.write(payload)
            await writer.drain()
            return (await asyncio.wait_for(reader.read(65536), 5)).decode()
        except ConnectionError:
            return ""
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def tcp(
        self, client: Workload, target: Workload, index: int = 0, payload: bytes = b"hello"
    ) -> str:
        """TCP through `client`'s sidecar to the target's TCP port `index`."""
        svc_port, _ = target.tcp_ports[index]
        return await self._tcp(client.ip, svc_port, payload)

    async def tcp_direct(
        self,
        target: Workload,
        index: int = 0,
        payload: bytes = b"hello",
        source: Workload | str | None = None,
    ) -> str:
        """Plaintext TCP straight to the pod's TCP port `index` (no client sidecar)."""
        _, target_port = target.tcp_ports[index]
        src = source.ip if isinstance(source, Workload) else source
        return await self._tcp(target.ip, target_port, payload, src)

    # ---- Envoy admin

    async def stats(self, w: Workload, regex: str = "") -> dict[str, int]:
        return await w.proxy().stats(regex)

    async def handshakes(self, w: Workload) -> int:
        """TLS handshakes completed on `w`'s inbound (Sidecar ingress) listeners."""
        ip = re.escape(w.ip)
        stats = await w.proxy().stats(rf"^listener\.{ip}_[0-9]+\.ssl\.handshake$")
        return sum(stats.values())

    async def rbac(self, w: Workload) -> dict[str, int]:
        """RBAC filter counters of `w`'s Envoy (HTTP and network), summed by what follows
        `rbac.`: allowed, denied, shadow_allowed, shadow_denied, and with Istio's prefixes
        istio_dry_run_allow_shadow_allowed, istio_dry_run_deny_shadow_denied, ..."""
        out: dict[str, int] = {}
        for name, value in (await w.proxy().stats(r"rbac\.")).items():
            if ".worker_" in name:
                continue
            _, _, stat = name.rpartition("rbac.")
            # Envoy names shadow stats PREFIX.shadow_denied; keyed PREFIXshadow_denied.
            stat = stat.replace("_.", "_")
            out[stat] = out.get(stat, 0) + value
        return out

    async def ext_authz_stats(self, w: Workload) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, value in (await w.proxy().stats(r"ext_authz\.")).items():
            _, _, stat = name.rpartition("ext_authz.")
            out[stat] = out.get(stat, 0) + value
        return out

    async def cert_uris(self, w: Workload) -> list[str]:
        """URI SANs of the certificates `w`'s Envoy holds (admin /certs), each once."""
        status, body = await w.proxy().get("/certs")
        assert status == 200, body
        uris: list[str] = []
        for entry in json.loads(body).get("certificates", []):
            for cert in entry.get("cert_chain", []):
                for san in cert.get("subject_alt_names", []):
                    if "uri" in san and san["uri"] not in uris:
                        uris.append(san["uri"])
        return uris

    async def ca_certs(self, w: Workload) -> list[dict[str, Any]]:
        status, body = await w.proxy().get("/certs")
        assert status == 200, body
        return [c for e in json.loads(body).get("certificates", []) for c in e.get("ca_cert", [])]

    async def done(self) -> None:
        """End-of-test checks: no Envoy rejected any config, xdsd recorded no NACK."""
        for w in self.workloads.values():
            if w.envoy is not None:
                rejected = await w.envoy.rejected_updates()
                assert rejected == 0, f"{w} rejected config:\n{self.diagnostics()}"
            if w.agent is not None:
                assert w.agent.nacks() == [], w.agent.nacks()
        assert self.app is not None
        nacks = [
            (c["proxy"], t, s["last_nack"])
            for c in self.app.syncz()
            for t, s in c["types"].items()
            if s["last_nack"] is not None
        ]
        assert nacks == [], nacks

    # ---- diagnostics

    def envoy_logs(self, tail: int = 30) -> str:
        out = []
        for w in self.workloads.values():
            if w.envoy is None:
                continue
            lines = [ln for ln in w.envoy.log().splitlines() if not any(n in ln for n in _NOISE)]
            out.append(f"--- envoy of {w} ({w.envoy.admin}):\n" + "\n".join(lines[-tail:]))
        return "\n".join(out)

    def diagnostics(self) -> str:
        parts = []
        if self.app is not None:
            try:
                errs = [str(e) for e in self.app.snapshot.errors]
                parts.append("xdsd config errors/warnings: " + json.dumps(errs, indent=1))
                nacks = [
                    f"{c['proxy']} {t}: {s['last_nack']}"
                    for c in self.app.syncz()
                    for t, s in c["types"].items()
                    if s["last_nack"]
                ]
                if nacks:
                    parts.append("NACKs: " + "\n".join(nacks))
            except Exception as e:  # pragma: no cover - diagnostics only
                parts.append(f"(no snapshot: {e})")
        parts.append(self.envoy_logs())
        return "\n".join(parts)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    @staticmethod
    def now() -> float:
        return time.monotonic()
