"""Problems only translation can see, reported on the objects they concern.

They join the snapshot's errors, so they show where every config problem does:
logs, `xdsd validate`, /debug/configz and `--write-status`.
"""

from __future__ import annotations

from xdsd.model.istio.authorizationpolicy import AuthorizationPolicy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigError
from xdsd.translate.ext_authz import MESH_CONFIGMAP, providers


def config_problems(snapshot: MeshSnapshot) -> list[ConfigError]:
    out: list[ConfigError] = []
    found = providers(snapshot) if snapshot.configs_of("AuthorizationPolicy") else {}
    for obj in snapshot.configs_of("AuthorizationPolicy"):
        ap = obj.typed
        if not isinstance(ap, AuthorizationPolicy) or ap.action != "CUSTOM":
            continue
        p = found.get(ap.provider)
        if p is None:
            why = (
                f"no extension provider {ap.provider!r} in MeshConfig (ConfigMap "
                f"{snapshot.root_namespace}/{MESH_CONFIGMAP}, key mesh)"
            )
        elif p.error:
            why = p.error
        else:
            continue
        out.append(
            ConfigError(
                obj.ref.source,
                f"AuthorizationPolicy {obj.namespace}/{obj.name}",
                "spec.provider.name",
                f"{why}: the policy's rules deny the requests they match instead (fail closed)",
                "warning",
            )
        )
    return out
