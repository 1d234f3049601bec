"""xdsd in the Kubernetes mode against test API servers (no Envoy): readiness,
remote clusters coming and going, stale clusters, sync timeout, debug output,
metrics, the command line."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import (
    cluster_state,
    endpoint_slice,
    endpoints_of,
    established_connections,
    kube_settings,
    metric,
    namespace,
    node,
    workload,
)
from xdsd import cli
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import poll

NS = "shop"
HOST = f"reviews.{NS}.svc.cluster.local"


@pytest.fixture
async def main() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        api.apply(namespace(NS))
        api.apply(namespace("istio-system"))
        api.apply(node("m1", "eu", "eu-1"))
        workload(
            api,
            svc="reviews",
            ns=NS,
            port_name="http",
            port=9080,
            pods=[("reviews-a", "127.0.0.11", "m1")],
        )
        yield api


@pytest.fixture
async def west() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(token="west-token", bookmark_interval=0.5) as api:
        api.apply(node("w1", "us", "us-2"))
        workload(
            api,
            svc="reviews",
            ns=NS,
            port_name="http",
            port=9080,
            pods=[("reviews-b", "127.0.0.12", "w1")],
        )
        yield api


def client_tasks() -> list[asyncio.Task[object]]:
    """Tasks of this process but the test API servers' request handlers."""
    return [t for t in asyncio.all_tasks() if "RequestHandler" not in repr(t.get_coro())]


async def ready(app: XdsdApp, timeout: float = 15) -> None:
    await asyncio.wait_for(app.ready.wait(), timeout)


