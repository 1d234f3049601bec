"""The control plane identifier of debug answers, in istiod's shape.

istioctl proxy-status reads `ControlPlane.identifier` of the `istio.io/debug/syncz`
answer as JSON (`{"Component", "ID", "Info": {"version", ...}}`, istiod's
IstioControlPlaneInstance): the ID is its ISTIOD column, and answers from several
control planes are keyed by it. A plain string showed as INVALID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.test_admin_cli import EXAMPLE, settings
from xdsd import __version__
from xdsd.app import XdsdApp
from xdsd.server.ads import instance_id, istio_control_plane_identifier


def test_identifier_is_istiods_json() -> None:
    ident = json.loads(istio_control_plane_identifier("xdsd", "host.1", "0.1.0"))
    assert ident == {
        "Component": "xdsd",
        "ID": "host.1",
        "Info": {"version": "0.1.0", "revision": "", "golang_version": "", "status": "", "tag": ""},
    }
    # One per process: two xdsd processes on one host are two control planes.
    assert instance_id() == f"{os.environ.get('POD_NAME') or socket.gethostname()}.{os.getpid()}"


async def test_syncz_answers_name_the_instance(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "mesh")
    async with XdsdApp(settings(tmp_path / "mesh")) as app:
        await app.ready.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources()
            req = discovery_pb2.DiscoveryRequest(type_url="istio.io/debug/syncz")
            req.node.id = "sidecar~127.0.0.1~istioctl.default~default.svc.cluster.local"
            await call.write(req)
            resp = await call.read()
            call.cancel()
    ident = json.loads(resp.control_plane.identifier)
    assert ident["Component"] == "xdsd" and ident["ID"] == instance_id()
    assert ident["Info"]["version"] == __version__
