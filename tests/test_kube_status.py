"""`serve --write-status`: validation results written into Istio objects' status.

Against the test API server with the real client: an unsupported field gives
a WARNING validation message, a broken edit gives Reconciled False while the
last good version is served, fixing it gives Reconciled True, and a status
write causes neither another write nor a push.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, namespace
from tests.meshgen import istio_config
from xdsd.app import XdsdApp
from xdsd.demo import poll
from xdsd.model.status import managed_part, object_status, status_patch
from xdsd.model.types import ConfigError, ConfigObject

NS = "shop"
VS = "reviews-route"
GOOD = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
UNSUPPORTED = {
    "hosts": ["reviews"],
    "http": [{"route": [{"destination": {"host": "reviews"}}], "bogusField": 1}],
}
BROKEN = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": 5}}]}]}


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(token="t", bookmark_interval=0.5) as server:
        server.apply(namespace(NS))
        yield server


def status_of(api: KubeApiServer, name: str = VS) -> Mapping[str, Any]:
    obj = api.get("VirtualService", NS, name)
    assert obj is not None
    status: Mapping[str, Any] = obj.get("status") or {}
    return status


def reconciled(status: Mapping[str, Any]) -> Mapping[str, Any]:
    conds: list[Mapping[str, Any]] = list(status.get("conditions") or ())
    (cond,) = [c for c in conds if c["type"] == "Reconciled"]
    return cond


def patches(api: KubeApiServer) -> int:
    return api.count("patch", "virtualservices")


async def settled(api: KubeApiServer, app: XdsdApp) -> None:
    """No further status write or rebuild for a while (no write loop)."""
    writes, generation = patches(api), app.snapshot.generation
    await asyncio.sleep(1.0)
    assert patches(api) == writes
    assert app.snapshot.generation == generation


async def test_status_follows_validation_without_a_write_loop(
    tmp_path: Path, api: KubeApiServer
) -> None:
    api.apply(istio_config("VirtualService", VS, NS, UNSUPPORTED))
    settings = kube_settings(tmp_path, api, write_status=True, status_delay=0.05)
    async with XdsdApp(settings) as app:
        await asyncio.wait_for(app.ready.wait(), 15)

        # Accepted, with a WARNING naming the field that is not supported.
        async def warned() -> bool:
            return bool(status_of(api).get("validationMessages"))

        await poll(warned, timeout=10, what="status with a validation message")
        status = status_of(api)
        cond = reconciled(status)
        assert (cond["status"], cond["reason"]) == ("True", "Accepted")
        assert cond["lastTransitionTime"]
        assert status["observedGeneration"] == 1
        (msg,) = status["validationMessages"]
        assert msg["level"] == "WARNING"
        assert msg["type"]["code"] and msg["type"]["name"]
        assert msg["message"].startswith("spec.http[0].bogusField: ")
        await settled(api, app)
        assert patches(api) == 1
        first_time = cond["lastTransitionTime"]

        # A broken edit: Reconciled False with the error's path; the last good version is served.
        generation = app.snapshot.generation
        api.apply(istio_config("VirtualService", VS, NS, BROKEN))

        async def rejected() -> bool:
            return bool(reconciled(status_of(api))["status"] == "False")

        await poll(rejected, timeout=10, what="Reconciled False")
        status = status_of(api)
        cond = reconciled(status)
        assert cond["reason"] == "ServingLastGoodVersion"
        assert "spec.http[0].route[0].destination.host" in cond["message"]
        assert status["observedGeneration"] == 2
        assert any(
            m["level"] == "ERROR" and "destination.host" in m["message"]
            for m in status["validationMessages"]
        )
        served = app.store.get("VirtualService", NS, VS)
        assert isinstance(served, ConfigObject)
        assert served.spec["http"][0]["route"][0]["destination"]["host"] == "reviews"
        assert app.snapshot.generation == generation  # nothing served changed: no rebuild
        await settled(api, app)
        assert patches(api) == 2

        # Fixed: Reconciled True again, no messages left, a new transition time.
        api.apply(istio_config("VirtualService", VS, NS, GOOD))

        async def accepted() -> bool:
            s = status_of(api)
            return reconciled(s)["status"] == "True" and s.get("observedGeneration") == 3

        await poll(accepted, timeout=10, what="Reconciled True")
        status = status_of(api)
        assert "validationMessages" not in status
        assert reconciled(status)["reason"] == "Accepted"
        assert reconciled(status)["lastTransitionTime"] >= first_time
        await settled(api, app)
        assert patches(api) == 3
        served = app.store.get("VirtualService", NS, VS)
        assert isinstance(served, ConfigObject) and "bogusField" not in served.spec["http"][0]


async def test_object_broken_from_the_start_is_rejected(tmp_path: Path, api: KubeApiServer) -> None:
    api.apply(istio_config("VirtualService", "bad", NS, BROKEN))
    settings = kube_settings(tmp_path, api, write_status=True, status_delay=0.05)
    async with XdsdApp(settings) as app:
        await asyncio.wait_for(app.ready.wait(), 15)

        async def written() -> bool:
            return bool(status_of(api, "bad").get("conditions"))

        await poll(written, timeout=10, what="status written")
        cond = reconciled(status_of(api, "bad"))
        assert (cond["status"], cond["reason"]) == ("False", "Rejected")
        assert app.store.get("VirtualService", NS, "bad") is None
        # Status keys xdsd does not own are kept.
        api.patch("VirtualService", NS, "bad", {"status": {"other": "x"}})
        await settled(api, app)
        assert status_of(api, "bad")["other"] == "x"


async def test_no_status_writes_without_the_option(tmp_path: Path, api: KubeApiServer) -> None:
    api.apply(istio_config("VirtualService", VS, NS, UNSUPPORTED))
    async with XdsdApp(kube_settings(tmp_path, api, status_delay=0.05)) as app:
        await asyncio.wait_for(app.ready.wait(), 15)
        await asyncio.sleep(0.5)
        assert patches(api) == 0
        assert "status" not in (api.get("VirtualService", NS, VS) or {})


# -- the pure part -------------------------------------------------------------------------


def test_object_status_shapes() -> None:
    warn = ConfigError("c:x", "VirtualService a/b", "spec.x", "not supported yet", "warning")
    err = ConfigError("c:x", "VirtualService a/b", "spec.y", "must be a string")
    ok = object_status([], generation=4, served=True, now="T1")
    assert ok == {
        "conditions": [
            {
                "type": "Reconciled",
                "status": "True",
                "reason": "Accepted",
                "message": "accepted",
                "lastTransitionTime": "T1",
            }
        ],
        "observedGeneration": 4,
    }
    # Same condition status: the transition time stays.
    again = object_status([warn], generation=5, served=True, now="T2", previous=ok)
    assert again["conditions"][0]["lastTransitionTime"] == "T1"
    assert again["validationMessages"] == [
        {
            "level": "WARNING",
            "type": {"code": "XDS0001", "name": "NotSupported"},
            "message": "spec.x: not supported yet",
        }
    ]
    bad = object_status([warn, err], generation=6, served=False, now="T3", previous=again)
    cond = bad["conditions"][0]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == (
        "False",
        "Rejected",
        "T3",
    )
    assert cond["message"] == "spec.y: must be a string"
    assert managed_part({**bad, "other": 1}) == bad
    assert status_patch(ok)["status"]["validationMessages"] is None
