"""Resources rendered in the shape of Envoy's /config_dump, for debug output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, json_format

from xdsd.cache.resources import ResourceSet, short_type

_DUMP_TYPES = {
    "cds": (
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "dynamic_active_clusters",
        "cluster",
    ),
    "eds": (
        "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        "dynamic_endpoint_configs",
        "endpoint_config",
    ),
    "lds": (
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "dynamic_listeners",
        "active_state",
    ),
    "sds": (
        "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "dynamic_active_secrets",
        "secret",
    ),
    "rds": (
        "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        "dynamic_route_configs",
        "route_config",
    ),
}


def dump_resources(sets: Mapping[str, ResourceSet]) -> dict[str, Any]:
    """Resources in the shape of Envoy's /config_dump (one section per type)."""
    configs = []
    for type_url, rset in sets.items():
        short = short_type(type_url)
        dump_type, list_field, item_field = _DUMP_TYPES.get(
            short, (type_url, "resources", "resource")
        )
        items = []
        for res in rset:
            if short == "sds":
                # Key material never leaves the process through debug output.
                items.append(
                    {"name": res.name, "version_info": res.version, "secret": "[redacted]"}
                )
                continue
            any_msg = any_pb2.Any(type_url=type_url, value=res.payload)
            body = json_format.MessageToDict(any_msg, preserving_proto_field_name=True)
            entry: dict[str, Any] = {"version_info": res.version}
            if short == "lds":
                entry = {
                    "name": res.name,
                    "active_state": {"version_info": res.version, "listener": body},
                }
            else:
                entry[item_field] = body
            items.append(entry)
        configs.append({"@type": dump_type, list_field: items})
    return {"configs": configs}
