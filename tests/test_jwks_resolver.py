"""The JWKS resolver (xdsd/sources/jwks.py) against a local JWKS server on loopback,
with an injected clock: what is fetched, when it is fetched again, what a failure
looks like (kept last good key set, backoff, metrics), and what reaches the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.security.jwt import JwtKey
from xdsd.demo import poll
from xdsd.model.jwks import JWKS_KIND
from xdsd.model.store import ConfigChange
from xdsd.model.types import ConfigObject
from xdsd.sources.jwks import JwksResolver, JwksSettings, Want, parse_cidrs

KEY1 = JwtKey.rsa(kid="one").jwks_json()
KEY2 = JwtKey.ec(kid="two").jwks_json()


@dataclass
class Idp:
    """A JWKS server: `/jwks` answers `status` with `body`; counts requests."""

    base: str = ""
    body: str = KEY1
    status: int = 200
    hits: int = 0
    hang: asyncio.Event = field(default_factory=asyncio.Event)

    async def jwks(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return web.Response(status=self.status, text=self.body, content_type="application/json")

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"issuer": self.base, "jwks_uri": self.base + "/jwks"})

    async def slow(self, request: web.Request) -> web.StreamResponse:
        await self.hang.wait()  # released when the test ends
        return web.Response(text=KEY1)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(self.base + "/jwks")

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b" " * 1024)
        await resp.write_eof()
        return resp


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    server = Idp()
    app = web.Application()
    app.router.add_get("/jwks", server.jwks)
    app.router.add_get("/.well-known/openid-configuration", server.discovery)
    app.router.add_get("/slow", server.slow)
    app.router.add_get("/redirect", server.redirect)
    app.router.add_get("/big", server.big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.base = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.hang.set()
        await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def objects(change: ConfigChange | None) -> dict[str, ConfigObject | None]:
    """url -> the object the change stores (None: removed)."""
    assert change is not None
    assert change.kinds == {JWKS_KIND}
    out: dict[str, ConfigObject | None] = {}
    for fc in change.files:
        url = fc.source.removeprefix("jwks:")
        if fc.result is None:
            out[url] = None
        else:
            (obj,) = fc.result.objects
            assert isinstance(obj, ConfigObject) and obj.kind == JWKS_KIND and obj.name == url
            out[url] = obj
    return out


def metric(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_fetch_refresh_change_fail_recover_forget(idp: Idp) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    r = JwksResolver(
        JwksSettings(refresh_interval=1200, retry_min=1), registry=registry, clock=clock
    )
    url = idp.base + "/jwks"
    try:
        assert r.next_due() is None and await r.step() is None
        r.want({url: Want()})
        assert r.next_due() == 0
        got = objects(await r.step())
        obj = got[url]
        assert obj is not None and dict(obj.spec) == {"jwks": KEY1, "error": "", "via": ""}
        assert idp.hits == 1 and r.next_due() == 1200
        assert await r.step() is None and idp.hits == 1  # not due: nothing fetched

        # A refresh that finds the same keys changes nothing (no push).
        clock.now += 1200
        assert await r.step() is None and idp.hits == 2
        # Rotated keys are a change.
        idp.body = KEY2
        clock.now += 1200
        obj = objects(await r.step())[url]
        assert obj is not None and obj.spec["jwks"] == KEY2

        # A failed refresh keeps the last good key set, records the error, retries soon.
        idp.status, idp.body = 503, "down"
        clock.now += 1200
        obj = objects(await r.step())[url]
        assert obj is not None and obj.spec["jwks"] == KEY2
        assert "status 503" in obj.spec["error"]
        assert r.next_due() == 1  # retry_min, then doubling
        assert metric(registry, "xdsd_jwks_failing") == 1
        assert r.status()[0]["state"] == "failing"
        clock.now += 1
        assert await r.step() is None  # the same failure again: nothing new to store
        assert r.next_due() == 2
        clock.now += 2
        idp.status, idp.body = 200, KEY2
        obj = objects(await r.step())[url]
        assert obj is not None and dict(obj.spec) == {"jwks": KEY2, "error": "", "via": ""}
        assert metric(registry, "xdsd_jwks_failing") == 0
        assert metric(registry, "pilot_jwks_resolver_network_fetch_fail_total") == 2
        assert metric(registry, "pilot_jwks_resolver_network_fetch_success_total") == 4

        # No longer named: forgotten, its object removed.
        r.want({})
        assert objects(await r.step()) == {url: None}
        assert r.next_due() is None
    finally:
        await r.aclose()


async def test_first_fetch_failures_are_recorded_without_a_key_set(idp: Idp) -> None:
    clock = Clock()
    r = JwksResolver(JwksSettings(max_bytes=1024), clock=clock)
    cases = {
        idp.base + "/missing": "status 404",
        idp.base + "/redirect": "status 302",  # only what the config names is fetched
        idp.base + "/big": "over 1024 bytes",
        idp.base + "/slow": "timed out",
        "http://169.254.169.254/latest/meta-data": "link-local",
        "http://127.0.0.1:1/jwks": "ClientConnectorError",
    }
    try:
        r.want({u: Want(timeout=0.3) for u in cases})
        got = objects(await r.step())
        for u, expected in cases.items():
            obj = got[u]
            assert obj is not None and obj.spec["jwks"] == "", u
            assert expected in obj.spec["error"], (u, obj.spec["error"])
        idp.body = '{"keys": "none"}'
        r.want({idp.base + "/jwks": Want()})
        obj = objects(await r.step())[idp.base + "/jwks"]
        assert obj is not None and "not a valid JWKS" in obj.spec["error"]
    finally:
        await r.aclose()


async def test_openid_discovery_of_an_issuer(idp: Idp) -> None:
    r = JwksResolver(clock=Clock())
    key = idp.base + "/.well-known/openid-configuration"
    try:
        r.want({key: Want(discovery=True)})
        obj = objects(await r.step())[key]
        assert obj is not None
        assert dict(obj.spec) == {"jwks": KEY1, "error": "", "via": idp.base + "/jwks"}
    finally:
        await r.aclose()


async def test_changes_loop_fetches_what_is_wanted(idp: Idp) -> None:
    r = JwksResolver()  # the real clock: the loop waits for want() or the next due time
    got: list[ConfigChange] = []

    async def follow() -> None:
        async for change in r.changes():
            got.append(change)

    task = asyncio.create_task(follow())
    try:
        r.want({idp.base + "/jwks": Want()})
        await poll(lambda: _async(len(got) == 1), timeout=10, what="first fetch")
        r.want({})
        await poll(lambda: _async(len(got) == 2), timeout=10, what="removal")
        assert objects(got[1]) == {idp.base + "/jwks": None}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _async(value: bool) -> bool:
    return value


async def test_names_are_resolved_and_link_local_answers_refused(
    idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = idp.base.rsplit(":", 1)[1]
    r = JwksResolver(clock=Clock())
    try:
        # A host name goes through the guarded resolver.
        url = f"http://localhost:{port}/jwks"
        r.want({url: Want()})
        obj = objects(await r.step())[url]
        assert obj is not None and obj.spec["jwks"] == KEY1, obj.spec
    finally:
        await r.aclose()

    async def link_local(self: object, host: str, port: int = 0, family: object = None) -> Any:
        return [{"hostname": host, "host": "169.254.169.254", "port": port, "family": 2,
                 "proto": 0, "flags": 0}]  # fmt: skip

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", link_local)
    monkeypatch.setattr(aiohttp.DefaultResolver, "resolve", link_local)
    r = JwksResolver(clock=Clock())
    try:
        url = f"http://metadata.example:{port}/jwks"
        r.want({url: Want()})
        obj = objects(await r.step())[url]
        assert obj is not None and "link-local" in obj.spec["error"], obj.spec
    finally:
        await r.aclose()


async def test_blocked_cidrs_refuse_literals_and_names(idp: Idp) -> None:
    port = idp.base.rsplit(":", 1)[1]
    settings = JwksSettings(blocked_cidrs=parse_cidrs("10.0.0.0/8, 127.0.0.0/8"))
    r = JwksResolver(settings, clock=Clock())
    try:
        urls = [idp.base + "/jwks", f"http://localhost:{port}/jwks"]
        r.want({u: Want() for u in urls})
        got = objects(await r.step())
        for u in urls:
            obj = got[u]
            assert obj is not None and "blocked range 127.0.0.0/8" in obj.spec["error"], u
        assert idp.hits == 0
    finally:
        await r.aclose()
    with pytest.raises(ValueError, match="'nope' is not a CIDR range"):
        parse_cidrs("10.0.0.0/8,nope")
