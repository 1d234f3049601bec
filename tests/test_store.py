from __future__ import annotations

from typing import Any

from xdsd.model.parse import ParseResult, parse_documents
from xdsd.model.store import LAST_GOOD_NOTE, ConfigChange, ConfigStore, FileContent
from xdsd.model.types import Service


def svc(name: str, port: int = 80, ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


def vs(name: str, host: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]},
    }


def port_of(store: ConfigStore, name: str) -> int | None:
    obj = store.get("Service", "shop", name)
    return obj.ports[0].port if isinstance(obj, Service) else None


def test_apply_file_replaces_that_files_objects() -> None:
    store = ConfigStore()
    changed = store.apply_file("a.yaml", [svc("one"), svc("two"), vs("route")])
    assert changed == {
        ("Service", "shop", "one"),
        ("Service", "shop", "two"),
        ("VirtualService", "shop", "route"),
    }
    assert store.generation == 1 and len(store) == 3
    assert [o.ref.name for o in store.objects("Service")] == ["one", "two"]
    assert store.get("Service", "shop", "one") is not None
    assert store.get("Service", "shop", "one").ref.source == "a.yaml#0"  # type: ignore[union-attr]

    changed = store.apply_file("a.yaml", [svc("one", 81)])
    assert changed == {
        ("Service", "shop", "one"),
        ("Service", "shop", "two"),
        ("VirtualService", "shop", "route"),
    }
    assert port_of(store, "one") == 81 and store.get("Service", "shop", "two") is None
    assert store.generation == 2 and store.sources() == ("a.yaml",)


def test_unchanged_content_does_not_bump_generation() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one"), vs("route")])
    assert store.apply_file("a.yaml", [svc("one"), vs("route")]) == frozenset()
    assert store.generation == 1
    # An empty change, or removing a file that is unknown, changes nothing.
    assert store.apply(ConfigChange(())) == frozenset()
    assert store.remove_file("nope.yaml") == frozenset()
    assert store.generation == 1


def test_remove_file_removes_its_objects() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one")])
    store.apply_file("b.yaml", [svc("two")])
    assert store.remove_file("a.yaml") == {("Service", "shop", "one")}
    assert [o.ref.name for o in store.objects()] == ["two"]
    assert store.generation == 3 and store.sources() == ("b.yaml",)


def test_last_good_version_is_served_while_the_document_is_broken() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one", 80), svc("two", 80)])
    broken = svc("one", 80)
    broken["spec"]["ports"][0]["port"] = 99999
    assert store.apply_file("a.yaml", [broken, svc("two", 81)]) == {("Service", "shop", "two")}
    assert port_of(store, "one") == 80  # kept
    assert port_of(store, "two") == 81
    (err,) = store.errors()
    assert err.path == "spec.ports[0].port" and err.object == "Service shop/one"
    assert err.message.endswith(LAST_GOOD_NOTE)

    # Fixed: the new version replaces it and the error goes away.
    store.apply_file("a.yaml", [svc("one", 82), svc("two", 81)])
    assert port_of(store, "one") == 82 and store.errors() == ()

    # Removing the object from the file removes it (no last good for absent objects).
    store.apply_file("a.yaml", [svc("two", 81)])
    assert store.get("Service", "shop", "one") is None


def test_broken_object_that_never_parsed_is_absent_and_reported_plainly() -> None:
    store = ConfigStore()
    broken = svc("one")
    broken["spec"]["ports"] = "80"
    assert store.apply_file("a.yaml", [broken]) == frozenset()
    assert store.get("Service", "shop", "one") is None
    (err,) = store.errors()
    assert not err.message.endswith(LAST_GOOD_NOTE)
    assert store.generation == 0


def test_incomplete_file_keeps_objects_it_could_not_read() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one", 80), svc("two", 80)])
    # A YAML syntax error in document 1: only document 0 was read.
    partial = parse_documents([svc("one", 81)], "a.yaml", complete=False)
    assert store.apply_file("a.yaml", partial) == {("Service", "shop", "one")}
    assert port_of(store, "one") == 81 and port_of(store, "two") == 80
    assert any("kept 1 objects" in e.message for e in store.errors())
    # A complete read without "two" removes it.
    store.apply_file("a.yaml", [svc("one", 81)])
    assert store.get("Service", "shop", "two") is None


