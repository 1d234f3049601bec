"""Random YAML text and random structures: the loader reports, it never raises."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdsd.model.build import build_snapshot
from xdsd.model.parse import ParseResult, parse_document
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError
from xdsd.sources.folder import load_yaml

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: deterministic CI
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["http", "None", "10.0.0.1", "shop", "TCP", "UDP", "Ready", "True", "*", "."]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4),
    ),
    max_leaves=25,
)

KINDS = [
    ("v1", "Service"),
    ("v1", "Pod"),
    ("v1", "Endpoints"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Namespace"),
    ("v1", "List"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1beta1", "WorkloadEntry"),
    ("networking.istio.io/v1alpha3", "VirtualService"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("example.com/v1", "Widget"),
]

VALID: list[dict[str, Any]] = [
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {
            "clusterIP": "10.0.0.1",
            "selector": {"app": "reviews"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "tcp", "port": 81},
            ],
        },
    },
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "r1", "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]},
        "status": {"podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]},
    },
    {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "r-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews"},
        },
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {
                "addresses": ["10.0.0.2"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": "r1"},
            }
        ],
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {
            "hosts": ["a.example.com"],
            "resolution": "STATIC",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "endpoints": [{"address": "1.1.1.1", "ports": {"tls": 8443}, "locality": "r/z"}],
        },
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "vm", "namespace": "shop"},
        "spec": {"address": "10.1.0.1", "labels": {"app": "reviews"}, "ports": {"http": 9000}},
    },
]


def check(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert all(isinstance(e, ConfigError) for e in result.errors)
    for obj in result.objects:
        assert obj.ref.name
    # Whatever came out must also survive the store and the snapshot build.
    store = ConfigStore()
    store.apply_file("fuzz.yaml", result)
    build_snapshot(store, generation=1)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    check(load_yaml(text, "fuzz.yaml"))


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check(load_yaml(data, "fuzz.yaml"))


@FUZZ
@given(values)
def test_random_documents(doc: Any) -> None:
    check(parse_document(doc, "fuzz.yaml#0"))


@FUZZ
@given(st.sampled_from(KINDS), values, values, values)
def test_random_specs_for_every_kind(
    api_kind: tuple[str, str], meta: Any, spec: Any, extra: Any
) -> None:
    api, kind = api_kind
    doc = {
        "apiVersion": api,
        "kind": kind,
        "metadata": meta,
        "spec": spec,
        "status": extra,
        "ports": extra,
        "endpoints": extra,
        "subsets": extra,
        "items": extra,
        "data": extra,
    }
    check(parse_document(doc, "fuzz.yaml#0"))
    doc["metadata"] = {"name": "x", "namespace": "shop", "labels": meta}
    check(parse_document(doc, "fuzz.yaml#0"))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.data(), values)
def test_valid_documents_with_one_field_replaced(
    index: int, data: st.DataObject, value: Any
) -> None:
    doc = copy.deepcopy(VALID[index])
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    check(parse_document(doc, "fuzz.yaml#0"))


def test_valid_documents_build_together() -> None:
    store = ConfigStore()
    store.apply_file("valid.yaml", VALID)
    assert store.errors() == ()
    snapshot = build_snapshot(store, generation=1)
    assert {s.hostname for s in snapshot.services} == {
        "reviews.shop.svc.cluster.local",
        "a.example.com",
    }


VALID_TEXT = yaml.safe_dump_all(VALID, sort_keys=False)


@FUZZ
@given(st.integers(0, len(VALID_TEXT)), st.integers(0, 40), st.text(max_size=20))
def test_valid_yaml_text_with_a_random_splice(at: int, cut: int, insert: str) -> None:
    text = VALID_TEXT[:at] + insert + VALID_TEXT[at + cut :]
    check(load_yaml(text, "fuzz.yaml"))
