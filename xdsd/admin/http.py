"""Admin HTTP: readiness, Prometheus metrics and debug APIs (istiod's port 15014).

The admin server only renders what a `DebugView` gives it; the app wires the
view to the live server state. It binds to loopback unless told otherwise,
because debug output names every proxy and service in the mesh.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class DebugView(Protocol):
    def is_ready(self) -> bool: ...

    def metrics_registry(self) -> CollectorRegistry: ...

    def syncz(self) -> list[dict[str, Any]]: ...

    def adsz(self) -> list[dict[str, Any]]: ...

    def config_dump(self, proxy_id: str) -> dict[str, Any] | None: ...

    def configz(self) -> dict[str, Any]: ...

    def registryz(self) -> list[dict[str, Any]]: ...

    def clusterz(self) -> dict[str, Any]: ...

    def push_status(self) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, sort_keys=False) + "\n",
        status=status,
        content_type="application/json",
    )


def _loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_STANDARD = frozenset(
    {"syncz", "adsz", "configz", "registryz", "clusterz", "config_dump", "push_status"}
)
# Extra debug listings, `/debug/NAME` -> an async function of the JSON to serve.
ExtraDebug = Mapping[str, Callable[[], Awaitable[Any]]]


def build_app(
    view: DebugView, *, remote_debug: bool = False, extra: ExtraDebug | None = None
) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        # Debug output names every proxy and service: loopback only unless enabled.
        if request.path.startswith("/debug") and not remote_debug and not _loopback(request.remote):
            return _json({"error": "debug endpoints are only served to loopback clients"}, 403)
        response: web.StreamResponse = await handler(request)
        return response

    async def ready(_: web.Request) -> web.Response:
        if view.is_ready():
            return web.Response(text="ready\n")
        return web.Response(text="not ready: initial config load not finished\n", status=503)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(view.metrics_registry())
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def listing(fn: Callable[[], Any]) -> Callable[[web.Request], Any]:
        async def handler(_: web.Request) -> web.Response:
            return _json(fn())

        return handler

    async def config_dump(request: web.Request) -> web.Response:
        proxy_id = request.query.get("proxyID", "")
        if not proxy_id:
            return _json({"error": "query parameter proxyID (POD.NAMESPACE) is required"}, 400)
        dump = view.config_dump(proxy_id)
        if dump is None:
            return _json({"error": f"proxy {proxy_id!r} is not connected"}, 404)
        return _json(dump)

    async def index(_: web.Request) -> web.Response:
        return _json(
            {
                "endpoints": [
                    "/ready",
                    "/healthz",
                    "/metrics",
                    "/debug/syncz",
                    "/debug/adsz",
                    "/debug/config_dump?proxyID=POD.NAMESPACE",
                    "/debug/configz",
                    "/debug/registryz",
                    "/debug/clusterz",
                    "/debug/push_status",
                    *(f"/debug/{name}" for name in extra or {} if name not in _STANDARD),
                ]
            }
        )

    app = web.Application(middlewares=[guard])
    app.router.add_get("/ready", ready)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug", index)
    routes: dict[str, Callable[[web.Request], Any]] = {
        "syncz": listing(view.syncz),
        "adsz": listing(view.adsz),
        "configz": listing(view.configz),
        "registryz": listing(view.registryz),
        "clusterz": listing(view.clusterz),
        "config_dump": config_dump,
        "push_status": listing(view.push_status),
    }
    # Extra listings may also replace standard ones (the worker supervisor's aggregates).
    routes.update({name: _extra_handler(fn) for name, fn in (extra or {}).items()})
    for name, handler in routes.items():
        app.router.add_get(f"/debug/{name}", handler)
    return app


def _extra_handler(fn: Callable[[], Awaitable[Any]]) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return _json(await fn())

    return handler


class AdminServer:
    """`async with AdminServer(view, host, port):` serves until the block exits."""

    def __init__(
        self,
        view: DebugView,
        host: str = "127.0.0.1",
        port: int = 15014,
        *,
        remote_debug: bool = False,
        extra: ExtraDebug | None = None,
    ) -> None:
        self._app = build_app(view, remote_debug=remote_debug, extra=extra)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> AdminServer:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # report the port the OS picked
            for addr in self._runner.addresses:
                self.port = int(addr[1])
                break
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
