"""The folder source's file events (watchfiles), and its fallback to polling.

The poll interval is an hour unless a test polls on purpose: whatever these tests
see within their few-seconds deadlines came from file events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.test_folder_source import dump, port_of, svc, write
from xdsd.model.store import ConfigChange, ConfigStore
from xdsd.sources import folder
from xdsd.sources.folder import FolderSource

HOUR = 3600.0
WATCH_THREAD = "xdsd-folder-watch"


def posix(path: Path) -> str:
    return path.as_posix()


async def until(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


async def changes_until(
    changes: AsyncGenerator[ConfigChange, None],
    sources: Iterable[str],
    store: ConfigStore | None = None,
    timeout: float = 5.0,
) -> list[ConfigChange]:
    """Changes until each of `sources` was reported (events may come in more than one batch)."""
    missing = set(sources)
    seen: list[ConfigChange] = []
    async with asyncio.timeout(timeout):
        while missing:
            change = await anext(changes)
            if store is not None:
                store.apply(change)
            seen.append(change)
            missing -= {f.source for f in change.files}
    return seen


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WATCH_THREAD)]


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Counts full scans (folder listings) and file refreshes (stat seen, maybe read)."""
    seen: dict[str, list[str]] = {"scans": [], "refreshed": []}
    list_files = folder._list_files
    refresh = folder._refresh

    def counting_list(root: Path) -> list[tuple[str, Path]]:
        seen["scans"].append(posix(root))
        return list_files(root)

    def counting_refresh(source: str, *args: Any) -> Any:
        seen["refreshed"].append(source)
        return refresh(source, *args)

    monkeypatch.setattr(folder, "_list_files", counting_list)
    monkeypatch.setattr(folder, "_refresh", counting_refresh)
    return seen


