"""SnapshotBuilder reuses earlier work; after any sequence of changes its snapshot must
equal a fresh `build_snapshot`, and the store's per-kind answers must equal a naive
recomputation. Random objects from a small universe (so they collide: shared IPs,
slices naming pods that come and go, Nodes and Namespaces that change locality and
network, WorkloadEntries and ServiceEntries selecting pods), in two clusters."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meshgen import pod, service
from xdsd.model.build import SnapshotBuilder, build_snapshot
from xdsd.model.objects import key_of
from xdsd.model.parse import parse_documents
from xdsd.model.snapshot import MeshSnapshot, index_workloads
from xdsd.model.store import ConfigChange, ConfigStore, FileContent

NAMESPACES = ("a", "b")
IPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
APPS = ("x", "y")
NODES = ("n1", "n2")
ZONE = "topology.kubernetes.io/zone"
NETWORK = "topology.istio.io/network"


def _pod(i: int, ns: str, ip: str, app: str, ready: bool, node: str | None) -> dict[str, Any]:
    doc = pod(f"p{i}", ns, ip, {"app": app}, ports={"web": 9080}, ready=ready)
    if node:
        doc["spec"]["nodeName"] = node
    return doc


def _slice(
    svc: str, ns: str, targets: list[tuple[str, int | None]], node: str | None = None
) -> dict[str, Any]:
    eps = []
    for ip, target in targets:
        ep: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True}}
        if node:
            ep["nodeName"] = node
        if target is not None:
            ep["targetRef"] = {"kind": "Pod", "name": f"p{target}", "namespace": ns}
        eps.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-s",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080}],
        "endpoints": eps,
    }


def _entry(i: int, ns: str, mode: str, app: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": [f"ext{i}.example.com"],
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 9080}],
        "resolution": "DNS" if mode == "dns" else "STATIC",
    }
    if mode == "inline":
        spec["endpoints"] = [{"address": IPS[i % len(IPS)]}]
    elif mode == "selector":
        spec["workloadSelector"] = {"labels": {"app": app}}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": f"se{i}", "namespace": ns},
        "spec": spec,
    }


def _workload_entry(i: int, ns: str, ip: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": f"we{i}", "namespace": ns},
        "spec": {"address": ip, "labels": {"app": app}, "ports": {"http": 9081}},
    }


_ns = st.sampled_from(("a", "a", "a", "b"))
_ip = st.sampled_from(IPS)
_app = st.sampled_from(APPS)
_i = st.integers(0, 2)

DOCS = st.one_of(
    st.builds(
        lambda i, ns, app: service(
            f"s{i}", ns, [("http", 9080, "web")], selector=None if app is None else {"app": app}
        ),
        _i,
        _ns,
        st.one_of(st.none(), _app),
    ),
    st.builds(
        _pod, _i, _ns, _ip, _app, st.booleans(), st.one_of(st.none(), st.sampled_from(NODES))
    ),
    st.builds(
        lambda i, ns, targets: _slice(f"s{i}", ns, targets),
        _i,
        _ns,
        st.lists(st.tuples(_ip, st.one_of(st.none(), _i)), max_size=3),
    ),
    st.builds(
        lambda name, zone: {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {ZONE: zone}},
        },
        st.sampled_from(NODES),
        st.sampled_from(("z1", "z2")),
    ),
    st.builds(
        lambda ns, net: {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {NETWORK: net}},
        },
        st.sampled_from((*NAMESPACES, "istio-system")),
        st.sampled_from(("net1", "net2")),
    ),
    st.builds(_workload_entry, _i, _ns, _ip, _app),
    st.builds(_entry, _i, _ns, st.sampled_from(("inline", "selector", "dns")), _app),
)

# (cluster, file number, documents or None to remove the file)
OPS = st.lists(
    st.tuples(
        st.sampled_from(("main", "west")),
        st.integers(0, 4),
        st.one_of(st.none(), st.lists(DOCS, max_size=6)),
    ),
    min_size=1,
    max_size=30,
)


def _naive_objects(store: ConfigStore) -> list[object]:
    served = {}
    for _source, content in sorted(_files(store).items(), key=lambda sc: sc[0]):
        for obj in content:
            served.setdefault(key_of(obj.ref), obj)  # the first file by name wins
    return [served[k] for k in sorted(served)]


def _files(store: ConfigStore) -> dict[str, list[Any]]:
    return {c.source: list(c.result.objects) for c in store.replay() if c.result is not None}


def _check(
    builder: SnapshotBuilder, stores: dict[str, ConfigStore], generation: int
) -> MeshSnapshot:
    """The builder's next snapshot, checked against a fresh build."""
    kwargs: dict[str, Any] = {
        "generation": generation,
        "remotes": {"west": stores["west"]},
        "config_cluster_id": "main",
    }
    got = builder.build(stores["main"], **kwargs)
    want = build_snapshot(stores["main"], **kwargs)
    assert got.services == want.services
    assert list(got.endpoints.items()) == list(want.endpoints.items())
    assert got.workloads == want.workloads
    assert dict(got.configs) == dict(want.configs)
    assert got.errors == want.errors
    assert got == want
    assert dict(got._workload_index) == dict(index_workloads(got.workloads))
    return got


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_incremental_builds_equal_fresh_builds(ops: list[tuple[str, int, Any]]) -> None:
    stores = {"main": ConfigStore(), "west": ConfigStore()}
    builder = SnapshotBuilder()
    for generation, (cluster, n, docs) in enumerate(ops, 1):
        source = f"{cluster}/f{n}.yaml"
        result = None if docs is None else parse_documents(docs, source, cluster_id=cluster)
        stores[cluster].apply(ConfigChange((FileContent(source, result),)))
        for store in stores.values():
            assert list(store.objects()) == _naive_objects(store)
            for kind in store.kinds():
                assert list(store.objects(kind)) == [
                    o for o in _naive_objects(store) if o.ref.kind == kind
                ]
        _check(builder, stores, generation)


