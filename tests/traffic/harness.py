"""Harness of the traffic conformance suite: backends, xdsd, Envoy and a client.

A `Traffic` object belongs to one test. It owns a config folder served by an
in-process XdsdApp, HTTP backends on their own loopback addresses (a fresh
127.X.Y.0/24-like block per test), the Envoy processes it starts (a sidecar in
Istio's INTERCEPTION_MODE NONE, whose outbound listeners bind 127.0.0.1 at
each service port, and an ingress gateway whose listeners bind 0.0.0.0 at each
Gateway server port), and an HTTP client. Everything stops when the test ends.

Backends have behaviour knobs (a delay per request, failing the first N
requests with a status) and record every request they see. Every wait polls
with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import math
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict

from tests.meshgen import istio_config, pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import EnvoyProcess, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

DOMAIN = "svc.cluster.local"
GATEWAY_NS = "istio-system"
GATEWAY_LABELS = {"istio": "ingressgateway"}
ISTIO_VERSION = "1.24.0"

# Envoy starts its timers from the event loop's cached time, which can be a few
# milliseconds before the request arrived: measured delays may be that much short.
TIMER_SLACK_S = 0.02

# One address block per test (127.B.C.x), so a test never meets a backend or a
# lingering connection of another one.
_blocks = itertools.count(0)


def address_block() -> str:
    """A fresh 127.B.C prefix for one test (shared by every suite in the process)."""
    block = next(_blocks)
    return f"127.{10 + block // 250}.{1 + block % 250}"


def fqdn(name: str, ns: str) -> str:
    return f"{name}.{ns}.{DOMAIN}"


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Seen:
    """One request as a backend saw it."""

    method: str
    path: str
    host: str
    headers: Mapping[str, str]


@dataclass
class Backend:
    """An HTTP/1.1 server on IP:PORT answering `NAME` with header x-backend: NAME.

    Knobs (change them at any time): `delay` seconds before answering (a request
    header `x-delay` overrides it per request); the first `fail_first` requests
    get `fail_status` at once.
    """

    name: str
    ip: str
    port: int
    delay: float = 0.0
    fail_first: int = 0
    fail_status: int = 503
    requests: list[Seen] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    sni: list[str] = field(default_factory=list)  # TLS backends: server names asked for

    @property
    def count(self) -> int:
        return len(self.requests)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Seen(request.method, request.path_qs, request.host, CIMultiDict(request.headers))
        )
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.fail_status, text=f"{self.name} failing\n")
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            delay = float(request.headers.get("x-delay", self.delay))
            if delay > 0:
                await asyncio.sleep(delay)  # the backend's behaviour, not a test wait
        finally:
            self.inflight -= 1
        return web.Response(
            text=f"{self.name}\n", headers={"x-backend": self.name, "x-host-seen": request.host}
        )


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    headers: Mapping[str, str]
    elapsed: float  # seconds, measured around the request

    @property
    def backend(self) -> str:
        return self.headers.get("x-backend", "")


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: bytes
    cert_pem: bytes  # server certificate, signed by the CA
    key_pem: bytes
    client_cert_pem: bytes  # client certificate (for mutual TLS), signed by the CA
    client_key_pem: bytes

    def client_context(self, *, present_cert: bool = False) -> ssl.SSLContext:
        """Trusts only this CA; `present_cert`: offers the client certificate."""
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if present_cert:
            with tempfile.TemporaryDirectory() as d:
                cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
                cert.write_bytes(self.client_cert_pem)
                key.write_bytes(self.client_key_pem)
                ctx.load_cert_chain(cert, key)
        return ctx


def make_tls(hosts: Sequence[str]) -> TlsMaterial:
    """A throwaway CA, a server certificate for `hosts` (SAN DNS names) and a client
    certificate, all ECDSA P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xdsd traffic test CA")])
    ca = (
        builder("xdsd traffic test CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        builder(hosts[0], ca_name, server_key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        builder("client.example.com", ca_name, client_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TlsMaterial(
        ca_pem=ca.public_bytes(pem),
        cert_pem=server.public_bytes(pem),
        key_pem=pem_key(server_key),
        client_cert_pem=client.public_bytes(pem),
        client_key_pem=pem_key(client_key),
    )


# --------------------------------------------------------------------------- statistics


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """The range of successes out of `n` (probability `p`) within `sigmas` std devs."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


# --------------------------------------------------------------------------- the harness


def port_free_everywhere(port: int, ips: Iterable[str]) -> bool:
    for ip in ips:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def app_settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


class Traffic:
    """One test's mesh: config folder, backends, xdsd, Envoys and a client."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "config"
        self.dir.mkdir()
        self._prefix = address_block()
        self._hosts = itertools.count(2)
        self._stack = AsyncExitStack()
        self.backends: dict[str, Backend] = {}
        self.envoys: list[EnvoyProcess] = []
        self.app: XdsdApp | None = None
        self._session: ClientSession | None = None

    # ---- addresses

    def ip(self) -> str:
        """A fresh loopback address of this test's block."""
        host = next(self._hosts)
        assert host < 255, "address block exhausted"
        return f"{self._prefix}.{host}"

    def port(self) -> int:
        """A port free on 0.0.0.0 (so on 127.0.0.1 and every backend address too)."""
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("0.0.0.0", 0))
                port = int(s.getsockname()[1])
            if port_free_everywhere(port, ("127.0.0.1", f"{self._prefix}.2")):
                return port
        raise RuntimeError("no free port")

    # ---- config

    def write(self, name: str, docs: Iterable[Mapping[str, Any]]) -> None:
        write_docs(self.dir / name, docs)

    def remove(self, name: str) -> None:
        (self.dir / name).unlink()

    def istio(self, name: str, kind: str, obj: str, ns: str, spec: Mapping[str, Any]) -> None:
        """Write one Istio object to file `name` (replacing what was there)."""
        self.write(name, [istio_config(kind, obj, ns, spec)])

    async def backend(
        self, name: str, port: int, ip: str = "", tls: TlsMaterial | None = None, **knobs: Any
    ) -> Backend:
        """An HTTP backend; with `tls`, HTTPS with the server certificate (the SNI
        names clients asked for are recorded in `Backend.sni`)."""
        b = Backend(name, ip or self.ip(), port, **knobs)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", b.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        server_ctx = None
        if tls is not None:
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as d:
                cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
                cert.write_bytes(tls.cert_pem)
                key.write_bytes(tls.key_pem)
                server_ctx.load_cert_chain(cert, key)

            def record_sni(_sock: Any, server_name: str | None, _ctx: Any) -> None:
                b.sni.append(server_name or "")

            server_ctx.sni_callback = record_sni
        site = web.TCPSite(runner, b.ip, b.port, reuse_address=True, ssl_context=server_ctx)
        await site.start()
        self.backends[name] = b
        return b

    async def tcp_backend(self, name: str, port: int, ip: str = "") -> Backend:
        """A TCP server answering each connection's first read with `NAME: DATA`."""
        b = Backend(name, ip or self.ip(), port)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                data = await reader.read(65536)
                b.requests.append(Seen("TCP", "", "", CIMultiDict()))
                writer.write(f"{name}: ".encode() + data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, b.ip, b.port, reuse_address=True)

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        self._stack.push_async_callback(stop)
        self.backends[name] = b
        return b

    async def workloads(
        self,
        app: str,
        ns: str,
        port: int,
        versions: Sequence[str] = ("v1",),
        *,
        port_name: str = "http",
        **knobs: Any,
    ) -> dict[str, Backend]:
        """A Kubernetes Service `app` (selector app=APP) on `port`, one Pod and one
        backend per version (labels app, version); backends are named APP-VERSION.
        A port name starting with "tcp" gets TCP echo backends."""
        out: dict[str, Backend] = {}
        pods = []
        for v in versions:
            if port_name.startswith("tcp"):
                b = await self.tcp_backend(f"{app}-{v}", port)
            else:
                b = await self.backend(f"{app}-{v}", port, **knobs)
            out[v] = b
            pods.append(pod(f"{app}-{v}", ns, b.ip, {"app": app, "version": v}))
        self.write(
            f"svc-{app}.{ns}.yaml",
            [service(app, ns, [(port_name, port)], selector={"app": app}), *pods],
        )
        return out

    # ---- processes

    async def start_xdsd(self) -> XdsdApp:
        assert self.app is None
        self.app = await self._stack.enter_async_context(XdsdApp(app_settings(self.dir)))
        await asyncio.wait_for(self.app.ready.wait(), 30)
        return self.app

    async def _envoy(self, node: str, meta: Mapping[str, Any]) -> EnvoyProcess:
        if self.app is None:
            await self.start_xdsd()
        assert self.app is not None
        envoy = EnvoyProcess(node, meta, xds_port=self.app.xds_port)
        await self._stack.enter_async_context(envoy)
        self.envoys.append(envoy)
        await envoy.wait_ready()
        return envoy

    async def sidecar(
        self, ns: str, labels: Mapping[str, str] | None = None, name: str = "client"
    ) -> EnvoyProcess:
        """A client sidecar in `ns` without iptables (listeners on 127.0.0.1:PORT)."""
        meta: dict[str, Any] = {
            "NAMESPACE": ns,
            "INTERCEPTION_MODE": "NONE",
            "ISTIO_VERSION": ISTIO_VERSION,
            "LABELS": dict(labels or {"app": name}),
        }
        return await self._envoy(f"sidecar~127.0.0.1~{name}-0.{ns}~{ns}.{DOMAIN}", meta)

    async def gateway(
        self, name: str = "istio-ingressgateway", labels: Mapping[str, str] | None = None
    ) -> EnvoyProcess:
        """A gateway (router) in istio-system, by default labelled istio=ingressgateway."""
        meta = {
            "NAMESPACE": GATEWAY_NS,
            "ISTIO_VERSION": ISTIO_VERSION,
            "LABELS": dict(labels or GATEWAY_LABELS),
        }
        node = f"router~127.0.0.1~{name}-0.{GATEWAY_NS}~{GATEWAY_NS}.{DOMAIN}"
        return await self._envoy(node, meta)

    # ---- client

    @property
    def session(self) -> ClientSession:
        if self._session is None:
            self._session = ClientSession(
                timeout=ClientTimeout(total=10), connector=TCPConnector(limit=200)
            )
        return self._session

    async def get(
        self,
        port: int,
        host: str,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        fresh: bool = False,
        allow_redirects: bool = True,
    ) -> Reply:
        """GET through the proxy listening on 127.0.0.1:`port` with this Host header.

        `fresh`: a new connection (needed when a test changes listeners under it)."""
        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{port}{path}"
        hdrs = {"Host": host, **(headers or {})}
        kwargs: dict[str, Any] = {"headers": hdrs, "allow_redirects": allow_redirects}
        if tls is not None:
            kwargs["ssl"] = tls
            kwargs["server_hostname"] = server_hostname or host
        start = time.monotonic()
        if fresh or tls is not None:
            async with (
                ClientSession(timeout=ClientTimeout(total=10)) as s,
                s.get(url, **kwargs) as r,
            ):
                body = await r.text()
                return Reply(
                    r.status, body.strip(), CIMultiDict(r.headers), time.monotonic() - start
                )
        async with self.session.get(url, **kwargs) as r:
            body = await r.text()
            return Reply(r.status, body.strip(), CIMultiDict(r.headers), time.monotonic() - start)

    async def tcp(self, port: int, payload: bytes = b"ping") -> str:
        """One TCP connection to 127.0.0.1:`port`: send, read the answer, close."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            await writer.drain()
            return (await asyncio.wait_for(reader.read(65536), 5)).decode()
        finally:
            writer.close()

    async def get_many(
        self, n: int, port: int, host: str, path: str = "/", **kw: Any
    ) -> list[Reply]:
        return [await self.get(port, host, path, **kw) for _ in range(n)]

    async def until(
        self,
        check: Callable[[], Awaitable[bool]],
        what: str,
        timeout: float = 15,
    ) -> None:
        """Poll `check` until true; on timeout, fail with the Envoy logs."""
        try:
            await poll(check, timeout=timeout, what=what)
        except TimeoutError as e:
            logs = self.envoy_logs()
            raise AssertionError(f"{e}\n{self.config_errors()}\n{logs}") from None

    async def until_answers(
        self,
        port: int,
        host: str,
        expected: Callable[[Reply], bool],
        what: str,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        timeout: float = 15,
        **kw: Any,
    ) -> Reply:
        """Poll a request until its reply satisfies `expected` (config has arrived)."""
        last: list[Reply | Exception] = []

        async def check() -> bool:
            try:
                r = await self.get(port, host, path, headers, **kw)
            except Exception as e:
                last[:] = [e]
                raise
            last[:] = [r]
            return expected(r)

        try:
            await poll(check, timeout=timeout, what=what)
        except TimeoutError as e:
            logs = self.envoy_logs()
            raise AssertionError(
                f"{e}; last reply: {last[0] if last else None}\n{self.config_errors()}\n{logs}"
            ) from None
        assert isinstance(last[0], Reply)
        return last[0]

    def envoy_logs(self, tail: int = 40) -> str:
        """The last lines of each Envoy's log, without its deprecation chatter."""
        noise = ("Deprecated field", "deprecated runtime key", "no configured limit")
        out = []
        for i, env in enumerate(self.envoys):
            lines = [ln for ln in env.log().splitlines() if not any(n in ln for n in noise)]
            out.append(f"--- envoy {i} ({env.admin}):\n" + "\n".join(lines[-tail:]))
        return "\n".join(out)

    def config_errors(self) -> str:
        """xdsd's view of config problems (for failure messages)."""
        if self.app is None:
            return ""
        try:
            errs = self.app.snapshot.errors
        except Exception as e:  # pragma: no cover - diagnostics only
            return f"(no snapshot: {e})"
        return "config errors: " + json.dumps([str(e) for e in errs], indent=1)

    async def no_rejections(self) -> None:
        for envoy in self.envoys:
            assert await envoy.rejected_updates() == 0, self.envoy_logs()

    @staticmethod
    async def active_config(envoy: EnvoyProcess) -> str:
        """Envoy's active clusters, listeners and route configurations, as JSON text
        (without listeners still draining after a removal)."""
        clusters = await envoy.config_dump("dynamic_active_clusters")
        listeners = await envoy.config_dump("dynamic_listeners")
        routes = await envoy.config_dump("dynamic_route_configs")
        active = [
            entry.get("active_state")
            for entry in listeners.get("configs", [])
            if entry.get("active_state")
        ]
        # Route configurations of draining listeners stay subscribed: leave them out.
        used = set(re.findall(r'"route_config_name": "([^"]*)"', json.dumps(active)))
        active_routes = [
            r for r in routes.get("configs", []) if r.get("route_config", {}).get("name") in used
        ]
        return json.dumps([clusters, active, active_routes])

    async def cluster_stats(
        self, envoy: EnvoyProcess, cluster_substring: str, only: str = "upstream_"
    ) -> dict[str, int]:
        """Counters and gauges (names matching regex `only`) of every cluster whose name
        contains `cluster_substring`, summed by last name part (e.g. 'upstream_rq_retry')."""
        stats = await envoy.stats(only)
        out: dict[str, int] = {}
        for name, value in stats.items():
            if not name.startswith("cluster."):
                continue
            cluster_and_stat = name[len("cluster.") :]
            cluster, _, stat = cluster_and_stat.rpartition(".")
            if cluster_substring in cluster:
                out[stat] = out.get(stat, 0) + value
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(Exception):
            await self._stack.aclose()
