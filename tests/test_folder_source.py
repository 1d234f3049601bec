from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import yaml

from xdsd.model.build import build_snapshot
from xdsd.model.store import ConfigStore
from xdsd.model.types import Service
from xdsd.sources.folder import FolderSource, load_yaml

_clock = itertools.count(1)


def write(path: Path, text: str) -> Path:
    """Write and give the file a strictly newer mtime (coarse file system clocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    ns = 1_700_000_000 * 10**9 + next(_clock) * 10**9
    os.utime(path, ns=(ns, ns))
    return path


def svc(name: str, port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def port_of(store: ConfigStore, name: str) -> int | None:
    obj = store.get("Service", "shop", name)
    return obj.ports[0].port if isinstance(obj, Service) else None


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_initial_load_reads_yaml_recursively_in_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", dump(svc("one"), svc("two")))
    write(tmp_path / "a" / "c.yml", dump(svc("three")))
    write(tmp_path / ".hidden.yaml", dump(svc("hidden")))
    write(tmp_path / ".git" / "x.yaml", dump(svc("git")))
    write(tmp_path / "notes.txt", "not yaml")
    src = FolderSource(tmp_path)
    change = await src.poll()
    assert change is not None and change.synced
    root = tmp_path.as_posix()
    assert [f.source for f in change.files] == [f"{root}/a/c.yml", f"{root}/b.yaml"]
    assert change.kinds == frozenset({"Service"})
    store = ConfigStore()
    store.apply(change)
    assert [o.ref.name for o in store.objects()] == ["one", "three", "two"]
    assert store.get("Service", "shop", "two").ref.source == f"{root}/b.yaml#1"  # type: ignore[union-attr]


async def test_polls_report_only_real_changes(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", dump(svc("one")))
    write(tmp_path / "b.yaml", dump(svc("two")))
    src = FolderSource(tmp_path)
    store = ConfigStore()
    store.apply(await src.poll())  # type: ignore[arg-type]
    assert await src.poll() is None
    # Touched, same bytes: nothing to report.
    write(a, a.read_text())
    assert await src.poll() is None

    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {},
    }
    write(a, dump(svc("one", 81), vs))
    change = await src.poll()
    assert change is not None and not change.synced
    assert [f.source for f in change.files] == [a.as_posix()]
    assert change.kinds == frozenset({"Service", "VirtualService"})
    store.apply(change)
    assert port_of(store, "one") == 81

    (tmp_path / "b.yaml").unlink()
    change = await src.poll()
    assert change is not None
    assert [(f.source, f.result) for f in change.files] == [
        ((tmp_path / "b.yaml").as_posix(), None)
    ]
    assert change.kinds == frozenset({"Service"})
    store.apply(change)
    assert store.get("Service", "shop", "two") is None


async def test_yaml_syntax_error_keeps_earlier_documents_and_old_objects(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", dump(svc("one"), svc("two"), svc("three")))
    good = write(tmp_path / "b.yaml", dump(svc("four")))
    src = FolderSource(tmp_path)
    store = ConfigStore()
    store.apply(await src.poll())  # type: ignore[arg-type]

    broken = (
        dump(svc("one", 81))
        + "---\nkind: Service\nmetadata: {name: [unclosed\n---\n"
        + dump(svc("three", 83))
    )
    write(a, broken)
    change = await src.poll()
    assert change is not None and [f.source for f in change.files] == [a.as_posix()]
    result = change.files[0].result
    assert result is not None and not result.complete
    store.apply(change)
    assert port_of(store, "one") == 81  # before the error: loaded
    assert port_of(store, "two") == 80  # unread: kept
    assert port_of(store, "three") == 80  # after the error: not read, kept
    assert port_of(store, "four") == 80  # other files unaffected
    err = next(e for e in store.errors() if "YAML error" in e.message)
    # PyYAML notices the unclosed list at the next "---".
    line = len(dump(svc("one", 81)).splitlines()) + 4
    assert err.source == f"{a.as_posix()}#1" and f"line {line}," in err.message
    assert good.exists()

    write(a, dump(svc("one", 81), svc("three", 83)))
    store.apply(await src.poll())  # type: ignore[arg-type]
    assert (port_of(store, "two"), port_of(store, "three")) == (None, 83)
    assert not any("YAML error" in e.message for e in store.errors())


async def test_changes_generator_marks_synced_and_follows_edits(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", dump(svc("one")))
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0)

    src = FolderSource(tmp_path, poll_interval=0.25, sleep=fake_sleep, watch=False)
    assert not src.synced
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert first.synced and src.synced and src.synced.is_set()
        assert len(first.files) == 1 and sleeps == []
        write(tmp_path / "b.yaml", dump(svc("two")))
        second = await asyncio.wait_for(anext(changes), timeout=10)
        assert not second.synced
        assert [f.source for f in second.files] == [(tmp_path / "b.yaml").as_posix()]
        assert sleeps and set(sleeps) == {0.25}
    finally:
        await changes.aclose()


async def test_missing_folder_is_an_empty_initial_load(tmp_path: Path) -> None:
    root = tmp_path / "later"
    src = FolderSource(root, sleep=no_sleep)
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert first.synced and first.files == ()
        write(root / "a.yaml", dump(svc("one")))
        second = await asyncio.wait_for(anext(changes), timeout=10)
        assert [f.source for f in second.files] == [(root / "a.yaml").as_posix()]
    finally:
        await changes.aclose()


async def test_list_kind_is_expanded(tmp_path: Path) -> None:
    write(
        tmp_path / "l.yaml",
        dump({"apiVersion": "v1", "kind": "List", "items": [svc("one"), svc("two")]}),
    )
    store = ConfigStore()
    store.apply(await FolderSource(tmp_path).poll())  # type: ignore[arg-type]
    assert [o.ref.name for o in store.objects()] == ["one", "two"]


def test_load_yaml_never_raises() -> None:
    for data in (
        b"\xff\xfe\x00garbage\x00",
        b"a: b\n\tc: d\n",
        "key: [1, 2\n",
        "t: !!timestamp 2020-13-45\n",
        "a: &x [*x]\n",
        "- " * 5000 + "x",
        "{" * 5000,
        "!!python/object:os.system {}",
    ):
        result = load_yaml(data, "f.yaml")
        assert result.objects == ()
        assert all(e.source.startswith("f.yaml") for e in result.errors)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mesh"


async def test_example_mesh_folder_builds() -> None:
    examples = EXAMPLES
    store = ConfigStore()
    store.apply(await FolderSource(examples).poll())  # type: ignore[arg-type]
    snapshot = build_snapshot(store, generation=1)
    assert len(snapshot.services) >= 4
    assert all(s.ports for s in snapshot.services)
    assert not [e for e in snapshot.errors if e.severity == "error"]
