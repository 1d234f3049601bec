"""istiod's webhooks on 15017: AdmissionReviews sent the way the API server sends them.

An in-process `XdsdApp` (flags parsed by the CLI, `--dev-certs`) serves HTTPS on a
free port; each test POSTs an `admission.k8s.io/v1` AdmissionReview with
`Content-Type: application/json`, applies the returned JSONPatch to the pod (a small
RFC 6902 applier below) and checks the patched pod. Handler-only cases (no sockets)
call `Handlers` directly.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from xdsd import cli
from xdsd.app import AppSettings, XdsdApp
from xdsd.model.snapshot import MeshSnapshot
from xdsd.webhooks.admission import Handlers, WebhookContext, WebhookMetrics
from xdsd.webhooks.inject import InjectSettings, json_patch, parse_inject_path

pytestmark = pytest.mark.timeout(60)

EXTERNAL = "xdsd.example.com:15012"

MESH = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet, labels: {istio-injection: disabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: canary, labels: {istio.io/rev: canary}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 8080}]
"""

INJECTOR = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-sidecar-injector, namespace: istio-system}
data:
  config: |
    policy: disabled
    alwaysInjectSelector:
      - matchLabels: {mesh: "yes"}
    neverInjectSelector:
      - matchExpressions: [{key: batch, operator: Exists}]
    injectedAnnotations: {example.com/injected-by: xdsd}
    template: |
      {{ .Values.this.is.not.run }}
  values: |
    {"global": {"hub": "registry.example.com/istio", "tag": "1.30.1", "meshID": "mesh1",
                "caAddress": "ca.example.com:15012", "network": "net-values",
                "proxy": {"logLevel": "info"}},
     "sidecarInjectorWebhook": {"rewriteAppHTTPProbe": true}}
