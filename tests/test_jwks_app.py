"""Fetched JWKS through the app: a RequestAuthentication's jwksUri is fetched from a
local server, inlined into the proxies' jwt_authn config, refreshed, and a failure is
a warning on the RequestAuthentication (configz, status) and a metric. Folder mode,
the Kubernetes mode (a relist keeps the fetched key sets), and `--workers` (the
supervisor fetches, every worker serves the key set, a restarted worker too)."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import yaml

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, namespace
from tests.test_admin_cli import settings
from tests.test_jwks_resolver import KEY1, KEY2, Idp, idp
from tests.test_translate_security import BASE, NS
from tests.test_workers import get_json, ready, workers
from xdsd import multicluster
from xdsd.app import XdsdApp
from xdsd.client import validate_paths
from xdsd.demo import poll
from xdsd.model.jwks import JWKS_KIND
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigChange
from xdsd.offline import load_snapshot
from xdsd.sources.jwks import JwksSettings
from xdsd.translate.jwt_authn import jwt_rules, local_jwks
from xdsd.workers import Supervisor, WorkerOptions

__all__ = ["idp"]  # the fixture


def request_authn(uri: str, name: str = "jwt") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"jwtRules": [{"issuer": "testing@secure.istio.io", "jwksUri": uri}]},
    }


def write(path: Path, *docs: dict[str, Any]) -> None:
    path.write_text(BASE + "---\n" + yaml.safe_dump_all(docs))


def inlined(snap: MeshSnapshot) -> str:
    (rule,) = jwt_rules(snap, [(NS, "jwt")])
    return local_jwks(snap, rule)


def problems(configz: dict[str, Any], label: str) -> list[str]:
    for o in configz["objects"]:
        if o["object"] == label:
            return [p["message"] for p in o["problems"]]
    raise AssertionError(f"{label} not in configz")


async def _true(value: bool) -> bool:
    return value


async def test_folder_mode_fetch_refresh_failure_warning(tmp_path: Path, idp: Idp) -> None:
    url = idp.base + "/jwks"
    write(tmp_path / "a.yaml", request_authn(url))
    s = dataclasses.replace(
        settings(tmp_path), jwks=JwksSettings(refresh_interval=0.2, retry_min=0.1)
    )
    async with XdsdApp(s) as app:
        await app.ready.wait()
        # Fetched before the gate opened: the first push already has the key set.
        assert inlined(app.snapshot) == KEY1
        assert [(j["url"], j["state"]) for j in app.configz()["jwks"]] == [(url, "ok")]

        # Rotated at the identity provider: the next refresh pushes the new keys.
        idp.body = KEY2
        await poll(lambda: _true(inlined(app.snapshot) == KEY2), timeout=10, what="KEY2")

        # Down: the last good key set stays, the RequestAuthentication gets a warning.
        idp.status = 503
        label = f"RequestAuthentication {NS}/jwt"

        async def warned() -> bool:
            return any("could not be fetched" in m for m in problems(app.configz(), label))

        await poll(warned, timeout=10, what="a warning on the RequestAuthentication")
        assert inlined(app.snapshot) == KEY2
        (msg,) = problems(app.configz(), label)
        assert "status 503" in msg and "fetched before" in msg
        assert app.registry.get_sample_value("xdsd_jwks_failing") == 1
        # Back: the warning goes.
        idp.status = 200

        async def clean() -> bool:
            return not problems(app.configz(), label)

        await poll(clean, timeout=10, what="the warning gone")

        # No longer named: the fetched object goes too.
        write(tmp_path / "a.yaml")

        async def forgotten() -> bool:
            return app.store.get(JWKS_KIND, "", url) is None

        await poll(forgotten, timeout=10, what="the fetched key set forgotten")


async def test_kube_mode_a_relist_keeps_fetched_key_sets(tmp_path: Path, idp: Idp) -> None:
    url = idp.base + "/jwks"
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        api.apply(namespace(NS))
        api.apply(request_authn(url))
        s = kube_settings(tmp_path, api, xds_port=0, admin_port=0)
        async with XdsdApp(s) as app:
            await app.ready.wait()
            assert inlined(app.snapshot) == KEY1  # fetched before the gate opened
            hits = idp.hits
            # Every resumed watch gets 410 Gone: each collection is listed again, as a
            # diff against what xdsd knows; the fetched key set is not the cluster's.
            lists = api.count("list")
            api.fail_next_watches(len(api.watches()), status=410)
            api.compact()
            api.drop_watches()
            await poll(lambda: _true(api.count("list") > lists), timeout=10, what="relist")
            assert app.store.get(JWKS_KIND, "", url) is not None
            # A full state after a new connection drops what it lacks, but not these.
            full = multicluster._as_resync(app.store, ConfigChange((), synced=True))
            assert not [f for f in full.files if f.source.startswith("jwks:")]
            assert not [f for f in app._as_resync(full).files if f.source.startswith("jwks:")]
            assert inlined(app.snapshot) == KEY1 and idp.hits == hits


async def test_workers_serve_what_the_supervisor_fetched(tmp_path: Path, idp: Idp) -> None:
    url = idp.base + "/jwks"
    write(tmp_path / "a.yaml", request_authn(url))
    async with Supervisor(settings(tmp_path), WorkerOptions(workers=2)) as sup:
        await poll(lambda: ready(sup.admin_port), timeout=30, what="ready")

        async def every_worker_has(kid: str) -> bool:
            for w in await workers(sup.admin_port):
                configz = await get_json(w["admin_port"], "/debug/configz")
                if [(j["url"], j["state"], j["key_ids"]) for j in configz["jwks"]] != [
                    (url, "ok", [kid])
                ]:
                    return False
            return True

        await poll(lambda: every_worker_has("one"), timeout=30, what="fetched")
        assert idp.hits == 1  # once, by the supervisor, whatever the number of workers
        old = {w["worker"]: w["pid"] for w in await workers(sup.admin_port)}
        os.kill(old[0], signal.SIGKILL)

        async def restarted() -> bool:
            w = (await workers(sup.admin_port))[0]
            return bool(w["pid"] != old[0] and w["ready"])

        await poll(restarted, timeout=30, what="worker 0 restarted")
        assert await every_worker_has("one")
        assert idp.hits == 1


async def test_validate_and_translate_can_fetch_once(tmp_path: Path, idp: Idp) -> None:
    good, down = idp.base + "/jwks", "http://127.0.0.1:1/jwks"
    write(tmp_path / "a.yaml", request_authn(good), request_authn(down, name="down"))
    # Offline by default: nothing fetched, nothing to say about it.
    assert not [p for p in await validate_paths([tmp_path]) if "JWKS" in p.message]
    found = [p for p in await validate_paths([tmp_path], fetch_jwks=True) if "JWKS" in p.message]
    assert [(p.severity, p.object, p.path) for p in found] == [
        ("warning", f"RequestAuthentication {NS}/down", "spec.jwtRules[0].jwksUri")
    ]
    assert "could not be fetched" in found[0].message
    snap = await load_snapshot(tmp_path, fetch_jwks=True)
    assert inlined(snap) == KEY1
    assert inlined(await load_snapshot(tmp_path)) != KEY1


async def test_write_status_shows_a_fetch_failure_on_the_object(tmp_path: Path, idp: Idp) -> None:
    url = idp.base + "/jwks"
    idp.status = 503
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        api.apply(namespace(NS))
        api.apply(request_authn(url))
        s = dataclasses.replace(
            kube_settings(tmp_path, api, write_status=True, status_delay=0.05),
            jwks=JwksSettings(retry_min=0.1),
        )
        async with XdsdApp(s) as app:
            await app.ready.wait()

            def status() -> dict[str, Any]:
                obj = api.get("RequestAuthentication", NS, "jwt")
                assert obj is not None
                return dict(obj.get("status") or {})

            async def warned() -> bool:
                return any(
                    "could not be fetched" in m["message"]
                    for m in status().get("validationMessages") or ()
                )

            await poll(warned, timeout=10, what="a WARNING in the object's status")
            (msg,) = status()["validationMessages"]
            assert msg["level"] == "WARNING"
            assert msg["message"].startswith("spec.jwtRules[0].jwksUri: JWKS from ")
            assert "status 503" in msg["message"]
            # Fetched at last: the warning goes from the status.
            idp.status = 200

            async def cleared() -> bool:
                return not status().get("validationMessages")

            await poll(cleared, timeout=10, what="the warning gone from the status")
            assert inlined(app.snapshot) == KEY1


async def test_kube_workers_serve_what_the_supervisor_fetched(tmp_path: Path, idp: Idp) -> None:
    url = idp.base + "/jwks"
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        api.apply(namespace(NS))
        api.apply(request_authn(url))
        settings_ = kube_settings(
            tmp_path, api, xds_port=0, admin_port=0, jwks=JwksSettings(refresh_interval=0.3)
        )
        async with Supervisor(settings_, WorkerOptions(workers=2)) as sup:
            await poll(lambda: ready(sup.admin_port), timeout=30, what="ready")

            async def every_worker_has(kid: str) -> bool:
                for w in await workers(sup.admin_port):
                    configz = await get_json(w["admin_port"], "/debug/configz")
                    got = [(j["url"], j["state"], j["key_ids"]) for j in configz["jwks"]]
                    if got != [(url, "ok", [kid])]:
                        return False
                return True

            await poll(lambda: every_worker_has("one"), timeout=30, what="fetched, in workers")
            # Rotated keys, found by the supervisor's refresh, reach every worker.
            idp.body = KEY2
            await poll(lambda: every_worker_has("two"), timeout=30, what="rotated, in workers")
