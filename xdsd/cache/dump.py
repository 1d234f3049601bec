"""Resources rendered as Envoy's admin config dump (envoy.admin.v3 *ConfigDump).

One builder serves `/debug/config_dump`, `xdsd translate` and the
`istio.io/debug/config_dump` xDS query, so all three show the same thing.
Secrets are listed by name and version only: key material never leaves the
process through debug output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ResourceSet


def _any(res_type: str, payload: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=res_type, value=payload)


def dump_messages(sets: Mapping[str, ResourceSet]) -> list[Message]:
    """One *ConfigDump message per type present, in push order."""
    out: list[Message] = []
    for type_url, rset in sets.items():
        if type_url == CLUSTER:
            clusters = config_dump_shared_pb2.ClustersConfigDump()
            for r in rset:
                clusters.dynamic_active_clusters.add(
                    version_info=r.version, cluster=_any(r.type_url, r.payload)
                )
            out.append(clusters)
        elif type_url == ENDPOINT:
            endpoints = config_dump_shared_pb2.EndpointsConfigDump()
            for r in rset:
                endpoints.dynamic_endpoint_configs.add(
                    version_info=r.version, endpoint_config=_any(r.type_url, r.payload)
                )
            out.append(endpoints)
        elif type_url == LISTENER:
            listeners = config_dump_shared_pb2.ListenersConfigDump()
            for r in rset:
                entry = listeners.dynamic_listeners.add(name=r.name)
                entry.active_state.version_info = r.version
                entry.active_state.listener.CopyFrom(_any(r.type_url, r.payload))
            out.append(listeners)
        elif type_url == ROUTE:
            routes = config_dump_shared_pb2.RoutesConfigDump()
            for r in rset:
                routes.dynamic_route_configs.add(
                    version_info=r.version, route_config=_any(r.type_url, r.payload)
                )
            out.append(routes)
        elif type_url == SECRET:
            secrets = config_dump_pb2.SecretsConfigDump()
            for r in rset:
                secrets.dynamic_active_secrets.add(name=r.name, version_info=r.version)
            out.append(secrets)
    return out


def dump_resources(sets: Mapping[str, ResourceSet]) -> dict[str, Any]:
    """The JSON shape of Envoy's /config_dump (snake_case field names)."""
    configs = []
    for message in dump_messages(sets):
        packed = any_pb2.Any()
        packed.Pack(message)
        configs.append(json_format.MessageToDict(packed, preserving_proto_field_name=True))
    return {"configs": configs}
