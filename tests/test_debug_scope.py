"""Who sees which proxies in istio.io/debug answers (istiod's StatusGen rule): a caller
authenticated in the root namespace, or an unauthenticated stream (plaintext port),
sees every proxy; a caller of another namespace only that namespace's, in syncz and
in config_dump. Real ADS streams on loopback; istioctl's view: test_istio_proxy.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import ca_settings
from tests.meshgen import service, write_docs
from tests.test_istio_proxy import proxy_stream
from xdsd.app import AppSettings, XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.client import fetch_status
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


async def test_xdsd_status_over_tls_sees_what_its_tokens_namespace_may(tmp_path: Path) -> None:
    """`xdsd status` presents itself as istioctl does (namespace istio-system): with a
    token of istio-system it lists every proxy; with --namespace shop and a token of
    shop, only shop's; a token of another namespace than the one given is denied."""
    write_docs(tmp_path / "mesh.yaml", [service("reviews", "shop", [("http", 9080)])])
    certs = ensure_dev_certs(tmp_path / "certs", ["xdsd.test", "127.0.0.1"])
    async with KubeApiServer(token="api-token") as api:
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        api.add_token("root-t", username="system:serviceaccount:istio-system:default")
        api.add_token("shop-t", username="system:serviceaccount:shop:default")
        settings = ca_settings(
            tmp_path,
            certs,
            tmp_path / "kubeconfig",
            GrpcSettings(
                port=0,
                tls_port=0,
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                shutdown_grace_s=0.2,
            ),
        )
        async with (
            XdsdApp(settings) as app,
            proxy_stream(app.xds_port, "cart-0", "shop"),
            proxy_stream(app.xds_port, "web-0", "other"),
        ):
            tls = {"ca": certs.root_cert.read_bytes(), "server_name": "xdsd.test"}
            address = f"127.0.0.1:{app.tls_port}"

            async def both() -> bool:
                rows = await fetch_status(address, 5, token="root-t", **tls)
                return {r.proxy for r in rows} == {"cart-0.shop", "web-0.other"}

            await poll(both, timeout=10, what="both proxies listed for istio-system")
            rows = await fetch_status(address, 5, token="shop-t", namespace="shop", **tls)
            assert [r.proxy for r in rows] == ["cart-0.shop"]
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await fetch_status(address, 5, token="shop-t", **tls)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
