"""MeshConfig as xdsd reads it: ConfigMap `istio` (key `mesh`) in the root namespace.

istiod reads the same ConfigMap (its `mesh` key is MeshConfig as YAML). One reader
here, memoized per snapshot, so every stage that honours a MeshConfig field sees
the same document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from xdsd.model.snapshot import MeshSnapshot

MESH_CONFIGMAP = "istio"
MESH_KEY = "mesh"


def parse_mesh(text: object) -> tuple[Mapping[str, Any], str | None]:
    """The MeshConfig document of a `mesh` value: ({...}, None), or ({}, why not)."""
    if not isinstance(text, str) or not text.strip():
        return {}, None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return {}, f"not YAML: {e}"
    if doc is None:
        return {}, None
    if not isinstance(doc, dict):
        return {}, "not a map"
    return doc, None


def mesh_config(snapshot: MeshSnapshot) -> Mapping[str, Any]:
    """MeshConfig from ConfigMap `istio` in the root namespace; {} if none or unreadable."""

    def build(s: MeshSnapshot) -> Mapping[str, Any]:
        for cm in s.configs_of("ConfigMap"):
            if cm.namespace == s.root_namespace and cm.name == MESH_CONFIGMAP:
                return parse_mesh((cm.spec.get("data") or {}).get(MESH_KEY))[0]
        return {}

    return snapshot.derived(f"{__name__}:mesh", build)
