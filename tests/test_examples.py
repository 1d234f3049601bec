"""The bundled example (examples/mesh): valid, with traffic rules, and entirely local."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xdsd.cache.dump import dump_resources
from xdsd.client import validate_paths
from xdsd.offline import load_snapshot, translate_snapshot

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mesh"
DEMO_NODE = "sidecar~127.0.0.1~demo-client.shop~shop.svc.cluster.local"
PROXIES = [
    (DEMO_NODE, {"NAMESPACE": "shop", "INTERCEPTION_MODE": "NONE", "LABELS": {"app": "demo"}}),
    ("sidecar~127.0.0.11~frontend-7d9f.shop~shop.svc.cluster.local", {"NAMESPACE": "shop"}),
]


def _walk(doc: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _walk(value)


def _dump(node_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    snapshot = asyncio.run(load_snapshot(EXAMPLE))
    dump: dict[str, Any] = json.loads(
        json.dumps(dump_resources(translate_snapshot(snapshot, node_id, metadata)))
    )
    return dump


def test_the_example_validates_clean() -> None:
    problems = asyncio.run(validate_paths([EXAMPLE]))
    assert problems == []


@pytest.mark.parametrize(("node_id", "metadata"), PROXIES)
def test_the_example_sends_nothing_off_the_machine(node_id: str, metadata: dict[str, Any]) -> None:
    """No DNS cluster (Envoy would ask the system resolver) and only loopback upstreams."""
    dump = _dump(node_id, metadata)
    clusters = [v for k, v in _walk(dump) if k == "cluster" and isinstance(v, dict)]
    assert clusters
    for cluster in clusters:
        assert cluster.get("type") not in ("STRICT_DNS", "LOGICAL_DNS"), cluster["name"]
        assert "cluster_type" not in cluster, cluster["name"]
    upstream = [
        v["address"]
        for section in dump["configs"]
        if "Listeners" not in section["@type"]  # listeners bind, they do not connect
        for k, v in _walk(section)
        if k == "socket_address"
    ]
    assert upstream
    for address in upstream:
        assert ipaddress.ip_address(address).is_loopback, address


def test_the_example_routes_reviews_by_subset() -> None:
    dump = _dump(*PROXIES[0])
    names = {v for k, v in _walk(dump) if k == "name" and isinstance(v, str)}
    host = "reviews.shop.svc.cluster.local"
    assert {f"outbound|9080|v1|{host}", f"outbound|9080|v2|{host}"} <= names
    weights = [
        [(c["name"].split("|")[2], c["weight"]) for c in v["clusters"]]
        for k, v in _walk(dump)
        if k == "weighted_clusters"
    ]
    assert [("v1", 80), ("v2", 20)] in weights