async def test_file_events_are_seen_without_polling(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", dump(svc("one")))
    src = FolderSource(tmp_path, poll_interval=HOUR)
    store = ConfigStore()
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        store.apply(first)
        assert first.synced and src.watching

        b = write(tmp_path / "b.yml", dump(svc("two")))
        await changes_until(changes, [posix(b)], store)
        assert port_of(store, "two") == 80

        write(a, dump(svc("one", 81)))
        await changes_until(changes, [posix(a)], store)
        assert port_of(store, "one") == 81

        b.unlink()
        seen = await changes_until(changes, [posix(b)], store)
        assert (posix(b), None) in [(f.source, f.result) for c in seen for f in c.files]
        assert port_of(store, "two") is None

        # An atomic write: a dot-file renamed into place.
        tmp = write(tmp_path / ".x.yaml.tmp", dump(svc("three")))
        x = tmp_path / "x.yaml"
        tmp.rename(x)
        await changes_until(changes, [posix(x)], store)
        assert port_of(store, "three") == 80
        # And one that replaces a file that exists.
        tmp = write(tmp_path / ".x.yaml.tmp", dump(svc("three", 83)))
        tmp.replace(x)
        await changes_until(changes, [posix(x)], store)
        assert port_of(store, "three") == 83
        assert src.watching
    finally:
        await changes.aclose()


async def test_a_file_event_rereads_only_that_file(
    tmp_path: Path, scans: dict[str, list[str]]
) -> None:
    files = [write(tmp_path / f"ns{i % 3}" / f"f{i}.yaml", dump(svc(f"s{i}"))) for i in range(30)]
    src = FolderSource(tmp_path, poll_interval=HOUR)
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert len(first.files) == 30 and len(scans["refreshed"]) == 30
        kept = dict(src._states)
        scans["scans"].clear()
        scans["refreshed"].clear()

        (tmp_path / "notes.txt").write_text("not yaml: no reason to look at anything")
        target = files[7]
        write(target, dump(svc("s7", 8080)))
        seen = await changes_until(changes, [posix(target)])
        assert [f.source for c in seen for f in c.files] == [posix(target)]
        assert scans["scans"] == []  # no full scan
        assert set(scans["refreshed"]) == {posix(target)}
        # The other files' states are the very same objects.
        assert all(src._states[s] is state for s, state in kept.items() if s != posix(target))
        assert src._states[posix(target)] is not kept[posix(target)]

        # An atomic write: the dot-file's events are not looked at (no file is a
        # symlink), the rename names the file.
        scans["refreshed"].clear()
        target = files[12]
        tmp = write(target.with_name(f".{target.name}.tmp"), dump(svc("s12", 8080)))
        os.replace(tmp, target)
        seen = await changes_until(changes, [posix(target)])
        assert [f.source for c in seen for f in c.files] == [posix(target)]
        assert scans["scans"] == []
        assert set(scans["refreshed"]) == {posix(target)}
    finally:
        await changes.aclose()


async def test_a_new_subdirectory_and_a_moved_away_one(
    tmp_path: Path, scans: dict[str, list[str]]
) -> None:
    write(tmp_path / "a.yaml", dump(svc("one")))
    src = FolderSource(tmp_path, poll_interval=HOUR)
    store = ConfigStore()
    changes = src.changes()
    try:
        store.apply(await asyncio.wait_for(anext(changes), timeout=10))
        scans["scans"].clear()
        # Files written right after their folder was made: the watch of the new
        # folder may come after them, so the folder's event scans.
        c = write(tmp_path / "sub" / "deeper" / "c.yaml", dump(svc("two")))
        d = write(tmp_path / "sub" / "d.yaml", dump(svc("three")))
        await changes_until(changes, [posix(c), posix(d)], store)
        assert scans["scans"]
        assert (port_of(store, "two"), port_of(store, "three")) == (80, 80)

        # Moving a folder out gives one event, for the folder: its files are gone.
        (tmp_path / "sub").rename(tmp_path.parent / f"{tmp_path.name}-sub-moved")
        seen = await changes_until(changes, [posix(c), posix(d)], store)
        assert {f.source for ch in seen for f in ch.files if f.result is None} == {
            posix(c),
            posix(d),
        }
        assert (port_of(store, "two"), port_of(store, "three")) == (None, None)
        assert port_of(store, "one") == 80
    finally:
        await changes.aclose()
        shutil.rmtree(tmp_path.parent / f"{tmp_path.name}-sub-moved", ignore_errors=True)


def configmap_version(root: Path, version: str, text: str) -> None:
    """A kubelet-style ConfigMap update: new data folder, `..data` swapped by a rename."""
    data = root / f"..{version}"
    data.mkdir()
    (data / "mesh.yaml").write_text(text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.symlink(data.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    if not (root / "mesh.yaml").is_symlink():
        os.symlink("..data/mesh.yaml", root / "mesh.yaml")
    if old is not None:
        shutil.rmtree(root / old)


async def test_a_configmap_data_swap_is_seen(tmp_path: Path) -> None:
    configmap_version(tmp_path, "2024_01_01_00_00_00.1", dump(svc("one")))
    src = FolderSource(tmp_path, poll_interval=HOUR)
    store = ConfigStore()
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        store.apply(first)
        mesh = posix(tmp_path / "mesh.yaml")
        assert [f.source for f in first.files] == [mesh]  # the hidden data folders are skipped
        assert port_of(store, "one") == 80

        configmap_version(tmp_path, "2024_01_01_00_01_00.2", dump(svc("one", 81)))
        await changes_until(changes, [mesh], store)
        assert port_of(store, "one") == 81
        configmap_version(tmp_path, "2024_01_01_00_02_00.3", dump(svc("one", 82)))
        await changes_until(changes, [mesh], store)
        assert port_of(store, "one") == 82
        assert src.watching
    finally:
        await changes.aclose()


async def test_the_safety_net_scan_finds_what_events_missed(tmp_path: Path) -> None:
    # A write through a hard link outside the folder makes no event in it.
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    root.mkdir()
    write(outside / "a.yaml", dump(svc("one")))
    os.link(outside / "a.yaml", root / "a.yaml")
    src = FolderSource(root, poll_interval=HOUR, rescan_interval=0.3)
    store = ConfigStore()
    changes = src.changes()
    try:
        store.apply(await asyncio.wait_for(anext(changes), timeout=10))
        write(outside / "a.yaml", dump(svc("one", 81)))
        await changes_until(changes, [posix(root / "a.yaml")], store)
        assert port_of(store, "one") == 81
        assert src.watching  # a fresh watch after the scan
    finally:
        await changes.aclose()


async def test_cancelling_changes_stops_the_watch_thread(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", dump(svc("one")))
    assert watch_threads() == []
    before = set(threading.enumerate())
    src = FolderSource(tmp_path, poll_interval=HOUR)
    got: list[ConfigChange] = []

    async def consume() -> None:
        async for change in src.changes():
            got.append(change)

    task = asyncio.create_task(consume())
    await until(lambda: got and src.watching, what="the initial load")
    assert len(watch_threads()) == 1
    write(tmp_path / "b.yaml", dump(svc("two")))
    await until(lambda: len(got) == 2, what="the event")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not src.watching
    # Only the loop's executor threads (asyncio.to_thread) may stay.
    await until(
        lambda: (
            not [t for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio")]
        ),
        what="the watch thread to end",
    )

    # Closing the generator stops it too.
    changes = src.changes()
    await asyncio.wait_for(anext(changes), timeout=10)
    assert len(watch_threads()) == 1
    await changes.aclose()
    await until(lambda: not watch_threads(), what="the watch thread to end")


async def test_polling_when_watching_is_off(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", dump(svc("one")))
    sleeps: list[float] = []

    async def short_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0.01)

    src = FolderSource(tmp_path, poll_interval=HOUR, sleep=short_sleep, watch=False)
    changes = src.changes()
    try:
        await asyncio.wait_for(anext(changes), timeout=10)
        assert not src.watching and watch_threads() == []
        b = write(tmp_path / "b.yaml", dump(svc("two")))
        await changes_until(changes, [posix(b)])
        assert sleeps and set(sleeps) == {HOUR}  # found by polling
        assert watch_threads() == []
    finally:
        await changes.aclose()


async def test_polling_when_the_watch_cannot_be_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_watch(*args: object) -> object:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(folder, "RustNotify", no_watch)
    write(tmp_path / "a.yaml", dump(svc("one")))
    sleeps: list[float] = []

    async def short_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0.01)

    src = FolderSource(tmp_path, poll_interval=0.25, sleep=short_sleep, rescan_interval=HOUR)
    changes = src.changes()
    caplog.set_level(logging.INFO, logger="xdsd.sources.folder")
    try:
        await asyncio.wait_for(anext(changes), timeout=10)
        assert not src.watching
        b = write(tmp_path / "b.yaml", dump(svc("two")))
        await changes_until(changes, [posix(b)])
        assert sleeps and set(sleeps) == {0.25}
        c = write(tmp_path / "c.yaml", dump(svc("three")))
        await changes_until(changes, [posix(c)])
        why = [r.getMessage() for r in caplog.records if "cannot watch it" in r.getMessage()]
        assert len(why) == 1 and "inotify watch limit reached" in why[0], why  # logged once
        assert "polling every 0.25s" in why[0]
        await until(lambda: not watch_threads(), what="the failed watch's thread to end")
    finally:
        await changes.aclose()


async def test_a_folder_that_appears_later_is_then_watched(tmp_path: Path) -> None:
    root = tmp_path / "later"

    async def short_sleep(delay: float) -> None:
        await asyncio.sleep(0.01)

    src = FolderSource(root, poll_interval=HOUR, sleep=short_sleep)
    store = ConfigStore()
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert first.synced and first.files == () and not src.watching

        async def three_files(*names: str) -> list[Path]:
            # The first is found by a poll, which then starts watching the folder; from
            # then on polling would take an hour, so the third arrives by an event.
            written = []
            for i, name in enumerate(names):
                path = write(root / f"{name}.yaml", dump(svc(name)))
                await changes_until(changes, [posix(path)], store)
                written.append(path)
                if i == 1:
                    assert src.watching
            assert port_of(store, names[-1]) == 80
            return written

        paths = await three_files("one", "two", "three")
        # The folder removed and made again: watched again.
        shutil.rmtree(root)
        await changes_until(changes, [posix(p) for p in paths], store)
        assert port_of(store, "one") is None
        await three_files("four", "five", "six")
    finally:
        await changes.aclose()


async def test_a_linked_folder_is_not_read(tmp_path: Path) -> None:
    """os.walk does not enter linked folders; events from inside one change nothing."""
    elsewhere = tmp_path / "elsewhere"
    root = tmp_path / "root"
    write(elsewhere / "x.yaml", dump(svc("linked")))
    write(root / "a.yaml", dump(svc("one")))
    os.symlink(elsewhere, root / "link")
    src = FolderSource(root, poll_interval=HOUR)
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert [f.source for f in first.files] == [posix(root / "a.yaml")]
        write(elsewhere / "x.yaml", dump(svc("linked", 81)))
        b = write(root / "b.yaml", dump(svc("two")))
        seen = await changes_until(changes, [posix(b)])
        assert [f.source for c in seen for f in c.files] == [posix(b)]
    finally:
        await changes.aclose()


async def test_a_symlinked_file_follows_its_target(
    tmp_path: Path, scans: dict[str, list[str]]
) -> None:
    target = write(tmp_path / "variants" / "v1.yaml", dump(svc("one")))
    alias = tmp_path / "current.yaml"
    os.symlink("variants/v1.yaml", alias)
    write(tmp_path / "other.yaml", dump(svc("two")))
    src = FolderSource(tmp_path, poll_interval=HOUR)
    changes = src.changes()
    try:
        first = await asyncio.wait_for(anext(changes), timeout=10)
        assert len(first.files) == 3
        scans["scans"].clear()
        scans["refreshed"].clear()
        # The event names the target only; the link shows the same new bytes.
        write(target, dump(svc("one", 81)))
        seen = await changes_until(changes, [posix(target), posix(alias)])
        results = {f.source: f.result for c in seen for f in c.files}
        assert set(results) == {posix(target), posix(alias)}
        assert scans["scans"] == []
        assert set(scans["refreshed"]) == {posix(target), posix(alias)}
    finally:
        await changes.aclose()