async def test_config_and_remote_cluster_merged(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    main.apply(west.remote_secret("west"))
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        await ready(app)
        # The readiness gate waited for the remote cluster (it synced in time).
        assert endpoints_of(app, HOST) == {"127.0.0.11:9080": "main", "127.0.0.12:9080": "west"}
        (svc,) = [s for s in app.registryz() if s["hostname"] == HOST]
        assert svc["clusters"] == ["main", "west"]
        eps = {e["address"]: e for e in svc["ports"][0]["endpoints"]}
        assert eps["127.0.0.11:9080"]["locality"] == "eu/eu-1"
        assert eps["127.0.0.12:9080"]["locality"] == "us/us-2"

        z = app.clusterz()
        assert z["mode"] == "kubernetes" and z["config_cluster"] == "main"
        assert [(c["cluster"], c["role"], c["state"], c["stale"]) for c in z["clusters"]] == [
            ("main", "config", "synced", False),
            ("west", "remote", "synced", False),
        ]
        assert z["remote_secrets"]["synced"] and z["remote_secrets"]["problems"] == []
        # No credentials in the debug output.
        assert "west-token" not in str(z) and "main-token" not in str(z)

        for cid in ("main", "west"):
            assert metric(app, "xdsd_cluster_synced", cluster=cid) == 1.0
            assert metric(app, "xdsd_cluster_stale", cluster=cid) == 0.0
        assert metric(app, "xdsd_cluster_objects", cluster="west") == 4.0  # svc, pod, slice, node

        # Served over HTTP too.
        async with ClientSession() as s:
            base = f"http://127.0.0.1:{app.admin_port}"
            async with s.get(f"{base}/debug/clusterz") as r:
                assert r.status == 200
                assert [c["cluster"] for c in (await r.json())["clusters"]] == ["main", "west"]
            async with s.get(f"{base}/metrics") as r:
                assert 'xdsd_cluster_stale{cluster="west"} 0.0' in await r.text()


async def test_readiness_waits_for_the_config_cluster(tmp_path: Path, main: KubeApiServer) -> None:
    await main.pause()
    async with XdsdApp(kube_settings(tmp_path, main)) as app:

        async def unreachable() -> bool:
            st = cluster_state(app, "main")
            return st is not None and st["state"] == "unreachable"

        await poll(unreachable, timeout=10, what="main unreachable")
        assert not app.ready.is_set()
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{app.admin_port}/ready") as r:
            assert r.status == 503
        await main.resume()
        await ready(app)
        assert endpoints_of(app, HOST) == {"127.0.0.11:9080": "main"}


async def test_a_slow_remote_cluster_does_not_hold_readiness(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xdsd")
    main.apply(west.remote_secret("west"))
    await west.pause()
    settings = kube_settings(tmp_path, main, remote_sync_timeout=1.0, sync_progress_interval=0.2)
    async with XdsdApp(settings) as app:
        await ready(app, timeout=10)
        assert endpoints_of(app, HOST) == {"127.0.0.11:9080": "main"}
        st = cluster_state(app, "west")
        assert st is not None and st["sync_timed_out"] and not st["synced"]
        assert not st["stale"]  # nothing of it is served
        # (0/2 when even the config cluster took longer than the timeout to sync)
        assert any(re.search(r"synced [01]/2 clusters", r.getMessage()) for r in caplog.records)
        assert any("has not synced within" in r.getMessage() for r in caplog.records)

        # When it comes back, its endpoints come in by themselves.
        pushes = app.push_status()["pushes"]
        await west.resume()

        async def west_in() -> bool:
            return endpoints_of(app, HOST).get("127.0.0.12:9080") == "west"

        await poll(west_in, timeout=10, what="west endpoints")
        assert app.push_status()["pushes"] > pushes


async def test_remote_clusters_come_and_go_without_leaks(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        await ready(app)
        baseline_tasks = len(client_tasks())
        for round_ in range(3):
            main.apply(west.remote_secret("west"))

            async def west_in() -> bool:
                return "127.0.0.12:9080" in endpoints_of(app, HOST)

            await poll(west_in, timeout=10, what=f"west added (round {round_})")
            assert west.watches() and established_connections(west.port) > 0
            main.delete("Secret", "istio-system", "istio-remote-secret-west")

            async def west_gone() -> bool:
                return (
                    endpoints_of(app, HOST) == {"127.0.0.11:9080": "main"}
                    and not west.watches()
                    and established_connections(west.port) == 0
                    and cluster_state(app, "west") is None
                )

            await poll(west_gone, timeout=10, what=f"west removed (round {round_})")

        async def tasks_back() -> bool:
            return len(client_tasks()) <= baseline_tasks

        await poll(tasks_back, timeout=5, what=f"no leaked tasks: {client_tasks()}")
        assert not [t for t in client_tasks() if "west" in t.get_name()]
        assert metric(app, "xdsd_cluster_synced", cluster="west") is None


async def test_rotated_remote_secret_reconnects_keeping_endpoints(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    main.apply(west.remote_secret("west"))
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        await ready(app)
        pushes = app.push_status()["pushes"]
        old_watches = west.count("watch")
        connections = established_connections(west.port)
        west.set_token("west-token-2", keep_old=False)
        main.apply(west.remote_secret("west", token="west-token-2"))

        async def reconnected() -> bool:
            st = cluster_state(app, "west")
            return (
                west.count("watch") > old_watches
                and len(west.watches()) >= 4
                and st is not None
                and st["state"] == "synced"
            )

        await poll(reconnected, timeout=10, what="west reconnected with the new token")
        assert endpoints_of(app, HOST)["127.0.0.12:9080"] == "west"
        # Nothing changed in the cluster: nothing is pushed.
        assert app.push_status()["pushes"] == pushes
        # The old client's connections are closed (a leak would add one per watch).
        assert established_connections(west.port) < connections + len(west.watches())


async def test_unreachable_remote_is_stale_and_keeps_its_endpoints(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    main.apply(west.remote_secret("west"))
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        await ready(app)
        pushes = app.push_status()["pushes"]
        await west.pause()

        async def stale() -> bool:
            st = cluster_state(app, "west")
            return st is not None and st["stale"] and st["state"] == "unreachable"

        await poll(stale, timeout=10, what="west stale")
        assert metric(app, "xdsd_cluster_stale", cluster="west") == 1.0
        assert metric(app, "xdsd_cluster_synced", cluster="west") == 0.0
        assert endpoints_of(app, HOST) == {"127.0.0.11:9080": "main", "127.0.0.12:9080": "west"}
        (svc,) = [s for s in app.registryz() if s["hostname"] == HOST]
        assert {e["address"]: e["stale"] for e in svc["ports"][0]["endpoints"]} == {
            "127.0.0.11:9080": False,
            "127.0.0.12:9080": True,
        }
        await west.resume()

        async def fresh() -> bool:
            st = cluster_state(app, "west")
            return st is not None and not st["stale"] and st["state"] == "synced"

        await poll(fresh, timeout=10, what="west synced again")
        assert app.push_status()["pushes"] == pushes
        assert metric(app, "xdsd_cluster_stale", cluster="west") == 0.0


async def test_remote_clusters_from_a_folder_of_kubeconfigs(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    folder = tmp_path / "remotes"
    folder.mkdir()
    settings = kube_settings(tmp_path, main, remote_secrets_dir=folder)
    async with XdsdApp(settings) as app:
        await ready(app)
        assert endpoints_of(app, HOST) == {"127.0.0.11:9080": "main"}
        (folder / "west.yaml").write_text(west.kubeconfig_yaml("west"))

        async def west_in() -> bool:
            return endpoints_of(app, HOST).get("127.0.0.12:9080") == "west"

        await poll(west_in, timeout=10, what="west from the folder")
        (folder / "west.yaml").unlink()

        async def west_gone() -> bool:
            return "127.0.0.12:9080" not in endpoints_of(app, HOST) and not west.watches()

        await poll(west_gone, timeout=10, what="west removed")


async def test_namespace_filter(tmp_path: Path, main: KubeApiServer) -> None:
    workload(
        main,
        svc="other",
        ns="elsewhere",
        port_name="http",
        port=80,
        pods=[("other-a", "127.0.0.21", "m1")],
    )
    settings = kube_settings(tmp_path, main, namespaces=frozenset({NS}))
    async with XdsdApp(settings) as app:
        await ready(app)
        assert [s["hostname"] for s in app.registryz()] == [HOST]


async def test_folder_mode_clusterz(tmp_path: Path) -> None:
    settings = AppSettings(config_dir=tmp_path, admin_port=-1)
    app = XdsdApp(settings)
    assert app.clusterz() == {"mode": "folder", "config_dir": str(tmp_path), "clusters": []}


def test_settings_need_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one config source"):
        AppSettings()
    with pytest.raises(ValueError, match="exactly one config source"):
        AppSettings(config_dir=tmp_path, kubeconfig=tmp_path / "k")


def test_bad_kubeconfig_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "kc.yaml"
    bad.write_text("clusters: []\nusers: [{name: u, user: {token: s3cret}}]\n")
    with pytest.raises(ValueError, match=r"kc\.yaml: not a usable kubeconfig") as e:
        XdsdApp(AppSettings(kubeconfig=bad))
    assert "s3cret" not in str(e.value)


def test_cli_serve_needs_a_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert cli.main(["serve"]) == 2
    assert "--kubeconfig" in capsys.readouterr().err
    assert cli.main(["serve", "--config-dir", str(tmp_path), "--kubeconfig", "x"]) == 2
    assert "exactly one config source" in capsys.readouterr().err
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert cli.main(["serve", "--admin-port", "-1"]) == 2
    assert "cannot read kubeconfig" in capsys.readouterr().err


async def test_endpoint_slice_changes_push_endpoints_only(
    tmp_path: Path, main: KubeApiServer, west: KubeApiServer
) -> None:
    main.apply(west.remote_secret("west"))
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        await ready(app)
        pushes = app.push_status()["pushes"]
        west.apply(
            endpoint_slice(
                "reviews-1",
                NS,
                "reviews",
                "http",
                9080,
                [("127.0.0.12", "reviews-b", "w1"), ("127.0.0.14", "gone", "w1")],
            )
        )

        async def pushed() -> bool:
            return app.push_status()["pushes"] > pushes

        await poll(pushed, timeout=10, what="a push")
        last = app.push_status()["last_push"]
        assert (last["kinds"], last["types"], last["reason"]) == (
            ["EndpointSlice"],
            "eds",
            "cluster west",
        )
        # The address without a Pod still gets its Node's locality, in west.
        (svc,) = [s for s in app.registryz() if s["hostname"] == HOST]
        eps = {e["address"]: e for e in svc["ports"][0]["endpoints"]}
        assert (eps["127.0.0.14:9080"]["cluster"], eps["127.0.0.14:9080"]["locality"]) == (
            "west",
            "us/us-2",
        )
