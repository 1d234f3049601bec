"""Admin/debug HTTP, bad config handling in a running xdsd, and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from envoy.config.core.v3 import base_pb2
from prometheus_client import CollectorRegistry

from tests.meshgen import pod, service, write_docs
from xdsd.admin.http import AdminServer
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import EnvoyProcess, envoy_binary, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.ads import proxy_version
from xdsd.server.grpc_server import GrpcSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mesh"
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary")


def settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


async def fetch(port: int, path: str) -> tuple[int, Any]:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        text = await r.text()
        if r.content_type == "application/json":
            return r.status, json.loads(text)
        return r.status, text


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    target = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, target)
    return target


@needs_envoy
async def test_debug_endpoints_describe_a_connected_proxy(config_dir: Path) -> None:
    meta = {"NAMESPACE": "shop", "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
    async with (
        XdsdApp(settings(config_dir)) as app,
        EnvoyProcess(NODE, meta, xds_port=app.xds_port) as envoy,
    ):
        await envoy.wait_ready()
        port = app.admin_port
        assert await fetch(port, "/ready") == (200, "ready\n")

        status, metrics = await fetch(port, "/metrics")
        assert status == 200
        assert 'pilot_xds{version="1.24.0"} 1.0' in metrics
        assert 'pilot_xds_pushes_total{type="cds"}' in metrics
        assert "pilot_services 5.0" in metrics

        status, syncz = await fetch(port, "/debug/syncz")
        assert status == 200 and syncz[0]["proxy"] == "client-0.shop"
        assert syncz[0]["types"]["cds"]["status"] == "SYNCED"

        status, dump = await fetch(port, "/debug/config_dump?proxyID=client-0.shop")
        assert status == 200
        clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
        names = {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]}
        assert "outbound|9080||reviews.shop.svc.cluster.local" in names
        # xdsd's view matches what Envoy itself reports.
        envoy_dump = await envoy.config_dump("dynamic_active_clusters")
        envoy_names = {c["cluster"]["name"] for c in envoy_dump["configs"]}
        assert envoy_names == names

        assert (await fetch(port, "/debug/config_dump"))[0] == 400
        assert (await fetch(port, "/debug/config_dump?proxyID=nobody.nowhere"))[0] == 404

        status, adsz = await fetch(port, "/debug/adsz")
        assert adsz[0]["protocol"] == "sotw" and "cds" in adsz[0]["watched"]

        status, registry = await fetch(port, "/debug/registryz")
        hosts = {s["hostname"] for s in registry}
        assert "reviews.shop.svc.cluster.local" in hosts
        assert "payments.example.com" in hosts


async def test_bad_objects_are_reported_and_the_rest_keeps_serving(config_dir: Path) -> None:
    async with XdsdApp(settings(config_dir)) as app:
        await app.ready.wait()
        port = app.admin_port
        good = app.snapshot.generation
        # A new file with a broken Service, and a good object turned bad.
        write_docs(
            config_dir / "broken.yaml",
            [
                service("bad", "shop", [("http", 9080)]) | {"spec": {"ports": [{"port": "x"}]}},
                service("extra", "shop", [("http", 9090)], selector={"app": "extra"}),
            ],
        )
        write_docs(
            config_dir / "services-override.yaml",
            [pod("extra-0", "shop", "127.0.0.61", {"app": "extra"})],
        )

        async def extra_served() -> bool:
            return any(s.name == "extra" for s in app.snapshot.services)

        await poll(extra_served, timeout=10, what="the good object next to a bad one")
        assert app.snapshot.generation > good

        _, configz = await fetch(port, "/debug/configz")
        rejected = {r["object"]: r["problems"] for r in configz["rejected"]}
        assert [
            (p["path"], p["source"].rsplit("/", 1)[1]) for p in rejected["Service shop/bad"]
        ] == [("spec.ports[0].port", "broken.yaml#0")]
        statuses = {o["object"]: o["status"] for o in configz["objects"]}
        assert statuses["Service shop/extra"] == "accepted"
        assert all(s["name"] != "bad" for s in (await fetch(port, "/debug/registryz"))[1])

        # Break a good object in place: its last good version stays served.
        text = (config_dir / "services.yaml").read_text()
        (config_dir / "services.yaml").write_text(text.replace("port: 9080", "port: -1", 1))

        async def reported() -> bool:
            return any("last good" in e.message for e in app.snapshot.errors)

        await poll(reported, timeout=10, what="last-good report")
        assert any(s.name == "frontend" for s in app.snapshot.services)
        _, configz = await fetch(port, "/debug/configz")
        statuses = {o["object"]: o["status"] for o in configz["objects"]}
        assert statuses["Service shop/frontend"] == "serving last good version"

        # Debug output is for loopback clients unless enabled.
        _, push = await fetch(port, "/debug/push_status")
        assert push["ready"] and push["pushes"] >= 1 and push["last_push"]["reason"]


async def test_ready_is_503_until_the_first_load() -> None:
    class NotReady:
        def is_ready(self) -> bool:
            return False

        def metrics_registry(self) -> CollectorRegistry:
            return CollectorRegistry()

        def __getattr__(self, name: str) -> Any:
            return lambda *a: []

    async with AdminServer(NotReady(), port=0) as admin:  # type: ignore[arg-type]
        status, body = await fetch(admin.port, "/ready")
    assert status == 503 and "not ready" in body


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd", *args], capture_output=True, text=True, timeout=60
    )


@needs_envoy
def test_bootstrap_is_valid_envoy_config(tmp_path: Path) -> None:
    for delta in (False, True):
        out = tmp_path / f"bootstrap-{delta}.json"
        args = ["bootstrap", "--node-id", NODE, "--metadata", '{"NAMESPACE": "shop"}']
        result = run_cli(*args, "--output-file", str(out), *(["--delta"] if delta else []))
        assert result.returncode == 0, result.stderr
        doc = json.loads(out.read_text())
        assert doc["node"]["id"] == NODE
        api = doc["dynamic_resources"]["ads_config"]["api_type"]
        assert api == ("DELTA_GRPC" if delta else "GRPC")
        binary = envoy_binary()
        assert binary is not None
        check = subprocess.run(
            [binary, "--mode", "validate", "-c", str(out), "--use-dynamic-base-id"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_bootstrap_rejects_bad_input() -> None:
    result = run_cli("bootstrap", "--node-id", NODE, "--xds-address", "host:notaport")
    assert result.returncode == 2 and "notaport" in result.stderr
    result = run_cli("bootstrap", "--node-id", NODE, "--metadata", "[1,2]")
    assert result.returncode != 0 and "JSON object" in result.stderr


def test_translate_prints_a_config_dump(config_dir: Path) -> None:
    result = run_cli("translate", "--config-dir", str(config_dir), "--node-id", NODE)
    assert result.returncode == 0, result.stderr
    dump = json.loads(result.stdout)
    types = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
    assert types == [
        "ClustersConfigDump",
        "EndpointsConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
        "SecretsConfigDump",
    ]
    listeners = dump["configs"][2]["dynamic_listeners"]
    assert {entry["name"] for entry in listeners} >= {"virtualOutbound", "virtualInbound"}


def test_translate_and_serve_name_bad_arguments(tmp_path: Path) -> None:
    result = run_cli("translate", "--config-dir", str(tmp_path / "nope"), "--node-id", NODE)
    assert result.returncode == 2 and "not a directory" in result.stderr
    result = run_cli("translate", "--config-dir", str(EXAMPLE), "--node-id", "just-a-name")
    assert result.returncode == 2 and "4 parts" in result.stderr
    result = run_cli("serve", "--config-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and "not a directory" in result.stderr
    for flag in ("--push-concurrency", "--workers"):
        result = run_cli("serve", "--config-dir", str(EXAMPLE), "--admin-port", "-1", flag, "0")
        assert result.returncode == 2 and f"{flag} must be at least 1" in result.stderr
    result = run_cli(
        "serve", "--config-dir", str(EXAMPLE), "--admin-port", "-1", "--gc-collect-interval", "-1"
    )
    assert result.returncode == 2 and "--gc-collect-interval must not be negative" in result.stderr


@needs_envoy
def test_demo_runs_the_bundled_example_through_envoy() -> None:
    """The README's first command, minus the install: every request is answered."""
    result = subprocess.run(
        [sys.executable, "-m", "xdsd", "demo", "--once", "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("GET ")]
    assert len(lines) == 6 and all("-> 200 " in line for line in lines), result.stdout
    assert "TCP stock-db.shop.svc.cluster.local:9306 -> 'stock-db" in result.stdout


def test_debug_is_for_loopback_clients_only() -> None:
    from xdsd.admin.http import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.8.0.3")
    assert not _loopback("10.0.0.7") and not _loopback("") and not _loopback(None)
    assert not _loopback("not-an-ip")


@needs_envoy
async def test_pilot_xds_names_a_version_for_a_plain_envoy(config_dir: Path) -> None:
    """No ISTIO_VERSION (plain Envoy): the label is Envoy's own build, never empty."""
    async with (
        XdsdApp(settings(config_dir)) as app,
        EnvoyProcess(NODE, {"NAMESPACE": "shop"}, xds_port=app.xds_port) as envoy,
    ):
        await envoy.wait_ready()
        _, metrics = await fetch(app.admin_port, "/metrics")
        lines = [line for line in metrics.splitlines() if line.startswith("pilot_xds{")]
        assert len(lines) == 1 and re.fullmatch(
            r'pilot_xds\{version="envoy-\d+\.\d+\.\d+"\} 1\.0', lines[0]
        ), lines
        # The bootstrap and the example's resources: nothing Envoy calls deprecated, and
        # a downstream connection limit (Envoy warns without one).
        log = envoy.log()
        assert "deprecated" not in log and "no configured limit" not in log, log


def test_pilot_xds_version_label() -> None:
    node = base_pb2.Node(id=NODE)
    assert proxy_version(node, {"ISTIO_VERSION": "1.24.0"}) == "1.24.0"
    assert proxy_version(node, {}) == "unknown"
    node.user_agent_name = "envoy"
    node.user_agent_build_version.version.major_number = 1
    node.user_agent_build_version.version.minor_number = 40
    assert proxy_version(node, {"ISTIO_VERSION": ""}) == "envoy-1.40.0"