"""


# -- a tiny RFC 6902 applier (add, remove, replace; "-" appends) ----------------------------


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("add", "remove", "replace"), op
        tokens = [_unescape(t) for t in op["path"].split("/")[1:]]
        if not tokens:
            assert op["op"] == "replace"
            doc = copy.deepcopy(op["value"])
            continue
        parent = doc
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last = tokens[-1]
        if isinstance(parent, list):
            if op["op"] == "add":
                index = len(parent) if last == "-" else int(last)
                assert 0 <= index <= len(parent)
                parent.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del parent[int(last)]
            else:
                assert 0 <= int(last) < len(parent)
                parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if op["op"] == "remove" or op["op"] == "replace":
                assert last in parent, f"{op['op']} of a missing member {op['path']}"
            if op["op"] == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
    return doc


def pod(
    name: str = "cart-7d9f8c-abcde",
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "generateName": "cart-7d9f8c-",
        "namespace": namespace,
        "labels": {"app": "cart", "version": "v1", "pod-template-hash": "7d9f8c"} | (labels or {}),
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "cart-7d9f8c",
                "uid": "1",
                "controller": True,
            }
        ],
    }
    if annotations:
        meta["annotations"] = annotations
    del name  # the API server calls the webhook before a generated name is set
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "serviceAccountName": "cart",
            "containers": [
                {"name": "cart", "image": "shop/cart:1", "ports": [{"containerPort": 8080}]}
            ],
        }
        | spec,
    }


def review(obj: Any, uid: str = "uid-1", namespace: str = "shop", **request: Any) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": obj,
            }
            | request,
        }
    ).encode()


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def container(p: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    found = [c for c in p["spec"]["initContainers" if init else "containers"] if c["name"] == name]
    assert len(found) == 1, (name, p["spec"])
    return found[0]


class Client:
    def __init__(self, session: aiohttp.ClientSession, port: int, app: XdsdApp) -> None:
        self.session, self.port, self.app = session, port, app

    async def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        async with self.session.post(
            f"https://127.0.0.1:{self.port}{path}",
            data=io.BytesIO(body),  # aiohttp warns of large raw bytes
            headers={"Content-Type": content_type},
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def inject(self, obj: Any, path: str = "/inject", **request: Any) -> dict[str, Any]:
        """The AdmissionReview response; with the patched pod under `pod` when patched."""
        status, doc = await self.post(path, review(obj, **request))
        assert status == 200, doc
        assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview"
        response: dict[str, Any] = doc["response"]
        assert response["uid"] == request.get("uid", "uid-1")
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
            ops = json.loads(base64.b64decode(response["patch"]))
            response["pod"] = apply_patch(obj, ops)
        return response

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.app.registry.get_sample_value(name, labels or {}) or 0.0


def settings_for(tmp_path: Path, config: Path, *flags: str) -> AppSettings:
    args = cli._parser().parse_args(
        [
            "serve",
            "--config-dir",
            str(config),
            "--dev-certs",
            str(tmp_path / "certs"),
            "--xds-port",
            "0",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-port",
            "0",
            "--insecure-no-auth",
            *flags,
        ]
    )
    grpc_s, sec = cli._security_settings(args)
    webhooks, inject = cli._webhook_settings(args, grpc_s)
    assert webhooks is not None and webhooks.cert_file == tmp_path / "certs" / "server-cert.pem"
    return AppSettings(
        config_dir=config,
        xds=grpc_s,
        security=sec,
        admin_port=0,
        webhooks=webhooks,
        inject=inject,
        namespaces=frozenset(args.namespaces) if args.namespaces else None,
    )


async def start(tmp_path: Path, *docs: str, flags: tuple[str, ...] = ()) -> AsyncIterator[Client]:
    config = tmp_path / "mesh"
    config.mkdir(exist_ok=True)
    for i, text in enumerate(docs):
        (config / f"{i}.yaml").write_text(text)
    settings = settings_for(tmp_path, config, "--webhook-discovery-address", EXTERNAL, *flags)
    async with XdsdApp(settings, CollectorRegistry()) as app:
        await app.ready.wait()
        tls = ssl.create_default_context(cafile=str(tmp_path / "certs" / "root-cert.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
            yield Client(session, app.webhook_port, app)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async for c in start(tmp_path, MESH):
        yield c


# -- injection over TLS ------------------------------------------------------------------------


async def test_inject_path_pod_gets_istios_sidecar(client: Client) -> None:
    original = pod()
    r = await client.inject(original, "/inject/cluster/west/net/network1")
    assert r["allowed"] is True
    p = r["pod"]
    meta = p["metadata"]
    assert meta["labels"]["security.istio.io/tlsMode"] == "istio"
    assert meta["labels"]["service.istio.io/canonical-name"] == "cart"
    assert meta["labels"]["service.istio.io/canonical-revision"] == "v1"
    assert meta["labels"]["topology.istio.io/network"] == "network1"
    status = json.loads(meta["annotations"]["sidecar.istio.io/status"])
    assert status["initContainers"] == ["istio-init"] and status["containers"] == ["istio-proxy"]
    assert status["revision"] == "default"
    assert meta["annotations"]["kubectl.kubernetes.io/default-container"] == "cart"

    names = [c["name"] for c in p["spec"]["containers"]]
    assert names == ["cart", "istio-proxy"]
    init = container(p, "istio-init", init=True)
    assert init["args"] == [
        "istio-iptables",
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
        "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
        "--log_output_level=default:info",
    ]  # fmt: skip
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert init["image"] == "docker.io/istio/proxyv2:1.31.0"

    proxy = container(p, "istio-proxy")
    assert proxy["args"][:4] == [
        "proxy",
        "sidecar",
        "--domain",
        "$(POD_NAMESPACE).svc.cluster.local",
    ]
    assert proxy["ports"] == [
        {"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}
    ]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["securityContext"]["runAsUser"] == 1337
    env = env_of(proxy)
    pc = json.loads(env["PROXY_CONFIG"])
    assert pc["discoveryAddress"] == EXTERNAL and pc["statusPort"] == 15020
    assert env["CA_ADDR"] == EXTERNAL
    assert env["ISTIO_META_CLUSTER_ID"] == "west" and env["ISTIO_META_NETWORK"] == "network1"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["INSTANCE_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert env["ISTIO_META_WORKLOAD_NAME"] == "cart"
    assert env["ISTIO_META_OWNER"] == "kubernetes://apis/apps/v1/namespaces/shop/deployments/cart"
    assert env["ISTIO_META_MESH_ID"] == "cluster.local" and env["TRUST_DOMAIN"] == "cluster.local"
    assert json.loads(env["ISTIO_META_POD_PORTS"]) == [{"containerPort": 8080}]
    assert env["ISTIO_META_APP_CONTAINERS"] == "cart"
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert mounts["istio-token"] == "/var/run/secrets/tokens"
    assert mounts["istiod-ca-cert"] == "/var/run/secrets/istio"
    assert mounts["workload-socket"] == "/var/run/secrets/workload-spiffe-uds"

    volumes = {v["name"]: v for v in p["spec"]["volumes"]}
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"path": "istio-token", "expirationSeconds": 43200, "audience": "istio-ca"}
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    assert volumes["istio-envoy"]["emptyDir"] == {"medium": "Memory"}
    items = volumes["istio-podinfo"]["downwardAPI"]["items"]
    assert [i["path"] for i in items] == ["labels", "annotations"]
    for name in ("workload-socket", "credential-socket", "workload-certs", "istio-data"):
        assert name in volumes
    # The user's container and its fields are untouched.
    assert p["spec"]["containers"][0] == original["spec"]["containers"][0]

    assert client.metric("sidecar_injection_requests_total") == 1
    assert client.metric("sidecar_injection_success_total") == 1

    # Injected once: the patched pod sent again is left alone.
    again = await client.inject(p, uid="uid-2")
    assert again == {"uid": "uid-2", "allowed": True}
    assert client.metric("sidecar_injection_skip_total") == 1


async def test_annotations_are_honoured(client: Client) -> None:
    annotations = {
        "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true\n"
        "proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true'}\n",
        "sidecar.istio.io/proxyCPU": "50m",
        "sidecar.istio.io/proxyMemoryLimit": "256Mi",
        "sidecar.istio.io/proxyImage": "mirror.example.com/istio/proxyv2:custom",
        "sidecar.istio.io/interceptionMode": "TPROXY",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8,172.16.0.0/12",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.1/32",
        "traffic.sidecar.istio.io/includeInboundPorts": "8080",
        "traffic.sidecar.istio.io/excludeInboundPorts": "9090",
    }
    p = (await client.inject(pod(annotations=annotations)))["pod"]
    proxy = container(p, "istio-proxy")
    # holdApplicationUntilProxyStarts: the proxy first, the app waits for it.
    assert [c["name"] for c in p["spec"]["containers"]] == ["istio-proxy", "cart"]
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == ["pilot-agent", "wait"]
    assert proxy["image"] == "mirror.example.com/istio/proxyv2:custom"
    assert proxy["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}
    env = env_of(proxy)
    pc = json.loads(env["PROXY_CONFIG"])
    assert pc["holdApplicationUntilProxyStarts"] is True
    assert pc["discoveryAddress"] == EXTERNAL  # merged, not replaced
    assert env["ISTIO_META_DNS_CAPTURE"] == "true"
    assert env["ISTIO_META_INTERCEPTION_MODE"] == "TPROXY"
    assert proxy["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    init = container(p, "istio-init", init=True)
    # proxyMetadata reaches istio-iptables too: ISTIO_META_DNS_CAPTURE captures DNS.
    assert init["env"] == [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]
    args = init["args"]
    flags = dict(zip(args[1:17:2], args[2:18:2], strict=True))
    assert flags == {
        "-p": "15001",
        "-z": "15006",
        "-u": "1337",
        "-m": "TPROXY",
        "-i": "10.0.0.0/8,172.16.0.0/12",
        "-x": "10.96.0.1/32",
        "-b": "8080",
        "-d": "15090,15021,15020,9090",
    }

    # NONE: no init container at all; the proxy's discovery address from the annotation.
    none = pod(
        annotations={
            "sidecar.istio.io/interceptionMode": "NONE",
            "proxy.istio.io/config": '{"discoveryAddress": "other.example.com:15012"}',
        }
    )
    p = (await client.inject(none))["pod"]
    assert "initContainers" not in p["spec"]
    env = env_of(container(p, "istio-proxy"))
    assert json.loads(env["PROXY_CONFIG"])["discoveryAddress"] == "other.example.com:15012"
    assert env["CA_ADDR"] == "other.example.com:15012"


async def test_skips(client: Client) -> None:
    cases = {
        "annotation false": pod(annotations={"sidecar.istio.io/inject": "false"}),
        "label false": pod(labels={"sidecar.istio.io/inject": "false"}),
        "namespace disabled": pod(namespace="quiet"),
        "namespace of another revision": pod(namespace="canary"),
        "pod of another revision": pod(labels={"istio.io/rev": "canary"}),
        "hostNetwork": pod(hostNetwork=True),
        "kube-system": pod(namespace="kube-system"),
        "already injected": pod(annotations={"sidecar.istio.io/status": "{}"}),
    }
    for i, (what, obj) in enumerate(cases.items()):
        r = await client.inject(obj, uid=f"u{i}", namespace=obj["metadata"]["namespace"])
        assert r == {"uid": f"u{i}", "allowed": True}, what
    # Not a Pod (a Deployment sent to /inject by a wrong rule): allowed, untouched.
    r = await client.inject(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
        uid="dep",
        kind={"group": "apps", "version": "v1", "kind": "Deployment"},
        resource={"group": "apps", "version": "v1", "resource": "deployments"},
    )
    assert r == {"uid": "dep", "allowed": True}
    # The label wins over the annotation (istiod's rule).
    r = await client.inject(
        pod(
            labels={"sidecar.istio.io/inject": "true"},
            annotations={"sidecar.istio.io/inject": "false"},
        ),
        uid="both",
    )
    assert "patch" in r
    assert client.metric("sidecar_injection_skip_total") == len(cases) + 1


async def test_bad_input_gets_istiods_answers_never_a_500(client: Client) -> None:
    # Not JSON: an AdmissionReview that says so (not allowed).
    status, doc = await client.post("/inject", b"{not json")
    assert status == 200 and doc["kind"] == "AdmissionReview"
    assert doc["response"]["allowed"] is False
    assert doc["response"]["status"]["message"].startswith("could not decode body")
    # No request.uid.
    body = json.loads(review(pod()))
    del body["request"]["uid"]
    status, doc = await client.post("/inject", json.dumps(body).encode())
    assert status == 200 and doc["response"]["allowed"] is False
    assert "request.uid is missing" in doc["response"]["status"]["message"]
    # Not an AdmissionReview.
    status, doc = await client.post("/inject", json.dumps({"kind": "Pod"}).encode())
    assert status == 200 and "not an AdmissionReview" in doc["response"]["status"]["message"]
    # Too large (istiod: 400 with the limit), empty, not JSON content.
    status, text = await client.post("/inject", b" " * (1 << 20 + 1))
    assert status == 400 and "too large" in text
    status, text = await client.post("/inject", b"")
    assert status == 400 and "no body" in text
    status, text = await client.post("/inject", review(pod()), content_type="text/plain")
    assert status == 415
    # An annotation that cannot be honoured: denied with the reason (istiod's answer).
    r = await client.inject(pod(annotations={"sidecar.istio.io/interceptionMode": "BOGUS"}))
    assert r["allowed"] is False and "interceptionMode" in r["status"]["message"]
    r = await client.inject(
        pod(annotations={"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"}),
        uid="u2",
    )
    assert r["allowed"] is False and "not a CIDR" in r["status"]["message"]
    # The object is not a pod at all.
    r = await client.inject("a string", uid="u3")
    assert r["allowed"] is False
    assert client.metric("sidecar_injection_failure_total") == 9
    assert client.metric("sidecar_injection_requests_total") == 9


async def test_namespace_xdsd_is_not_configured_for_is_left_alone(tmp_path: Path) -> None:
    async for c in start(tmp_path, MESH, flags=("--namespace", "shop")):
        assert "patch" in await c.inject(pod())
        r = await c.inject(pod(namespace="other"), uid="o", namespace="other")
        assert r == {"uid": "o", "allowed": True}


async def test_injector_configmap_values_and_what_is_ignored(tmp_path: Path) -> None:
    async for c in start(tmp_path, MESH, INJECTOR):
        # policy: disabled -> only pods that ask (or match alwaysInjectSelector) are injected.
        assert await c.inject(pod(namespace="default"), namespace="default") == {
            "uid": "uid-1",
            "allowed": True,
        }
        r = await c.inject(pod(namespace="default", labels={"mesh": "yes"}), uid="a")
        p = r["pod"]
        proxy = container(p, "istio-proxy")
        assert proxy["image"] == "registry.example.com/istio/proxyv2:1.30.1"
        env = env_of(proxy)
        assert env["CA_ADDR"] == "ca.example.com:15012"
        assert env["ISTIO_META_MESH_ID"] == "mesh1" and env["ISTIO_META_NETWORK"] == "net-values"
        assert "--proxyLogLevel=info" in proxy["args"]
        assert p["metadata"]["annotations"]["example.com/injected-by"] == "xdsd"
        # neverInjectSelector beats alwaysInjectSelector; an explicit annotation beats both.
        r = await c.inject(pod(labels={"mesh": "yes", "batch": "1"}), uid="b")
        assert "patch" not in r
        r = await c.inject(
            pod(labels={"batch": "1"}, annotations={"sidecar.istio.io/inject": "true"}), uid="c"
        )
        assert "patch" in r
        # What xdsd does not honour is reported, on the ConfigMap and in /debug/injectz.
        admin = f"http://127.0.0.1:{c.app.admin_port}"
        async with c.session.get(f"{admin}/debug/injectz") as resp:
            injectz = await resp.json()
        assert injectz["source"] == "ConfigMap istio-system/istio-sidecar-injector"
        ignored = {i["path"]: i["message"] for i in injectz["ignored"]}
        assert "Go templates are not run" in ignored["data.config.template"]
        assert "sidecarInjectorWebhook.rewriteAppHTTPProbe" in ignored["data.values"]
        async with c.session.get(f"{admin}/debug/configz") as resp:
            configz = await resp.json()
        (cm,) = [
            o
            for o in configz["objects"]
            if o["object"] == "ConfigMap istio-system/istio-sidecar-injector"
        ]
        assert cm["status"] == "accepted with warnings"
        assert {p["path"] for p in cm["problems"]} == set(ignored)


async def test_cni_values_give_istio_validation(tmp_path: Path) -> None:
    cni = INJECTOR.replace('"sidecarInjectorWebhook"', '"pilot": {"cni": {"enabled": true}}, "x"')
    cni = cni.replace("policy: disabled", "policy: enabled")
    async for c in start(tmp_path, MESH, cni):
        p = (await c.inject(pod()))["pod"]
        init = container(p, "istio-validation", init=True)
        assert init["args"][-2:] == ["--run-validation", "--skip-rule-apply"]
        assert "add" not in init["securityContext"]["capabilities"]
        annotations = p["metadata"]["annotations"]
        assert annotations["sidecar.istio.io/interceptionMode"] == "REDIRECT"
        assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == "15020"


async def test_iptables_values_reach_istio_init(tmp_path: Path) -> None:
    values = '"global": {"proxy_init": {"forceApplyIptables": true}, "nativeNftables": true}, '
    injector = INJECTOR.replace('"global": {', values + '"x": {').replace(
        "policy: disabled", "policy: enabled"
    )
    async for c in start(tmp_path, MESH, injector):
        p = (await c.inject(pod()))["pod"]
        args = container(p, "istio-init", init=True)["args"]
        assert args[-2:] == ["--force-apply", "--native-nftables"], args
        async with c.session.get(f"http://127.0.0.1:{c.app.admin_port}/debug/injectz") as resp:
            ignored = {i["path"]: i["message"] for i in (await resp.json())["ignored"]}
        assert "forceApplyIptables" not in ignored.get("data.values", ""), ignored


# -- validation --------------------------------------------------------------------------------


def _vs(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": spec,
        **extra,
    }


def _validation(obj: Any, uid: str, operation: str = "CREATE") -> bytes:
    return review(
        obj,
        uid=uid,
        kind={"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
        resource={"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
        operation=operation,
    )


async def test_validate(client: Client) -> None:
    async def answer(obj: Any, uid: str, operation: str = "CREATE") -> dict[str, Any]:
        status, doc = await client.post("/validate", _validation(obj, uid, operation))
        assert status == 200 and doc["response"]["uid"] == uid
        return doc["response"]  # type: ignore[no-any-return]

    good = _vs({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}]}]})
    assert await answer(good, "ok") == {"uid": "ok", "allowed": True}
    # An unknown field: a warning, still allowed (xdsd's warning-level finding).
    odd = copy.deepcopy(good)
    odd["spec"]["http"][0]["noSuchField"] = 1
    r = await answer(odd, "warn")
    assert r["allowed"] is True
    assert any("spec.http[0].noSuchField" in w for w in r["warnings"]), r
    # Errors: denied, each with its field path.
    bad = _vs(
        {
            "hosts": [],
            "http": [{"route": [{"destination": {"host": "cart", "port": {"number": 70000}}}]}],
        }
    )
    r = await answer(bad, "bad")
    assert r["allowed"] is False
    message = r["status"]["message"]
    assert message.startswith("configuration is invalid: ")
    assert "spec.http[0].route[0].destination.port.number" in message, message
    # A top-level field a custom resource cannot have; a kind that is not Istio's.
    r = await answer(_vs({"hosts": ["cart"]}, extra={}), "field")
    assert r["allowed"] is False and "unknown field 'extra'" in r["status"]["message"]
    r = await answer({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}, "kind")
    assert r["allowed"] is False and "unrecognized type" in r["status"]["message"]
    # DELETE is not validated.
    assert (await answer(good, "del", "DELETE"))["allowed"] is True
    labels = {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"}
    assert client.metric("galley_validation_passed_total", labels) == 2
    assert (
        client.metric("galley_validation_failed_total", labels | {"reason": "invalid_resource"})
        == 2
    )
    # Bad input on /validate too.
    status, doc = await client.post("/validate", b"[]")
    assert status == 200 and doc["response"]["allowed"] is False


# -- pure parts --------------------------------------------------------------------------------


def test_inject_path_parsing_as_istiod() -> None:
    assert parse_inject_path("/inject") == {}
    assert parse_inject_path("/inject/") == {}
    assert parse_inject_path("/inject/cluster/west/net/network1") == {
        "ISTIO_META_CLUSTER_ID": "west",
        "ISTIO_META_NETWORK": "network1",
    }
    assert parse_inject_path("/inject/cluster/west/net/") == {"ISTIO_META_CLUSTER_ID": "west"}
    assert parse_inject_path("/inject/my_env/a--slash--b/odd") == {"MY_ENV": "a/b"}


def test_json_patch_round_trips() -> None:
    old = {"a": [1, 2], "b": {"c/d": 1, "e~f": 2}, "g": [1], "h": 1}
    new = {"a": [1, 2, 3], "b": {"c/d": 2}, "g": [2, 3], "i": {"j": []}}
    assert apply_patch(old, json_patch(old, new)) == new


async def test_handlers_not_ready_deny_with_a_reason() -> None:
    h = Handlers(
        WebhookContext(snapshot=MeshSnapshot, ready=lambda: False, inject=InjectSettings()),
        WebhookMetrics(CollectorRegistry()),
    )
    answer = h.inject(review(pod()), "application/json", "/inject")
    assert answer.status == 200 and answer.review is not None
    response = answer.review["response"]
    assert response["allowed"] is False and "not loaded" in response["status"]["message"]


# -- the Kubernetes mode: a Pod created through the test API server gets injected ---------------


async def test_pod_created_through_the_api_server_is_injected(tmp_path: Path) -> None:
    """Config from a cluster: the injector ConfigMap and Namespaces come from the API server,
    which calls the webhook on Pod CREATE (tests/kube/apiserver.py MutatingWebhook)."""
    from tests.kube.apiserver import KubeApiServer, MutatingWebhook
    from xdsd.demo import poll

    def injector(tag: str) -> dict[str, Any]:
        doc = yaml.safe_load(INJECTOR)
        doc["data"]["config"] = "policy: enabled\n"
        values = json.loads(doc["data"]["values"])
        values["global"]["tag"] = tag
        doc["data"]["values"] = json.dumps(values)
        return doc  # type: ignore[no-any-return]

    async with KubeApiServer(token="t", bookmark_interval=0.5) as api:
        for doc in yaml.safe_load_all(MESH):
            api.apply(doc)
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
        api.apply(injector("1.30.1"))
        (tmp_path / "kubeconfig").write_text(api.kubeconfig_yaml())
        args = cli._parser().parse_args(
            [
                "serve",
                "--kubeconfig",
                str(tmp_path / "kubeconfig"),
                "--cluster-id",
                "cluster1",
                "--dev-certs",
                str(tmp_path / "certs"),
                "--xds-port",
                "0",
                "--webhook-host",
                "127.0.0.1",
                "--webhook-port",
                "0",
                "--webhook-discovery-address",
                EXTERNAL,
                "--insecure-no-auth",
            ]
        )
        grpc_s, sec = cli._security_settings(args)
        webhooks, inject = cli._webhook_settings(args, grpc_s)
        settings = AppSettings(
            kubeconfig=tmp_path / "kubeconfig",
            cluster_id="cluster1",
            xds=grpc_s,
            security=sec,
            admin_port=-1,
            webhooks=webhooks,
            inject=inject,
        )
        async with XdsdApp(settings, CollectorRegistry()) as app:
            await app.ready.wait()
            api.add_mutating_webhook(
                MutatingWebhook(
                    f"https://localhost:{app.webhook_port}/inject/cluster/cluster1/net/network1",
                    ca_file=str(tmp_path / "certs" / "root-cert.pem"),
                )
            )
            headers = {"Authorization": "Bearer t"}
            async with aiohttp.ClientSession(headers=headers) as s:

                async def create(obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                    ns = obj["metadata"]["namespace"]
                    async with s.post(f"{api.url}/api/v1/namespaces/{ns}/pods", json=obj) as r:
                        return r.status, await r.json()

                status, created = await create(pod())
                assert status == 201, created
                name = created["metadata"]["name"]  # generated after admission
                async with s.get(f"{api.url}/api/v1/namespaces/shop/pods/{name}") as r:
                    stored = await r.json()
                proxy = container(stored, "istio-proxy")
                assert proxy["image"] == "registry.example.com/istio/proxyv2:1.30.1"
                env = env_of(proxy)
                assert env["ISTIO_META_CLUSTER_ID"] == "cluster1"
                assert env["ISTIO_META_NETWORK"] == "network1"
                assert json.loads(env["PROXY_CONFIG"])["discoveryAddress"] == EXTERNAL
                assert container(stored, "istio-init", init=True)["args"][0] == "istio-iptables"
                assert stored["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
                (sent,) = api.admission_reviews
                assert sent["request"]["object"]["metadata"]["generateName"] == "cart-7d9f8c-"

                # The namespace labels come from the cluster: disabled -> created as it is.
                status, created = await create(pod(namespace="quiet"))
                assert status == 201
                assert [c["name"] for c in created["spec"]["containers"]] == ["cart"]
                # A pod the webhook denies is not created; the API server says why.
                bad = pod(annotations={"sidecar.istio.io/interceptionMode": "BOGUS"})
                status, answer = await create(bad)
                assert status == 400
                assert "denied the request: injection failed" in answer["message"]

                # A ConfigMap change reaches the next injection.
                api.apply(injector("1.30.2"))

                async def new_tag() -> bool:
                    config = app.webhook_handlers.ctx.snapshot()
                    from xdsd.webhooks.config import load_injector_config

                    return load_injector_config(config).value("global.tag") == "1.30.2"

                await poll(new_tag, timeout=10, what="the injector ConfigMap change")
                status, created = await create(pod())
                assert status == 201
                image = container(created, "istio-proxy")["image"]
                assert image == "registry.example.com/istio/proxyv2:1.30.2"


def test_revisions_as_istios_selectors() -> None:
    from xdsd.webhooks.config import InjectorConfig
    from xdsd.webhooks.inject import injection_required

    config = InjectorConfig()
    enabled = {"istio-injection": "enabled"}
    blue = {"istio.io/rev": "blue"}
    assert injection_required(pod(), "shop", config, enabled).inject
    assert not injection_required(pod(), "shop", config, enabled, "blue").inject
    assert injection_required(pod(), "shop", config, blue, "blue").inject
    assert not injection_required(pod(), "shop", config, blue).inject
    labelled = pod(labels={"istio.io/rev": "blue"})
    assert injection_required(labelled, "shop", config, None, "blue").inject
    assert not injection_required(labelled, "shop", config, None).inject


def test_webhook_flags(tmp_path: Path) -> None:
    def settings(*flags: str) -> tuple[Any, Any]:
        args = cli._parser().parse_args(["serve", "--config-dir", ".", *flags])
        grpc_s, _ = cli._security_settings(args)
        return cli._webhook_settings(args, grpc_s)  # type: ignore[no-any-return]

    # No certificate: off (`serve` logs why: test_serve_without_a_certificate_...).
    webhooks, inject = settings()
    assert webhooks is None
    assert inject.discovery_address == "" and inject.cluster_id == "Kubernetes"
    # --dev-certs: the development serving certificate, on 15017 at --xds-host.
    certs = tmp_path / "certs"
    webhooks, _ = settings("--dev-certs", str(certs), "--xds-host", "0.0.0.0")
    assert (webhooks.host, webhooks.port) == ("0.0.0.0", 15017)
    assert webhooks.cert_file == certs / "server-cert.pem"
    # The TLS serving certificate, unless the webhook's own is given.
    c = ("--tls-cert-file", "a.pem", "--tls-key-file", "a.key")
    webhooks, _ = settings(*c)
    assert (webhooks.cert_file, webhooks.key_file) == (Path("a.pem"), Path("a.key"))
    webhooks, inject = settings(
        *c,
        "--webhook-cert-file",
        "w.pem",
        "--webhook-key-file",
        "w.key",
        "--webhook-discovery-address",
        EXTERNAL,
        "--cluster-id",
        "cluster1",
        "--revision",
        "blue",
    )
    assert (webhooks.cert_file, webhooks.key_file) == (Path("w.pem"), Path("w.key"))
    assert (inject.discovery_address, inject.cluster_id, inject.revision) == (
        EXTERNAL,
        "cluster1",
        "blue",
    )
    assert settings(*c, "--webhook-port", "-1")[0] is None
    with pytest.raises(ValueError, match="both --webhook-cert-file and --webhook-key-file"):
        settings("--webhook-cert-file", "w.pem")


async def test_rotated_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    from tests.certs import TestCA
    from xdsd.demo import poll
    from xdsd.webhooks.server import WebhookServer, WebhookSettings

    old, new = TestCA("old CA"), TestCA("new CA")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(ca: TestCA) -> None:
        issued = ca.issue("127.0.0.1")
        key.write_bytes(issued.key_pem)
        cert.write_bytes(issued.cert_pem)

    install(old)
    handlers = Handlers(
        WebhookContext(snapshot=MeshSnapshot, ready=lambda: True),
        WebhookMetrics(CollectorRegistry()),
    )
    settings = WebhookSettings(host="127.0.0.1", port=0, cert_file=cert, key_file=key)
    async with WebhookServer(handlers, settings) as server:

        async def served_by(ca: TestCA) -> bool:
            (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
            tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"https://127.0.0.1:{server.port}/ready", ssl=tls) as r,
            ):
                return r.status == 200

        assert await served_by(old)
        install(new)
        await poll(lambda: served_by(new), timeout=10, what="the new certificate")


async def test_workers_all_serve_the_webhooks(tmp_path: Path) -> None:
    """`xdsd serve --workers 2`: one webhook port, answered by every worker."""
    from tests.test_workers import Serve, get_json, ready, workers
    from xdsd.demo import free_port, poll

    config = tmp_path / "mesh"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH)
    admin, hooks = free_port(), free_port()
    certs = tmp_path / "certs"
    async with Serve(
        "--workers",
        "2",
        "--config-dir",
        str(config),
        "--dev-certs",
        str(certs),
        "--insecure-no-auth",
        "--xds-port",
        str(free_port()),
        "--admin-port",
        str(admin),
        "--webhook-host",
        "127.0.0.1",
        "--webhook-port",
        str(hooks),
        "--shutdown-grace",
        "0.5",
    ) as serve:
        await poll(lambda: ready(admin), timeout=30, what="the supervisor's /ready")
        tls = ssl.create_default_context(cafile=str(certs / "root-cert.pem"))
        ports = [w["admin_port"] for w in await workers(admin)]

        async def injected_by(port: int) -> float:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith("sidecar_injection_success_total "):
                    return float(line.split()[1])
            return 0.0

        async def both_answered() -> bool:
            # A new connection each time: the kernel spreads connections over the workers.
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as s,
                s.post(
                    f"https://127.0.0.1:{hooks}/inject",
                    data=review(pod()),
                    headers={"Content-Type": "application/json"},
                ) as r,
            ):
                assert "patch" in (await r.json())["response"]
            return all([await injected_by(p) > 0 for p in ports])

        await poll(both_answered, timeout=20, interval=0.01, what="both workers injecting")
        assert len(ports) == 2
        assert (await get_json(admin, "/debug/injectz"))["port"] == hooks
        assert await serve.stop() == 0


def test_serve_names_a_busy_webhook_port_in_one_line(tmp_path: Path) -> None:
    import socket

    from tests.test_cli_first_use import xdsd

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = int(s.getsockname()[1])
        result = xdsd(
            "serve",
            "--config-dir",
            str(tmp_path),
            "--dev-certs",
            str(tmp_path / "certs"),
            "--xds-port",
            "0",
            "--admin-port",
            "-1",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-port",
            str(port),
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"xdsd: --webhook-port {port}: cannot listen on 127.0.0.1:{port} (--webhook-host): "
        "address in use"
    ]
    bad = xdsd("serve", "--config-dir", str(tmp_path), "--webhook-port", "70000")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "xdsd: --webhook-port 70000: not a port (0-65535, or -1 for off)"


async def test_serve_without_a_certificate_says_the_webhooks_are_off(tmp_path: Path) -> None:
    import asyncio
    import signal
    import time

    from tests.test_cli_first_use import xdsd_command

    proc = await asyncio.create_subprocess_exec(
        *xdsd_command(),
        "serve",
        "--config-dir",
        str(tmp_path),
        "--xds-port",
        "0",
        "--admin-port",
        "-1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("serving" in line for line in lines):
            left = deadline - time.monotonic()
            assert left > 0, lines
            line = await asyncio.wait_for(proc.stderr.readline(), left)
            assert line, lines  # exited early
            lines.append(line.decode())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    text = "".join(lines)
    assert "webhooks off: no certificate" in text
    assert "webhooks on" not in text


@pytest.mark.parametrize(
    "values, mesh, flag, expected",
    [
        ({}, {}, "", "cluster.local"),  # istiod: the trust domain
        ({}, {"trustDomain": "example.org"}, "", "example.org"),
        ({}, {}, "mesh-a", "mesh-a"),  # --mesh-id
        ({}, {"meshId": "mesh-b"}, "mesh-a", "mesh-b"),  # MeshConfig meshId first
        ({"global": {"meshID": "mesh-c"}}, {"meshId": "mesh-b"}, "mesh-a", "mesh-c"),
    ],
    ids=["default", "trust-domain", "flag", "meshconfig", "values"],
)
def test_the_mesh_id_given_to_injected_proxies(
    values: dict[str, Any], mesh: dict[str, Any], flag: str, expected: str
) -> None:
    from xdsd.webhooks.config import DEFAULT_VALUES, InjectorConfig, merge
    from xdsd.webhooks.inject import inject_pod

    config = InjectorConfig(values=merge(DEFAULT_VALUES, values), mesh=mesh)
    settings = InjectSettings(discovery_address=EXTERNAL, mesh_id=flag)
    injected = inject_pod(pod(), "shop", config, settings, {})
    env = env_of(container(injected.pod, "istio-proxy"))
    assert env["ISTIO_META_MESH_ID"] == expected
