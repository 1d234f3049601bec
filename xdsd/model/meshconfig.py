"""MeshConfig and MeshNetworks as istiod reads them: ConfigMap `istio` in the root namespace.

Key `mesh` holds MeshConfig (extensionProviders, defaultConfig, trustDomain,
discoverySelectors, ...), key `meshNetworks` holds MeshNetworks (`networks: {NAME:
{endpoints, gateways}}`). One reader for every stage, memoized per snapshot, so
every stage that honours a field sees the same document. A key whose text is not
YAML, or not a mapping, reads as empty and is reported by `meshconfig_problems`
with its field path (`data.mesh`, `data.meshNetworks`): nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError, ConfigObject

MESH_CONFIGMAP = "istio"
MESH_KEY = "mesh"
NETWORKS_KEY = "meshNetworks"
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def parse_mesh(text: object) -> tuple[Mapping[str, Any], str | None]:
    """The document of a `mesh` (or `meshNetworks`) value: ({...}, None), or ({}, why not)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}, None
    if not isinstance(text, str):
        return {}, "must be a string of YAML"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return {}, f"not YAML: {str(e).splitlines()[0]}"
    if doc is None:
        return {}, None
    if not isinstance(doc, dict):
        return {}, f"must be a mapping, not a {type(doc).__name__}"
    return doc, None


def mesh_configmap(snapshot: MeshSnapshot) -> ConfigObject | None:
    """ConfigMap `istio` of the root namespace, if any."""
    for cm in snapshot.configs_of("ConfigMap"):
        if cm.namespace == snapshot.root_namespace and cm.name == MESH_CONFIGMAP:
            return cm
    return None


def _read(snapshot: MeshSnapshot, key: str) -> tuple[Mapping[str, Any], str | None]:
    def build(s: MeshSnapshot) -> tuple[Mapping[str, Any], str | None]:
        cm = mesh_configmap(s)
        data = cm.spec.get("data") if cm is not None else None
        return parse_mesh(data.get(key) if isinstance(data, Mapping) else None)

    return snapshot.derived(f"{__name__}:{key}", build)


def mesh_config(snapshot: MeshSnapshot) -> Mapping[str, Any]:
    """MeshConfig (key `mesh`); {} if none or unreadable."""
    return _read(snapshot, MESH_KEY)[0]


def mesh_networks_doc(snapshot: MeshSnapshot) -> Mapping[str, Any]:
    """MeshNetworks as written (key `meshNetworks`); {} if none or unreadable."""
    return _read(snapshot, NETWORKS_KEY)[0]


def meshconfig_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    """Keys of ConfigMap `istio` that could not be read, as errors on the ConfigMap."""
    cm = mesh_configmap(snapshot)
    if cm is None:
        return []
    out = []
    for key in (MESH_KEY, NETWORKS_KEY):
        problem = _read(snapshot, key)[1]
        if problem:
            out.append(configmap_error(cm, f"data.{key}", f"{problem}; read as empty"))
    return out


def configmap_error(
    cm: ConfigObject, path: str, message: str, severity: str = "error"
) -> ConfigError:
    return ConfigError(
        cm.ref.source, f"ConfigMap {cm.namespace}/{cm.name}", path, message, severity
    )
