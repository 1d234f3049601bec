"""The app's config pipeline: push on change, no push without one, resilience."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.meshgen import service, write_docs
from tests.test_admin_cli import settings
from xdsd.app import XdsdApp
from xdsd.demo import poll


async def test_unchanged_rewrite_pushes_nothing_and_a_change_pushes_once(tmp_path: Path) -> None:
    write_docs(tmp_path / "a.yaml", [service("a", "ns", [("http", 80)])])
    async with XdsdApp(settings(tmp_path)) as app:
        await app.ready.wait()
        first = app.snapshot.generation
        # Same objects, different bytes (a comment): no new snapshot.
        (tmp_path / "a.yaml").write_text("# touched\n" + (tmp_path / "a.yaml").read_text())
        write_docs(tmp_path / "b.yaml", [service("b", "ns", [("http", 80)])])

        async def has_b() -> bool:
            return any(s.name == "b" for s in app.snapshot.services)

        await poll(has_b, timeout=10, what="service b")
        assert app.snapshot.generation == first + 1


async def test_an_unexpected_source_error_is_survived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_docs(tmp_path / "a.yaml", [service("a", "ns", [("http", 80)])])
    async with XdsdApp(settings(tmp_path)) as app:
        await app.ready.wait()
        real_apply = app.store.apply
        failures = []

        def flaky(change: object) -> frozenset[object]:
            if not failures:
                failures.append(change)
                raise RuntimeError("boom")
            return real_apply(change)  # type: ignore[arg-type]

        monkeypatch.setattr(app.store, "apply", flaky)
        write_docs(tmp_path / "b.yaml", [service("b", "ns", [("http", 80)])])
        await poll(lambda: _true(bool(failures)), timeout=10, what="the injected failure")

        # The change that failed is not lost: the resumed source re-reads it.
        async def has_b() -> bool:
            return any(s.name == "b" for s in app.snapshot.services)

        await poll(has_b, timeout=15, what="service b after the failure")
        # And later edits are picked up.
        write_docs(tmp_path / "c.yaml", [service("c", "ns", [("http", 80)])])

        async def has_c() -> bool:
            return any(s.name == "c" for s in app.snapshot.services)

        await poll(has_c, timeout=15, what="service c after the failure")


async def _true(value: bool) -> bool:
    return value


async def test_a_frozen_heap_is_given_back_when_the_app_stops(tmp_path: Path) -> None:
    import dataclasses
    import gc

    write_docs(tmp_path / "a.yaml", [service("a", "ns", [("http", 80)])])
    callbacks, threshold = len(gc.callbacks), gc.get_threshold()
    app = XdsdApp(dataclasses.replace(settings(tmp_path), freeze_heap=True))
    try:
        async with app:
            await app.ready.wait()
            assert gc.get_freeze_count() > 0 and len(gc.callbacks) == callbacks + 1
            gc.collect()
            app._heap_chores()  # pauses reach the metric
            assert app.registry.get_sample_value("xdsd_gc_pause_seconds_count", {"generation": "2"})
    finally:
        gc.unfreeze()  # whatever happened, leave this process's GC as it was
    assert len(gc.callbacks) == callbacks
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
