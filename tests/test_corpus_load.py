"""Istio's own sample config loads without exceptions (reads ../shared/corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.model.build import build_snapshot
from xdsd.model.store import ConfigStore
from xdsd.model.types import Protocol, Service
from xdsd.sources.folder import load_yaml

pytestmark = pytest.mark.corpus

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
ISTIO = CORPUS / "istio"


def corpus_files() -> list[Path]:
    return sorted(
        p
        for d in ("bookinfo", "config")
        for p in (ISTIO / d).glob("*.y*ml")
        if (ISTIO / d).is_dir()
    )


@pytest.fixture(autouse=True)
def _need_corpus() -> None:
    if not ISTIO.is_dir():
        pytest.skip(f"corpus not found at {ISTIO}")


# Without the corpus, one case skipped with the listed reason (an empty parameter set
# would skip with pytest's own, which tests/expected_skips.txt does not list).
CASES = [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in corpus_files()] or [
    pytest.param(
        None, id="no-corpus", marks=pytest.mark.skip(reason=f"corpus not found at {ISTIO}")
    )
]


@pytest.mark.parametrize("path", CASES)
def test_corpus_file_loads(path: Path) -> None:
    result = load_yaml(path.read_bytes(), path.name)
    assert result.complete, result.errors
    store = ConfigStore()
    store.apply_file(path.name, result)
    build_snapshot(store, generation=1)
    # Sample config is valid: anything reported is a skipped kind, not an error.
    assert [e for e in result.errors if e.severity == "error"] == []


def test_bookinfo_services() -> None:
    path = ISTIO / "bookinfo" / "bookinfo.yaml"
    store = ConfigStore()
    store.apply_file(str(path), load_yaml(path.read_bytes(), str(path)))
    snapshot = build_snapshot(store, generation=1)
    services = {s.name: s for s in snapshot.services}
    assert set(services) >= {"productpage", "reviews", "ratings", "details"}
    for name in ("productpage", "reviews", "ratings", "details"):
        svc = services[name]
        assert isinstance(svc, Service)
        assert svc.hostname == f"{name}.default.svc.cluster.local"
        assert [(p.name, p.port, p.protocol) for p in svc.ports] == [("http", 9080, Protocol.HTTP)]
        assert svc.selector == {"app": name}


def test_whole_corpus_in_one_store() -> None:
    store = ConfigStore()
    for path in corpus_files():
        store.apply_file(str(path), load_yaml(path.read_bytes(), str(path)))
    snapshot = build_snapshot(store, generation=1)
    assert snapshot.services and snapshot.configs_of("VirtualService")
    # Bookinfo ships alternative versions of the same objects: reported, not fatal.
    assert all("duplicate" in e.message for e in snapshot.errors if e.severity == "error")