def _random_doc(rng: random.Random, slot: str) -> dict[str, Any]:
    kind, i = slot.split("-")
    n = int(i)
    ns = rng.choice(("a", "a", "b"))
    if kind == "svc":
        sel = None if rng.random() < 0.15 else {"app": APPS[n % 2]}
        return service(f"s{n}", ns, [("http", 9080, "web")], selector=sel)
    if kind == "pod":
        node = rng.choice((None, *NODES))
        return _pod(n, ns, rng.choice(IPS), rng.choice(APPS), rng.random() < 0.8, node)
    if kind == "slice":
        targets = [
            (rng.choice(IPS), rng.choice((None, 0, 1, 2, 3))) for _ in range(rng.randint(0, 3))
        ]
        return _slice(f"s{n}", ns, targets, rng.choice((None, *NODES)))
    if kind == "node":
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODES[n], "labels": {ZONE: rng.choice(("z1", "z2"))}},
        }
    if kind == "ns":
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ("a", "b", "istio-system")[n],
                "labels": {NETWORK: rng.choice(("net1", "net2"))},
            },
        }
    if kind == "we":
        return _workload_entry(n, ns, rng.choice(IPS), rng.choice(APPS))
    return _entry(n, ns, rng.choice(("inline", "selector", "dns")), rng.choice(APPS))


SLOTS = [
    *(f"svc-{i}" for i in range(2)),
    *(f"pod-{i}" for i in range(4)),
    *(f"slice-{i}" for i in range(2)),
    *(f"node-{i}" for i in range(2)),
    *(f"ns-{i}" for i in range(3)),
    "we-0",
    "se-0",
]


@pytest.mark.parametrize("seed", range(30))
def test_random_walks_of_single_object_files(seed: int) -> None:
    """Each object kept in a file of its own (as the Kubernetes source does), replaced or
    removed at random: long walks over a dense universe."""
    rng = random.Random(seed)
    stores = {"main": ConfigStore(), "west": ConfigStore()}
    builder = SnapshotBuilder()
    endpoints_seen = 0
    for generation in range(1, 81):
        cluster = rng.choice(("main", "main", "west"))
        slot = rng.choice(SLOTS)
        source = f"{cluster}/{slot}"
        docs = None if rng.random() < 0.2 else [_random_doc(rng, slot)]
        result = None if docs is None else parse_documents(docs, source, cluster_id=cluster)
        stores[cluster].apply(ConfigChange((FileContent(source, result),)))
        got = _check(builder, stores, generation)
        endpoints_seen += sum(len(v) for v in got.endpoints.values())
    assert endpoints_seen > 0
