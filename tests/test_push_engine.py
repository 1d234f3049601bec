"""The incremental push engine gives exactly what a fresh generation gives.

XdsdApp keeps contexts per context_key, shares outbound parts across apps, keeps
parts across snapshots when the changed kinds cannot affect them and patches
endpoints by service. After every change below, each proxy's resources through
the app must be byte-identical (same set version) to a from-scratch
generation, and the reuse must really have happened where it should.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from xdsd.app import AppSettings, XdsdApp, _Watch
from xdsd.cache.resources import ENDPOINT, PUSH_ORDER, Resource, ResourceSet
from xdsd.model.proxy import parse_proxy
from xdsd.push.request import PushRequest
from xdsd.sources.folder import load_yaml
from xdsd.translate.generate import GENERATORS, proxy_context

NAMESPACES = ("ns-a", "ns-b")


def _service(name: str, ns: str, *, resolution: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": f"10.96.{NAMESPACES.index(ns)}.{int(name[-1]) + 1}",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 8080, "targetPort": 9080}],
        },
    }


def _pod(name: str, ns: str, app: str, ip: str, version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "version": version}},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9080}]}]},
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _slice(svc: str, ns: str, pods: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-abc",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            }
            for pod, ip in pods
        ],
    }


class Mesh:
    """Files of a small mesh, applied to the app as the folder source would."""

    def __init__(self, app: XdsdApp) -> None:
        self.app = app
        self.pods: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for n, ns in enumerate(NAMESPACES):
            for i in range(3):
                svc = f"svc-{i}"
                # Pods ending in -x run no proxy here (the ones churned below).
                self.pods[(svc, ns)] = [
                    (f"{svc}-{j}", f"10.{n + 1}.{i}.{j + 1}", "v1") for j in range(2)
                ] + [(f"{svc}-x", f"10.{n + 1}.{i}.100", "v1")]

    def files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        for svc, ns in self.pods:
            yield self.endpoint_file(svc, ns)
            yield f"{ns}/{svc}.yaml", [_service(svc, ns)]

    def endpoint_file(self, svc: str, ns: str) -> tuple[str, list[dict[str, Any]]]:
        pods = self.pods[(svc, ns)]
        docs = [_pod(p, ns, svc, ip, v) for p, ip, v in pods]
        docs.append(_slice(svc, ns, [(p, ip) for p, ip, _ in pods]))
        return f"{ns}/{svc}-endpoints.yaml", docs

    def apply(self, source: str, docs: list[dict[str, Any]] | None) -> None:
        if docs is None:
            self.app.store.remove_file(source)
        else:
            self.app.store.apply_file(source, load_yaml(yaml.safe_dump_all(docs), source))


def _fresh(app: XdsdApp, watch: _Watch, type_url: str) -> ResourceSet:
    ctx = proxy_context(app.snapshot, watch.proxy)
    return ResourceSet.of(
        type_url,
        [Resource.from_message(n, type_url, m) for n, m in GENERATORS[type_url](ctx)],
    )


def _check(app: XdsdApp, watches: list[_Watch]) -> None:
    for watch in watches:
        for type_url in PUSH_ORDER:
            got = watch.resources(type_url)
            want = _fresh(app, watch, type_url)
            assert got.version == want.version, (watch.proxy.id, type_url)
            assert {r.name: r.payload for r in got} == {r.name: r.payload for r in want}


@pytest.fixture
def app(tmp_path: Path) -> XdsdApp:
    return XdsdApp(AppSettings(config_dir=tmp_path, admin_port=-1))


def _proxies(app: XdsdApp, mesh: Mesh) -> list[_Watch]:
    out = []
    for (_svc, ns), pods in mesh.pods.items():
        for pod, ip, _ in pods:
            if pod.endswith("-x"):
                continue
            node = f"sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"
            out.append(_Watch(app, parse_proxy(node, {"NAMESPACE": ns})))
    out.append(
        _Watch(
            app,
            parse_proxy(
                "router~10.9.0.1~gw-1.ns-a~ns-a.svc.cluster.local",
                {"NAMESPACE": "ns-a", "LABELS": {"istio": "ingressgateway"}},
            ),
        )
    )
    return out


def _push(app: XdsdApp, *kinds: str) -> None:
    asyncio.run(app._push(PushRequest(kinds=frozenset(kinds), reason="test"), 0.0))


VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "vs", "namespace": "ns-a"},
    "spec": {
        "hosts": ["svc-0.ns-a.svc.cluster.local"],
        "http": [
            {
                "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                "route": [{"destination": {"host": "svc-0.ns-a.svc.cluster.local"}}],
            },
            {"route": [{"destination": {"host": "svc-1.ns-a.svc.cluster.local"}}]},
        ],
    },
}
DR = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "dr", "namespace": "ns-a"},
    "spec": {
        "host": "svc-2.ns-a.svc.cluster.local",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
    },
}
SIDECAR = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Sidecar",
    "metadata": {"name": "default", "namespace": "ns-b"},
    "spec": {"egress": [{"hosts": ["./*", "ns-a/svc-0.ns-a.svc.cluster.local"]}]},
}


@pytest.mark.parametrize("with_sidecar", [False, True], ids=["no-sidecar", "sidecar"])
def test_every_change_gives_what_a_fresh_generation_gives(app: XdsdApp, with_sidecar: bool) -> None:
    mesh = Mesh(app)
    for source, docs in mesh.files():
        mesh.apply(source, docs)
    mesh.apply("ns-a/dr.yaml", [DR])
    if with_sidecar:
        mesh.apply("ns-b/sidecar.yaml", [SIDECAR])
    app._rebuild(PushRequest(reason="initial"))
    watches = _proxies(app, mesh)
    _check(app, watches)
    # Pods of one app share a context; the apps of a namespace share outbound parts.
    assert len(app.contexts) == len(mesh.pods) + 1

    # A pod of svc-1.ns-a replaced: endpoint-only, EDS patched, nothing else rebuilt.
    builds, kept = app.cache.builds, app.cache.kept
    mesh.pods[("svc-1", "ns-a")][2] = ("svc-1-y", "10.1.1.9", "v1")
    mesh.apply(*mesh.endpoint_file("svc-1", "ns-a"))
    contexts_built = app.contexts.built
    _push(app, "Pod", "EndpointSlice")
    assert app._last_push is not None
    assert app._last_push["endpoint_services"] == ["svc-1.ns-a.svc.cluster.local/ns-a"]
    _check(app, watches)
    assert app.cache.patches > 0 and app.cache.kept > kept
    assert app.cache.builds == builds  # nothing generated in full
    assert app.contexts.built == contexts_built

    # A subset's pod changes version: its subset cluster's endpoints follow.
    mesh.pods[("svc-2", "ns-a")][1] = ("svc-2-1", "10.1.2.2", "v2")
    mesh.apply(*mesh.endpoint_file("svc-2", "ns-a"))
    _push(app, "Pod", "EndpointSlice")
    _check(app, watches)

    # A VirtualService: routes change; clusters and endpoints kept unless a Sidecar
    # (whose egress imports follow VirtualServices) exists.
    kept = app.cache.kept
    mesh.apply("ns-a/vs.yaml", [VS])
    _push(app, "VirtualService")
    assert app._last_push is not None and app._last_push["types"] == "all"
    _check(app, watches)
    if not with_sidecar:
        assert app.cache.kept > kept

    # A DestinationRule subset added: clusters and endpoints regenerated.
    dr = yaml.safe_load(yaml.safe_dump(DR))
    dr["spec"]["subsets"].append({"name": "v2", "labels": {"version": "v2"}})
    mesh.apply("ns-a/dr.yaml", [dr])
    _push(app, "DestinationRule")
    _check(app, watches)

    # The own pod of a proxy relabelled: its context changes, the others' do not.
    pods = mesh.pods[("svc-0", "ns-b")]
    pods[0] = (pods[0][0], pods[0][1], "v9")
    mesh.apply(*mesh.endpoint_file("svc-0", "ns-b"))
    _push(app, "Pod", "EndpointSlice")
    _check(app, watches)

    # A service gains a port: a full push.
    svc = _service("svc-0", "ns-a")
    svc["spec"]["ports"].append({"name": "tcp", "port": 9000, "targetPort": 9000})
    mesh.apply("ns-a/svc-0.yaml", [svc])
    _push(app, "Service")
    assert app._last_push is not None and app._last_push["endpoint_services"] is None
    _check(app, watches)

    # A service removed with its endpoints.
    mesh.apply("ns-b/svc-2.yaml", None)
    mesh.apply("ns-b/svc-2-endpoints.yaml", None)
    _push(app, "Service", "Pod", "EndpointSlice")
    _check(app, watches)


@pytest.mark.parametrize("with_sidecar", [False, True])
def test_a_virtualservice_edit_keeps_every_apps_inbound_parts(
    app: XdsdApp, with_sidecar: bool
) -> None:
    """Inbound clusters and listeners read no VirtualService: the edit keeps their cache
    entries as they were (not generated again, even to the same bytes)."""
    mesh = Mesh(app)
    for source, docs in mesh.files():
        mesh.apply(source, docs)
    if with_sidecar:
        mesh.apply("ns-b/sidecar.yaml", [SIDECAR])
    app._rebuild(PushRequest(reason="initial"))
    watches = _proxies(app, mesh)
    _check(app, watches)

    def inbound() -> dict[object, object]:
        return {k: e for k, e in app.cache._parts.items() if k[2] == "inbound"}

    before = inbound()
    assert before
    mesh.apply("ns-a/vs.yaml", [VS])
    _push(app, "VirtualService")
    _check(app, watches)
    after = inbound()
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_dns_service_endpoints_are_a_full_push(app: XdsdApp) -> None:
    def entry() -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "ext", "namespace": "ns-a"},
            "spec": {
                "hosts": ["ext.example.com"],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
                "workloadSelector": {"labels": {"app": "ext"}},
            },
        }

    def workload(address: str) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "ext-1", "namespace": "ns-a"},
            "spec": {"address": address, "labels": {"app": "ext"}},
        }

    mesh = Mesh(app)
    for source, docs in mesh.files():
        mesh.apply(source, docs)
    mesh.apply("ns-a/se.yaml", [entry()])
    mesh.apply("ns-a/we.yaml", [workload("ext-1.example.com")])
    app._rebuild(PushRequest(reason="initial"))
    watches = _proxies(app, mesh)
    _check(app, watches)
    mesh.apply("ns-a/we.yaml", [workload("ext-2.example.com")])
    _push(app, "WorkloadEntry")
    assert app._last_push is not None
    assert app._last_push["types"] == "all" and app._last_push["endpoint_services"] is None
    _check(app, watches)


def test_streams_of_unaffected_groups_get_nothing(app: XdsdApp) -> None:
    """An endpoint change patches EDS sets; a set without the service stays the same
    object, so a stream holding it has nothing to compare."""
    mesh = Mesh(app)
    for source, docs in mesh.files():
        mesh.apply(source, docs)
    mesh.apply("ns-b/sidecar.yaml", [{**SIDECAR, "spec": {"egress": [{"hosts": ["./*"]}]}}])
    app._rebuild(PushRequest(reason="initial"))
    watches = _proxies(app, mesh)
    before = {w.proxy.id: w.resources(ENDPOINT) for w in watches}
    mesh.pods[("svc-1", "ns-a")][2] = ("svc-1-y", "10.1.1.9", "v1")
    mesh.apply(*mesh.endpoint_file("svc-1", "ns-a"))
    _push(app, "Pod", "EndpointSlice")
    for w in watches:
        after = w.resources(ENDPOINT)
        if w.proxy.namespace == "ns-b":  # its Sidecar imports only ns-b
            assert after is before[w.proxy.id]
        else:
            assert after is not before[w.proxy.id]
            assert after.base is before[w.proxy.id]
            assert after.changed == {"outbound|8080||svc-1.ns-a.svc.cluster.local"}
    _check(app, watches)


def _security(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def test_security_changes_give_what_a_fresh_generation_gives(app: XdsdApp) -> None:
    """PeerAuthentication (auto mTLS in clusters and EDS, inbound chains),
    AuthorizationPolicy and RequestAuthentication (inbound and gateway filters) and
    the sidecar label that makes a pod a mesh workload: kept parts stay right."""
    mesh = Mesh(app)
    for source, docs in mesh.files():
        for d in docs:  # svc-1's pods have Istio's sidecar: auto mTLS toward them
            if d["kind"] == "Pod" and d["metadata"]["labels"]["app"] == "svc-1":
                d["metadata"]["labels"]["security.istio.io/tlsMode"] = "istio"
        mesh.apply(source, docs)
    app._rebuild(PushRequest(reason="initial"))
    watches = _proxies(app, mesh)
    _check(app, watches)
    steps: list[tuple[str, str, list[dict[str, Any]] | None]] = [
        (
            "PeerAuthentication",
            "ns-a/pa.yaml",
            [_security("PeerAuthentication", "default", "ns-a", {"mtls": {"mode": "STRICT"}})],
        ),
        (
            "AuthorizationPolicy",
            "ns-a/ap.yaml",
            [
                _security(
                    "AuthorizationPolicy",
                    "deny",
                    "ns-a",
                    {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["ns-b"]}}]}]},
                )
            ],
        ),
        (
            "RequestAuthentication",
            "ns-a/ra.yaml",
            [
                _security(
                    "RequestAuthentication",
                    "jwt",
                    "ns-a",
                    {"jwtRules": [{"issuer": "https://issuer.example", "jwks": '{"keys": []}'}]},
                )
            ],
        ),
        (
            "PeerAuthentication",
            "ns-a/pa.yaml",
            [_security("PeerAuthentication", "default", "ns-a", {"mtls": {"mode": "DISABLE"}})],
        ),
        ("AuthorizationPolicy", "ns-a/ap.yaml", None),
        ("PeerAuthentication", "ns-a/pa.yaml", None),
    ]
    for kind, source, docs in steps:
        mesh.apply(source, docs)
        _push(app, kind)
        _check(app, watches)


class NetworkMesh(Mesh):
    """ns-a's pods on network n1, ns-b's on n2, all with sidecars; a gateway per network."""

    NETWORKS = {"ns-a": "n1", "ns-b": "n2"}

    def endpoint_file(self, svc: str, ns: str) -> tuple[str, list[dict[str, Any]]]:
        source, docs = super().endpoint_file(svc, ns)
        for doc in docs:
            if doc["kind"] == "Pod":
                doc["metadata"]["labels"].update(
                    {
                        "topology.istio.io/network": self.NETWORKS[ns],
                        "security.istio.io/tlsMode": "istio",
                    }
                )
        return source, docs


def _gateway_service(network: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"eastwest-{network}",
            "namespace": "istio-system",
            "labels": {"topology.istio.io/network": network},
        },
        "spec": {"ports": [{"name": "tls", "port": 15443}], "externalIPs": [ip]},
    }


def test_network_changes_give_what_a_fresh_generation_gives(app: XdsdApp) -> None:
    """Split-horizon EDS is cached per network: patches and rebuilds stay exact."""
    mesh = NetworkMesh(app)
    for source, docs in mesh.files():
        mesh.apply(source, docs)
    for net, ip in (("n1", "192.0.2.1"), ("n2", "192.0.2.2")):
        mesh.apply(f"gw-{net}.yaml", [_gateway_service(net, ip)])
    app._rebuild(PushRequest(reason="initial"))
    watches = []
    for w in _proxies(app, mesh):
        meta = {"NAMESPACE": w.proxy.namespace, "NETWORK": NetworkMesh.NETWORKS[w.proxy.namespace]}
        if w.proxy.type.value == "router":
            meta["LABELS"] = {"istio": "ingressgateway"}
        watches.append(_Watch(app, parse_proxy(w.proxy.node_id, meta)))
    _check(app, watches)
    eds = {w.proxy.namespace: w.resources(ENDPOINT) for w in watches}
    gw = "192.0.2.2"
    # ns-a (n1) reaches ns-b's services through n2's gateway, ns-b directly.
    remote = eds["ns-a"].get("outbound|8080||svc-0.ns-b.svc.cluster.local")
    assert remote is not None and gw.encode() in remote.payload
    local = eds["ns-b"].get("outbound|8080||svc-0.ns-b.svc.cluster.local")
    assert local is not None and gw.encode() not in local.payload

    # A pod of n2 replaced: endpoint-only, each network's EDS patched.
    builds = app.cache.builds
    mesh.pods[("svc-0", "ns-b")][2] = ("svc-0-y", "10.2.0.9", "v1")
    mesh.apply(*mesh.endpoint_file("svc-0", "ns-b"))
    _push(app, "Pod", "EndpointSlice")
    _check(app, watches)
    assert app.cache.builds == builds

    # n2's gateway removed: a full push; n1's proxies lose n2's endpoints.
    mesh.apply("gw-n2.yaml", None)
    _push(app, "Service")
    _check(app, watches)
    # And back.
    mesh.apply("gw-n2.yaml", [_gateway_service("n2", gw)])
    _push(app, "Service")
    _check(app, watches)
