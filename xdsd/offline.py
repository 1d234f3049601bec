"""One-shot use of the pipeline without a server: `xdsd translate`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xdsd.cache.dump import dump_resources
from xdsd.cache.resources import PUSH_ORDER, Resource, ResourceSet
from xdsd.model.build import build_snapshot
from xdsd.model.proxy import parse_proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError
from xdsd.sources.folder import FolderSource
from xdsd.sources.jwks import fetch_once
from xdsd.translate.generate import GENERATORS, proxy_context


async def load_snapshot(config_dir: Path, *, fetch_jwks: bool = False) -> MeshSnapshot:
    """Read a config folder once and build its snapshot (with `fetch_jwks`, the key sets
    RequestAuthentications name by jwksUri fetched once, as `serve` would inline them)."""
    store = ConfigStore()
    change = await FolderSource(config_dir).poll()
    if change is not None:
        store.apply(change)
    if fetch_jwks:
        await fetch_once(store)
    return build_snapshot(store, generation=1)


def translate_snapshot(
    snapshot: MeshSnapshot, node_id: str, metadata: Mapping[str, Any]
) -> dict[str, ResourceSet]:
    """The resources one proxy would get; raises ValueError for a bad node id."""
    ctx = proxy_context(snapshot, parse_proxy(node_id, metadata))
    out = {}
    for type_url in PUSH_ORDER:
        generator = GENERATORS.get(type_url)
        if generator is None:
            continue
        resources = [Resource.from_message(n, type_url, m) for n, m in generator(ctx)]
        out[type_url] = ResourceSet.of(type_url, resources)
    return out


def translate_dir(
    config_dir: Path, node_id: str, metadata: Mapping[str, Any], *, fetch_jwks: bool = False
) -> tuple[dict[str, Any], tuple[ConfigError, ...]]:
    if not config_dir.is_dir():
        raise ValueError(f"config folder {config_dir} is not a directory")
    snapshot = asyncio.run(load_snapshot(config_dir, fetch_jwks=fetch_jwks))
    sets = translate_snapshot(snapshot, node_id, metadata)
    return dump_resources(sets), snapshot.errors
