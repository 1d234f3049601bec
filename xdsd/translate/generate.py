"""The translate stage's public API: per-proxy context, group key, generators by type URL.

    ctx = proxy_context(snapshot, proxy)
    key = group_key(ctx)          # equal keys => byte-identical resources
    GENERATORS[CLUSTER_TYPE](ctx) # [(name, message)], sorted by name

Generators are pure functions of the context; the context is a pure function of
(snapshot, proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from google.protobuf.message import Message

from xdsd.model.proxy import Proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.translate._common import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from xdsd.translate.clusters import eds_cluster_names, generate_clusters
from xdsd.translate.context import ProxyContext, group_key, proxy_context
from xdsd.translate.endpoints import generate_endpoints
from xdsd.translate.gateway import (
    for_routers,
    generate_gateway_listeners,
    generate_gateway_routes,
    generate_secrets,
)
from xdsd.translate.listeners import generate_listeners
from xdsd.translate.routes import generate_routes
from xdsd.translate.sidecar_ingress import with_ingress_clusters, with_ingress_listeners

Generator = Callable[[ProxyContext], list[tuple[str, Message]]]


GENERATORS: Mapping[str, Generator] = MappingProxyType(
    {
        CLUSTER_TYPE: with_ingress_clusters(generate_clusters),  # + Sidecar ingress
        ENDPOINT_TYPE: generate_endpoints,
        LISTENER_TYPE: for_routers(
            with_ingress_listeners(generate_listeners), generate_gateway_listeners
        ),
        ROUTE_TYPE: for_routers(generate_routes, generate_gateway_routes),
        SECRET_TYPE: generate_secrets,  # gateway credentialName secrets (sidecars: none)
    }
)


def generate_all(snapshot: MeshSnapshot, proxy: Proxy) -> dict[str, list[tuple[str, Message]]]:
    ctx = proxy_context(snapshot, proxy)
    return {type_url: gen(ctx) for type_url, gen in GENERATORS.items()}


__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "GENERATORS",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "SECRET_TYPE",
    "Generator",
    "ProxyContext",
    "eds_cluster_names",
    "generate_all",
    "group_key",
    "proxy_context",
]
