"""Operator tools against a running xdsd and real Envoy: status, NACK visibility,
validate, translate --diff, JSON logs."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.meshgen import service, write_docs
from tests.test_admin_cli import EXAMPLE, fetch, needs_envoy, run_cli, settings
from xdsd.app import XdsdApp
from xdsd.client import fetch_status, status_table
from xdsd.demo import EnvoyProcess, free_port, poll

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "istio"


@needs_envoy
async def test_status_and_a_real_nack_are_visible_everywhere(tmp_path: Path) -> None:
    """Envoy cannot bind a listener (its port is taken): it NACKs the LDS update, and
    the rejection shows in syncz, metrics, the xDS syncz query and `xdsd status`."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    write_docs(tmp_path / "svc.yaml", [service("web", "shop", [("http", port)])])
    node = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
    meta = {"NAMESPACE": "shop", "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0"}
    try:
        async with (
            XdsdApp(settings(tmp_path)) as app,
            EnvoyProcess(node, meta, xds_port=app.xds_port) as envoy,
        ):

            async def lds_rejected() -> bool:
                return app.syncz()[0]["types"]["lds"]["status"] == "ERROR"

            await poll(lds_rejected, timeout=30, what="Envoy's LDS NACK recorded")
            lds = app.syncz()[0]["types"]["lds"]
            assert "bind" in lds["last_nack"]["error"].lower() or str(port) in str(lds)
            assert await envoy.rejected_updates() >= 1

            _, metrics = await fetch(app.admin_port, "/metrics")
            assert 'pilot_total_xds_rejects_total{type="lds"} 1.0' in metrics

            rows = await fetch_status(f"127.0.0.1:{app.xds_port}")
            assert [r.proxy for r in rows] == ["client-0.shop"]  # the query itself is not listed
            assert rows[0].types[LDS] == "ERROR" and rows[0].types[CDS] == "SYNCED"
            assert rows[0].version == "1.24.0"
            table = status_table(rows)
            assert "client-0.shop" in table and "ERROR" in table and "lds rejected" in table

            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "xdsd",
                "status",
                "--xds-address",
                f"127.0.0.1:{app.xds_port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, stderr.decode()
            header, line = stdout.decode().splitlines()[:2]
            assert header.split()[:7] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS"]
            assert line.split()[:4] == ["client-0.shop", "Kubernetes", "SYNCED", "ERROR"]
    finally:
        taken.close()


async def test_config_dump_query_over_xds(tmp_path: Path) -> None:
    """istio.io/debug/config_dump with a proxy id returns that proxy's dump sections."""
    import grpc
    from envoy.admin.v3 import config_dump_shared_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    shutil.copytree(EXAMPLE, tmp_path / "mesh")
    async with XdsdApp(settings(tmp_path / "mesh")) as app:
        await app.ready.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            proxy = stub.StreamAggregatedResources()
            req = discovery_pb2.DiscoveryRequest(type_url=CDS)
            req.node.id = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
            await proxy.write(req)
            await proxy.read()
            debug = stub.StreamAggregatedResources()
            q = discovery_pb2.DiscoveryRequest(
                type_url="istio.io/debug/config_dump", resource_names=["client-0.shop"]
            )
            q.node.id = "sidecar~127.0.0.1~istioctl.default~default.svc.cluster.local"
            await debug.write(q)
            resp = await debug.read()
            proxy.cancel()
            debug.cancel()
    types = [r.type_url.rsplit(".", 1)[1] for r in resp.resources]
    assert types[:2] == ["ClustersConfigDump", "EndpointsConfigDump"]
    clusters = config_dump_shared_pb2.ClustersConfigDump()
    resp.resources[0].Unpack(clusters)
    assert len(clusters.dynamic_active_clusters) > 3


def test_validate_reports_exact_paths_and_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
        "spec:\n  ports:\n  - {name: http, port: 70000}\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: ext}\nspec:\n  hosts: [a.example.com]\n  resolution: SOMETIMES\n"
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n"
    )
    (tmp_path / "syntax.yaml").write_text("kind: Service\nmetadata: {name: x\n")
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 1
    out = result.stdout
    assert "bad.yaml#0: Service shop/web at spec.ports[0].port" in out
    assert "bad.yaml#1: ServiceEntry default/ext at spec.resolution" in out
    assert "syntax.yaml" in out and "line" in out
    good = run_cli("validate", str(EXAMPLE))
    assert good.returncode == 0, good.stdout


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_validate_accepts_the_istio_corpus() -> None:
    result = run_cli("validate", "--quiet", str(CORPUS / "bookinfo"), str(CORPUS / "config"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_translate_diff_names_what_changes(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(EXAMPLE, old)
    shutil.copytree(EXAMPLE, new)
    write_docs(new / "more.yaml", [service("extra", "shop", [("http", 9999)])])
    node = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
    result = run_cli("translate", "--diff", str(old), str(new), "--node-id", node)
    assert result.returncode == 0, result.stderr
    assert "+ CDS outbound|9999||extra.shop.svc.cluster.local" in result.stdout
    assert "+ RDS 9999" in result.stdout
    same = run_cli("translate", "--diff", str(old), str(old), "--node-id", node)
    assert same.stdout.strip() == "no changes for this proxy"


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "mesh")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xdsd",
            "serve",
            "--config-dir",
            str(tmp_path / "mesh"),
            "--xds-port",
            str(free_port()),
            "--admin-port",
            "-1",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        records = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            records.append(json.loads(line))
            if "initial config loaded" in records[-1]["msg"]:
                break
        assert any("initial config loaded" in r["msg"] for r in records), records
        assert {"time", "level", "logger", "msg"} <= records[-1].keys()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
