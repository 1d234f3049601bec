"""The injector's configuration: Istio's `istio-sidecar-injector` ConfigMap, or defaults.

The ConfigMap (in the config cluster's root namespace, as istiod's chart makes it) has
two keys:

- `config` (YAML): `policy` (enabled | disabled), `neverInjectSelector`,
  `alwaysInjectSelector` (label selectors), `injectedAnnotations` are honoured.
  `template`/`templates`, `defaultTemplates` and `aliases` are Go templates for
  istiod's engine: xdsd does not run them. It renders its own sidecar template
  (`inject.py`) from `values`, and says so as a warning on the ConfigMap when the
  ConfigMap carries them.
- `values` (JSON): the Helm values the template reads. The paths in `HONOURED` are
  used; every other path that is set (not empty/false/null) is reported as ignored.

Problems never stop injection: a broken key falls back to the defaults and is
reported (`InjectorConfig.problems`), as istiod keeps its last config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from xdsd.model.labels import LabelSelector, parse_selector
from xdsd.model.meshconfig import mesh_config
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError

INJECTOR_CONFIGMAP = "istio-sidecar-injector"
# An Istio release the default images name; operators set global.hub/tag in `values`.
DEFAULT_TAG = "1.31.0"

# Istio's chart defaults for what the built-in template reads (manifests/charts/
# istio-control/istio-discovery/values.yaml); the ConfigMap's values override them.
DEFAULT_VALUES: Mapping[str, Any] = {
    "revision": "",
    "global": {
        "hub": "docker.io/istio",
        "tag": DEFAULT_TAG,
        "variant": "",
        "imagePullPolicy": "",
        "imagePullSecrets": [],
        "istioNamespace": "istio-system",
        "caAddress": "",
        "meshID": "",
        "network": "",
        "trustDomain": "",
        "multiCluster": {"clusterName": ""},
        "pilotCertProvider": "istiod",
        "logAsJson": False,
        "logging": {"level": "default:info"},
        "sds": {"token": {"aud": "istio-ca"}},
        "proxy": {
            "image": "proxyv2",
            "clusterDomain": "cluster.local",
            "logLevel": "warning",
            "componentLogLevel": "misc:error",
            "includeIPRanges": "*",
            "excludeIPRanges": "",
            "includeInboundPorts": "*",
            "excludeInboundPorts": "",
            "includeOutboundPorts": "",
            "excludeOutboundPorts": "",
            "statusPort": 15020,
            "privileged": False,
            "holdApplicationUntilProxyStarts": False,
            "readinessInitialDelaySeconds": 0,
            "readinessPeriodSeconds": 15,
            "readinessFailureThreshold": 4,
            "startupProbe": {"enabled": True, "failureThreshold": 600},
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "2000m", "memory": "1024Mi"},
            },
        },
        "proxy_init": {"image": "proxyv2", "forceApplyIptables": False},
        "nativeNftables": False,
    },
    "pilot": {"cni": {"enabled": False}},
}


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


# Subtrees taken whole (maps the template copies as they are).
_WHOLE = ("global.proxy.resources", "global.imagePullSecrets")
HONOURED = frozenset(p for p, _ in _leaves(DEFAULT_VALUES) if not p.startswith(_WHOLE)) | set(
    _WHOLE
)


def _honoured(path: str) -> bool:
    return path in HONOURED or any(path.startswith(w + ".") for w in _WHOLE)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` deep-merged onto `base`: maps merge, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if isinstance(old, Mapping) and isinstance(v, Mapping):
            out[k] = merge(old, v)
        else:
            out[k] = v
    return out


def thaw(value: Any) -> Any:
    """Plain dicts/lists from the model's read-only structures (or YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class InjectorConfig:
    policy: str = "enabled"
    never_inject: tuple[LabelSelector, ...] = ()
    always_inject: tuple[LabelSelector, ...] = ()
    injected_annotations: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_VALUES))
    # MeshConfig (ConfigMap `istio`, key `mesh`): defaultConfig and trustDomain are read.
    mesh: Mapping[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"
    # What the ConfigMap holds that xdsd does not honour, or could not read: (path, why).
    problems: tuple[tuple[str, str], ...] = ()

    def value(self, path: str, default: Any = None) -> Any:
        node: Any = self.values
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return default if node is None else node


def _configmap(snapshot: MeshSnapshot, name: str) -> Any:
    for cm in snapshot.configs_of("ConfigMap"):
        if cm.namespace == snapshot.root_namespace and cm.name == name:
            return cm
    return None


def _load_config(text: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        problems.append(("data.config", f"not valid YAML ({e.__class__.__name__}): defaults used"))
        return {}
    if not isinstance(doc, Mapping):
        problems.append(("data.config", "not a YAML map: defaults used"))
        return {}
    return thaw(doc)  # type: ignore[no-any-return]


def load_injector_config(snapshot: MeshSnapshot) -> InjectorConfig:
    """The injector config of a snapshot (computed once per snapshot)."""
    return snapshot.derived(f"{__name__}:injector", _build)


def _build(snapshot: MeshSnapshot) -> InjectorConfig:
    mesh = _mesh(snapshot)
    cm = _configmap(snapshot, INJECTOR_CONFIGMAP)
    if cm is None:
        return InjectorConfig(mesh=mesh)
    data: Mapping[str, str] = cm.spec.get("data", {})
    problems: list[tuple[str, str]] = []
    config = _load_config(data.get("config", ""), problems)
    policy = str(config.get("policy", "enabled"))
    if policy not in ("enabled", "disabled"):
        problems.append(
            ("data.config.policy", f"{policy!r} is not enabled or disabled: injection is off")
        )
    never = tuple(
        s
        for i, d in enumerate(config.get("neverInjectSelector") or ())
        if (s := parse_selector(d, f"data.config.neverInjectSelector[{i}]", problems))
    )
    always = tuple(
        s
        for i, d in enumerate(config.get("alwaysInjectSelector") or ())
        if (s := parse_selector(d, f"data.config.alwaysInjectSelector[{i}]", problems))
    )
    annotations = config.get("injectedAnnotations") or {}
    if not isinstance(annotations, Mapping):
        problems.append(("data.config.injectedAnnotations", "not a map: ignored"))
        annotations = {}
    for key in ("template", "templates"):
        if config.get(key):
            problems.append(
                (
                    f"data.config.{key}",
                    "Go templates are not run by xdsd: its built-in sidecar template is "
                    "rendered with `values` instead",
                )
            )
    if config.get("aliases"):
        problems.append(("data.config.aliases", "template aliases are not supported: ignored"))
    defaults = config.get("defaultTemplates")
    if defaults and list(defaults) != ["sidecar"]:
        problems.append(
            ("data.config.defaultTemplates", f"{defaults!r}: only the sidecar template is served")
        )
    known = {
        "policy",
        "neverInjectSelector",
        "alwaysInjectSelector",
        "injectedAnnotations",
        "template",
        "templates",
        "aliases",
        "defaultTemplates",
    }
    problems.extend(
        (f"data.config.{k}", "not used by xdsd: ignored") for k in sorted(set(config) - known)
    )
    values = _load_values(data.get("values", ""), problems)
    return InjectorConfig(
        policy=policy,
        never_inject=never,
        always_inject=always,
        injected_annotations={str(k): str(v) for k, v in annotations.items()},
        values=merge(DEFAULT_VALUES, values),
        mesh=mesh,
        source=f"ConfigMap {cm.namespace}/{cm.name}",
        problems=tuple(problems),
    )


def _load_values(text: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        problems.append(("data.values", "not valid JSON: Istio's chart defaults used"))
        return {}
    if not isinstance(doc, Mapping):
        problems.append(("data.values", "not a JSON object: Istio's chart defaults used"))
        return {}
    ignored = sorted(
        p for p, v in _leaves(doc) if v not in (None, "", False, {}, []) and not _honoured(p)
    )
    if ignored:
        problems.append(
            ("data.values", f"not used by xdsd's sidecar template: {', '.join(ignored)}")
        )
    return dict(doc)


def _mesh(snapshot: MeshSnapshot) -> dict[str, Any]:
    return dict(thaw(mesh_config(snapshot)))


def injector_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    """What the injector ConfigMap holds that xdsd ignores, as warnings on the ConfigMap."""
    cm = _configmap(snapshot, INJECTOR_CONFIGMAP)
    if cm is None:
        return []
    label = f"ConfigMap {cm.namespace}/{cm.name}"
    return [
        ConfigError(cm.ref.source, label, path, why, "warning")
        for path, why in load_injector_config(snapshot).problems
    ]