def test_duplicates_first_source_by_name_wins_regardless_of_order() -> None:
    for order in (("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")):
        store = ConfigStore()
        for source in order:
            store.apply_file(source, [svc("one", 80 if source == "a.yaml" else 90)])
        assert port_of(store, "one") == 80
        (err,) = store.errors()
        assert err.source == "b.yaml#0" and "duplicate of the object in a.yaml#0" in err.message
        assert err.object == "Service shop/one"


def test_duplicate_takes_over_when_the_winner_goes_away() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one", 80)])
    store.apply_file("b.yaml", [svc("one", 90)])
    gen = store.generation
    assert gen == 1  # the loser changed nothing served
    assert store.remove_file("a.yaml") == {("Service", "shop", "one")}
    assert port_of(store, "one") == 90 and store.errors() == ()
    assert store.generation == gen + 1


def test_duplicate_within_one_file() -> None:
    store = ConfigStore()
    store.apply_file("a.yaml", [svc("one", 80), svc("one", 90)])
    assert port_of(store, "one") == 80
    (err,) = store.errors()
    assert err.source == "a.yaml#1" and "a.yaml#0" in err.message


def test_batch_apply_bumps_generation_once() -> None:
    store = ConfigStore()
    change = ConfigChange(
        (
            FileContent("a.yaml", parse_documents([svc("one")], "a.yaml")),
            FileContent("b.yaml", parse_documents([svc("two")], "b.yaml")),
        ),
        frozenset({"Service"}),
        synced=True,
    )
    assert len(store.apply(change)) == 2 and store.generation == 1
    removal = ConfigChange((FileContent("a.yaml", None), FileContent("b.yaml", None)))
    assert len(store.apply(removal)) == 2 and store.generation == 2 and len(store) == 0


def test_errors_are_sorted_by_source_and_warnings_kept() -> None:
    store = ConfigStore()
    store.apply_file(
        "b.yaml", [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}]
    )
    store.apply_file("a.yaml", [[1]])
    assert [(e.source, e.severity) for e in store.errors()] == [
        ("a.yaml#0", "error"),
        ("b.yaml#0", "warning"),
    ]


def test_parse_options_apply_to_raw_documents() -> None:
    store = ConfigStore(default_namespace="apps", domain_suffix="corp")
    doc = svc("one")
    del doc["metadata"]["namespace"]
    store.apply_file("a.yaml", [doc])
    obj = store.get("Service", "apps", "one")
    assert isinstance(obj, Service) and obj.hostname == "one.apps.svc.corp"
    assert store.apply_file("a.yaml", ParseResult()) == {("Service", "apps", "one")}


def test_objects_of_a_kind_stay_in_order_as_files_come_go_and_overlap() -> None:
    """Files of a few and of many objects (both ways of keeping the order), overlapping
    names (duplicates across files), removals: objects(kind) is always sorted and exact."""
    import random

    from tests.meshgen import pod

    rng = random.Random(7)
    store = ConfigStore()
    files: dict[str, list[dict[str, object]]] = {}
    for _ in range(300):
        name = f"f{rng.randrange(5)}"
        if rng.random() < 0.1:
            store.remove_file(name)
            files.pop(name, None)
            continue
        picked = rng.sample(range(120), rng.choice((0, 3, 40)))
        docs = [pod(f"p{i}", rng.choice("ab"), "10.0.0.1", {"app": "x"}) for i in picked]
        store.apply_file(name, docs)
        files[name] = docs  # type: ignore[assignment]
        want = sorted(
            {
                ("Pod", d["metadata"]["namespace"], d["metadata"]["name"])  # type: ignore[index]
                for ds in files.values()
                for d in ds
            }
        )
        assert [(o.ref.kind, o.ref.namespace, o.ref.name) for o in store.objects("Pod")] == want
