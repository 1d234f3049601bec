"""RemoteSecrets: remote clusters from istio/multiCluster Secrets (test API server) or a folder."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.apiserver import KubeApiServer
from xdsd.model.store import ConfigStore
from xdsd.sources.kube import (
    Backoff,
    ClusterAdded,
    ClusterRemoved,
    ClusterSource,
    ClusterSpec,
    ClusterUpdated,
    RemoteEvent,
    RemoteSecrets,
)
from xdsd.sources.kube.remote import parse_kubeconfig

FAST = Backoff(initial=0.02, maximum=0.2, jitter=0.1)
CONFIG_TOKEN = "config-cluster-token"

Obj = dict[str, Any]


async def until(pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


class Events:
    def __init__(self, remotes: RemoteSecrets) -> None:
        self.remotes = remotes
        self.events: list[RemoteEvent] = []
        self._task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for ev in self.remotes.changes():
            self.events.append(ev)

    async def __aenter__(self) -> Events:
        self._task = asyncio.create_task(self._consume())
        await until(lambda: self.remotes.synced, what="the initial remotes")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.remotes.aclose()

    def brief(self, since: int = 0) -> list[tuple[str, str]]:
        out = []
        for ev in self.events[since:]:
            if isinstance(ev, ClusterRemoved):
                out.append(("removed", ev.cluster_id))
            else:
                verb = "added" if isinstance(ev, ClusterAdded) else "updated"
                out.append((verb, ev.spec.cluster_id))
        return out

    async def wait(self, n: int) -> None:
        await until(lambda: len(self.events) >= n, what=f"{n} events (have {self.brief()})")


def kubeconfig_yaml(server: str, token: str, name: str = "c") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": server}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def remote_secret(name: str, data: dict[str, str], ns: str = "istio-system", **labels: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels or {"istio/multiCluster": "true"},
        },
        "type": "Opaque",
        "data": {k: b64(v) for k, v in data.items()},
    }


def secrets_source(api: KubeApiServer, **kw: Any) -> RemoteSecrets:
    kw.setdefault("backoff", FAST)
    return RemoteSecrets(ClusterSpec("Kubernetes", api.kubeconfig("config")), **kw)


# -- Secrets --------------------------------------------------------------------------------


async def test_initial_remote_secrets() -> None:
    async with KubeApiServer(token=CONFIG_TOKEN) as api:
        api.apply(
            remote_secret(
                "istio-remote-secret-west", {"west": kubeconfig_yaml("https://w:6443", "tw")}
            )
        )
        api.apply(api.remote_secret("east"))  # istioctl's shape, pointing at this server
        api.apply(remote_secret("unlabelled", {"x": kubeconfig_yaml("https://x", "t")}, app="x"))
        api.apply(remote_secret("elsewhere", {"y": kubeconfig_yaml("https://y", "t")}, ns="other"))
        async with Events(secrets_source(api)) as ev:
            assert ev.brief() == [("added", "east"), ("added", "west")]
            east = ev.events[0]
            assert isinstance(east, ClusterAdded)
            assert east.spec.role == "remote" and east.spec.server == api.url
            assert east.spec.namespaces is None
            assert set(ev.remotes.clusters()) == {"east", "west"}
            assert ev.remotes.problems() == ()
            assert ev.remotes.status().state == "synced"
            await api.wait_watches(1, "secrets")
            (watch,) = api.watches("secrets")
            assert watch.namespace == "istio-system"
            assert watch.label_selector == "istio/multiCluster=true"


async def test_remote_secrets_of_another_revision_are_not_ours() -> None:
    """--revision blue: a Secret labelled istio.io/rev=green names green's remote cluster;
    unlabelled and blue ones are ours; relabelling one moves it."""
    mc = {"istio/multiCluster": "true"}
    async with KubeApiServer(token=CONFIG_TOKEN) as api:
        cfg = {"blue": "https://b:6443", "green": "https://g:6443", "any": "https://a:6443"}
        for name, url in cfg.items():
            labels = {**mc, "istio.io/rev": name} if name != "any" else mc
            secret = remote_secret(f"remote-{name}", {name: kubeconfig_yaml(url, "t")})
            secret["metadata"]["labels"] = labels
            api.apply(secret)
        async with Events(secrets_source(api, revision="blue")) as ev:
            assert set(ev.remotes.clusters()) == {"any", "blue"}
            assert all(spec.revision == "blue" for spec in ev.remotes.clusters().values())
            moved = remote_secret("remote-any", {"any": kubeconfig_yaml(cfg["any"], "t")})
            moved["metadata"]["labels"] = {**mc, "istio.io/rev": "green"}
            api.apply(moved)
            await until(lambda: set(ev.remotes.clusters()) == {"blue"}, what="relabelled away")


async def test_add_rotate_and_delete_at_runtime() -> None:
    async with (
        KubeApiServer(token=CONFIG_TOKEN) as api,
        Events(secrets_source(api, namespaces=frozenset({"shop"}))) as ev,
    ):
        assert ev.events == []
        await api.wait_watches(1, "secrets")
        api.apply(remote_secret("rs-1", {"east": kubeconfig_yaml("https://e", "t1")}))
        await ev.wait(1)
        added = ev.events[0]
        assert isinstance(added, ClusterAdded) and added.spec.namespaces == frozenset({"shop"})
        # Rotation: the token changes -> Updated with the new kubeconfig.
        api.apply(remote_secret("rs-1", {"east": kubeconfig_yaml("https://e", "t2")}))
        await ev.wait(2)
        updated = ev.events[1]
        assert isinstance(updated, ClusterUpdated)
        assert updated.spec.kubeconfig is not None
        assert updated.spec.kubeconfig["users"][0]["user"]["token"] == "t2"
        # A second key in the same Secret, and an annotation-only edit (no event).
        secret = remote_secret(
            "rs-1",
            {
                "east": kubeconfig_yaml("https://e", "t2"),
                "north": kubeconfig_yaml("https://n", "t"),
            },
        )
        api.apply(secret)
        await ev.wait(3)
        secret["metadata"]["annotations"] = {"note": "x"}
        api.apply(secret)
        # The key goes away, then the Secret.
        api.apply(remote_secret("rs-1", {"north": kubeconfig_yaml("https://n", "t")}))
        await ev.wait(4)
        api.delete("Secret", "istio-system", "rs-1")
        await ev.wait(5)
        assert ev.brief() == [
            ("added", "east"),
            ("updated", "east"),
            ("added", "north"),
            ("removed", "east"),
            ("removed", "north"),
        ]
        # Losing the label is a removal too.
        api.apply(remote_secret("rs-2", {"west": kubeconfig_yaml("https://w", "t")}))
        await ev.wait(6)
        api.apply(remote_secret("rs-2", {"west": kubeconfig_yaml("https://w", "t")}, app="x"))
        await ev.wait(7)
        assert ev.brief(5) == [("added", "west"), ("removed", "west")]
        assert ev.remotes.clusters() == {}


async def test_malformed_kubeconfigs_are_reported_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="xdsd")
    secret_token = "very-secret-token-123"
    bad_yaml = f"token: {secret_token}\n  : [unclosed"
    no_context = yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
            "users": [{"name": "c", "user": {"token": secret_token}}],
        }
    )
    async with KubeApiServer(token=CONFIG_TOKEN) as api:
        api.apply(remote_secret("good", {"east": kubeconfig_yaml("https://e", secret_token)}))
        api.apply(remote_secret("bad-yaml", {"broken": bad_yaml}))
        api.apply(remote_secret("bad-config", {"nocontext": no_context}))
        bad_b64 = remote_secret("bad-b64", {})
        bad_b64["data"] = {"notb64": "!!not base64!!"}
        api.apply(bad_b64)
        async with Events(secrets_source(api)) as ev:
            assert ev.brief() == [("added", "east")]
            problems = {p.cluster_id: p for p in ev.remotes.problems()}
            assert set(problems) == {"broken", "nocontext", "notb64"}
            assert problems["broken"].source == "secret istio-system/bad-yaml"
            assert "not valid YAML" in problems["broken"].reason
            assert "no contexts" in problems["nocontext"].reason
            assert "base64" in problems["notb64"].reason
            # A running cluster rotated to a broken kubeconfig keeps its last good one.
            api.apply(remote_secret("good", {"east": bad_yaml}))
            await until(lambda: any(p.cluster_id == "east" for p in ev.remotes.problems()))
            (east,) = [p for p in ev.remotes.problems() if p.cluster_id == "east"]
            assert "last good" in east.reason
            assert "east" in ev.remotes.clusters() and len(ev.events) == 1
            # Fixed: Updated.
            api.apply(remote_secret("good", {"east": kubeconfig_yaml("https://e2", secret_token)}))
            await ev.wait(2)
            assert ev.brief(1) == [("updated", "east")]
            assert not any(p.cluster_id == "east" for p in ev.remotes.problems())
        assert "broken" in caplog.text and "nocontext" in caplog.text
        for p in problems.values():
            assert secret_token not in p.reason
        assert secret_token not in caplog.text
        assert b64(secret_token) not in caplog.text


async def test_duplicates_and_the_local_cluster_id_are_refused() -> None:
    async with KubeApiServer(token=CONFIG_TOKEN) as api:
        api.apply(remote_secret("a-first", {"east": kubeconfig_yaml("https://e1", "t")}))
        api.apply(remote_secret("b-second", {"east": kubeconfig_yaml("https://e2", "t")}))
        api.apply(remote_secret("self", {"Kubernetes": kubeconfig_yaml("https://me", "t")}))
        async with Events(secrets_source(api, local_cluster_id="Kubernetes")) as ev:
            assert ev.brief() == [("added", "east")]
            east = ev.events[0]
            assert isinstance(east, ClusterAdded) and east.spec.server == "https://e1"
            reasons = sorted((p.cluster_id, p.source, p.reason) for p in ev.remotes.problems())
            assert reasons == [
                ("Kubernetes", "secret istio-system/self", "the local cluster's own id; ignored"),
                (
                    "east",
                    "secret istio-system/b-second",
                    "also defined by secret istio-system/a-first; ignored",
                ),
            ]
            # The first one goes away: the other takes over (a different kubeconfig: Updated).
            api.delete("Secret", "istio-system", "a-first")
            await ev.wait(2)
            second = ev.events[1]
            assert isinstance(second, ClusterUpdated) and second.spec.server == "https://e2"


async def test_secret_watch_survives_drops_and_outages() -> None:
    async with KubeApiServer(token=CONFIG_TOKEN) as api, Events(secrets_source(api)) as ev:
        await api.wait_watches(1, "secrets")
        api.drop_watches()
        api.apply(remote_secret("rs-east", {"east": kubeconfig_yaml("https://e", "t")}))
        await ev.wait(1)
        await api.pause()
        await until(lambda: ev.remotes.status().state == "unreachable")
        api.delete("Secret", "istio-system", "rs-east")
        api.apply(remote_secret("rs-west", {"west": kubeconfig_yaml("https://w", "t")}))
        assert len(ev.events) == 1  # nothing removed while unreachable
        await api.resume()
        await ev.wait(3)
        assert ev.brief() == [("added", "east"), ("removed", "east"), ("added", "west")]
        await until(lambda: ev.remotes.status().state == "synced")


async def test_remote_secret_brings_a_clusters_endpoints_in() -> None:
    """RemoteSecrets on the config cluster -> a ClusterSource per remote (as the app does)."""
    async with KubeApiServer(token=CONFIG_TOKEN) as config, KubeApiServer(token="east-tok") as east:
        east.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "reviews", "namespace": "shop"},
                "spec": {"ports": [{"name": "http", "port": 9080}]},
            }
        )
        config.apply(east.remote_secret("east"))
        baseline = asyncio.all_tasks()
        async with Events(secrets_source(config)) as ev:
            added = ev.events[0]
            assert isinstance(added, ClusterAdded)
            src = ClusterSource(added.spec, backoff=FAST)
            gen = src.changes()
            first = await anext(gen)
            store = ConfigStore()
            store.apply(first)
            svc = store.get("Service", "shop", "reviews")
            assert svc is not None and svc.ref.source == "east:Service/shop/reviews#0"
            await east.wait_watches(4)
            await gen.aclose()
            await src.aclose()
        await until(lambda: not east.watches() and not config.watches())
        await until(lambda: not (asyncio.all_tasks() - baseline))


# -- folder ---------------------------------------------------------------------------------


def write(path: Path, text: str, tick: list[int] = [0]) -> None:  # noqa: B006
    path.write_text(text)
    tick[0] += 1
    ns = (1_700_000_000 + tick[0]) * 10**9
    os.utime(path, ns=(ns, ns))


async def test_folder_of_kubeconfigs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="xdsd")
    write(tmp_path / "east.yaml", kubeconfig_yaml("https://e", "te"))
    write(tmp_path / "west", kubeconfig_yaml("https://w", "tw"))
    write(tmp_path / ".hidden.yaml", kubeconfig_yaml("https://h", "th"))
    (tmp_path / "subdir").mkdir()
    write(tmp_path / "subdir" / "deep.yaml", kubeconfig_yaml("https://d", "td"))
    write(tmp_path / "broken.yaml", "token: leaked-token\n  : [")
    remotes = RemoteSecrets(folder=tmp_path, poll_interval=0.02, local_cluster_id="Kubernetes")
    async with Events(remotes) as ev:
        assert ev.brief() == [("added", "east"), ("added", "west")]
        assert [(p.cluster_id, p.source) for p in remotes.problems()] == [
            ("broken", (tmp_path / "broken.yaml").as_posix())
        ]
        # Same bytes, touched: nothing. New content: Updated.
        write(tmp_path / "east.yaml", kubeconfig_yaml("https://e", "te"))
        write(tmp_path / "east.yaml", kubeconfig_yaml("https://e", "te-rotated"))
        await ev.wait(3)
        write(tmp_path / "north.yml", kubeconfig_yaml("https://n", "tn"))
        await ev.wait(4)
        (tmp_path / "west").unlink()
        await ev.wait(5)
        write(tmp_path / "broken.yaml", kubeconfig_yaml("https://b", "tb"))
        await ev.wait(6)
        assert ev.brief(2) == [
            ("updated", "east"),
            ("added", "north"),
            ("removed", "west"),
            ("added", "broken"),
        ]
        assert remotes.problems() == ()
        assert sorted(remotes.clusters()) == ["broken", "east", "north"]
    assert "leaked-token" not in caplog.text and "te-rotated" not in caplog.text


async def test_folder_that_appears_later(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    remotes = RemoteSecrets(folder=folder, poll_interval=0.02)
    async with Events(remotes) as ev:
        assert ev.events == []
        folder.mkdir()
        write(folder / "east.yaml", kubeconfig_yaml("https://e", "te"))
        await ev.wait(1)
        assert ev.brief() == [("added", "east")]


async def test_changes_end_after_aclose(tmp_path: Path) -> None:
    write(tmp_path / "east.yaml", kubeconfig_yaml("https://e", "te"))
    remotes = RemoteSecrets(folder=tmp_path, poll_interval=0.02)
    seen: list[RemoteEvent] = []

    async def consume() -> None:
        async for ev in remotes.changes():
            seen.append(ev)

    task = asyncio.create_task(consume())
    await until(lambda: remotes.synced)
    await remotes.aclose()
    async with asyncio.timeout(5):
        await task
    assert len(seen) == 1


def test_parse_kubeconfig_reasons_never_quote_content() -> None:
    ok, why = parse_kubeconfig(kubeconfig_yaml("https://e", "tok"))
    assert ok is not None and why is None
    cases = {
        "[1, 2": "not valid YAML",
        "- a\n- b\n": "must be a mapping",
        "clusters: []\ncontexts: []\n": "no clusters",
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "ftp://x"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c"}}],
                "current-context": "x",
            }
        ): "server must be an http(s):// URL",
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        ): "user 'u' is not among the users",
    }
    for text, expected in cases.items():
        doc, why = parse_kubeconfig(text)
        assert doc is None and why is not None and expected in why, (text, why)


def test_exactly_one_of_cluster_or_folder() -> None:
    with pytest.raises(ValueError):
        RemoteSecrets()
    with pytest.raises(ValueError):
        RemoteSecrets(ClusterSpec("c", {}), folder="x")
