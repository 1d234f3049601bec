"""Who sees which proxies in istio.io/debug answers (istiod's StatusGen rule): a caller
authenticated in the root namespace, or an unauthenticated stream (plaintext port),
sees every proxy; a caller of another namespace only that namespace's, in syncz and
in config_dump. Real ADS streams on loopback; istioctl's view: test_istio_proxy.py."""

from __future__ import annotations

from pathlib import Path

from tests.meshgen import service, write_docs
from tests.test_istio_proxy import proxy_stream
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.auth import Caller
from xdsd.server.grpc_server import GrpcSettings


def caller(namespace: str) -> Caller:
    return Caller((f"spiffe://cluster.local/ns/{namespace}/sa/default",), "kubernetes token")


async def test_debug_answers_are_scoped_to_the_callers_namespace(tmp_path: Path) -> None:
    write_docs(tmp_path / "mesh.yaml", [service("reviews", "shop", [("http", 9080)])])
    settings = AppSettings(
        config_dir=tmp_path,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=-1,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )
    async with (
        XdsdApp(settings) as app,
        proxy_stream(app.xds_port, "cart-0", "shop"),
        proxy_stream(app.xds_port, "web-0", "other"),
    ):

        async def both() -> bool:
            return len(app.client_configs()) == 2

        await poll(both, timeout=10, what="both proxies connected")
        assert app.debug_scope(None) is None
        assert app.debug_scope(caller("istio-system")) is None
        shop = app.debug_scope(caller("shop"))
        assert shop == frozenset({"shop"})
        assert [r.name for r in app.client_configs(shop)] == ["cart-0.shop"]
        assert [r.name for r in app.client_configs(None)] == ["cart-0.shop", "web-0.other"]
        assert app.config_dump_resources("cart-0.shop", shop)
        assert app.config_dump_resources("web-0.other", shop) == []
        assert app.config_dump_resources("web-0.other", None)
