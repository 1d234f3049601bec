"""The webhook HTTPS server (istiod's 15017): `/inject[/...]` and `/validate`.

TLS only: the API server calls webhooks over HTTPS. The certificate files are
re-read when they change (checked at most once a second, on new connections), so
a rotated Secret needs no restart. `async with WebhookServer(...)` serves until the
block exits, then stops taking connections and gives requests in flight
`shutdown_grace` seconds.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web

from xdsd.webhooks.admission import MAX_BODY_BYTES, Answer, Handlers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookSettings:
    host: str = "0.0.0.0"
    port: int = 15017  # 0 picks a free port
    cert_file: Path | None = None
    key_file: Path | None = None
    shutdown_grace: float = 5.0
    reuse_port: bool = False  # worker processes share the port (SO_REUSEPORT)

    def __post_init__(self) -> None:
        if self.cert_file is None or self.key_file is None:
            raise ValueError("the webhook server needs a certificate and a key file")


class _Certificates:
    """A server SSLContext per version of the certificate files."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._stamp: tuple[float, float] | None = None
        self._checked = 0.0
        self.current = self._load()  # raises on unusable files: fail at start

    def _mtimes(self) -> tuple[float, float]:
        return (os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        self._stamp = self._mtimes()
        return ctx

    def refresh(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                if self._mtimes() != self._stamp:
                    self.current = self._load()
                    log.info("webhook certificate reloaded from %s", self.cert)
            except (OSError, ssl.SSLError) as e:
                # Mid-rotation (key and cert not yet both written): keep the old pair.
                log.warning("webhook certificate %s not reloaded: %s", self.cert, e)
        return self.current

    def server_context(self) -> ssl.SSLContext:
        base = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        base.load_cert_chain(self.cert, self.key)

        def pick(
            sock: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
        ) -> None:
            sock.context = self.refresh()

        base.sni_callback = pick
        return base


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _respond(answer: Answer) -> web.Response:
    if answer.review is not None:
        return web.json_response(answer.review, status=answer.status)
    return web.Response(text=answer.text, status=answer.status)


def build_app(handlers: Handlers) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        body = await _read_body(request, MAX_BODY_BYTES)
        return _respond(handlers.inject(body, request.content_type, request.path))

    async def validate(request: web.Request) -> web.Response:
        body = await _read_body(request, MAX_BODY_BYTES)
        return _respond(handlers.validate(body, request.content_type))

    async def ready(_: web.Request) -> web.Response:
        return web.Response(
            text="ready\n" if handlers.ctx.ready() else "not ready\n",
            status=200 if handlers.ctx.ready() else 503,
        )

    # The body limit is enforced by _read_body (with istiod's answer), not by aiohttp.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app.router.add_post("/inject", inject)
    app.router.add_post("/inject/{rest:.*}", inject)
    app.router.add_post("/validate", validate)
    app.router.add_post("/validate/{rest:.*}", validate)
    app.router.add_get("/ready", ready)
    return app


class WebhookServer:
    def __init__(self, handlers: Handlers, settings: WebhookSettings) -> None:
        assert settings.cert_file is not None and settings.key_file is not None
        self.settings = settings
        self._certs = _Certificates(settings.cert_file, settings.key_file)
        self._app = build_app(handlers)
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> WebhookServer:
        s = self.settings
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=s.shutdown_grace)
        await self._runner.setup()
        try:
            site = web.TCPSite(
                self._runner,
                s.host,
                s.port,
                ssl_context=self._certs.server_context(),
                reuse_port=s.reuse_port or None,
            )
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        if s.port == 0:
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
            runner, self._runner = self._runner, None
            await runner.cleanup()
