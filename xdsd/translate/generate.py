"""The translate stage's public API: per-proxy context, group key, generators by type URL.

    ctx = proxy_context(snapshot, proxy)
    key = group_key(ctx)          # equal keys => byte-identical resources
    GENERATORS[CLUSTER_TYPE](ctx) # [(name, message)], sorted by name

Generators are pure functions of the context; the context is a pure function of
(snapshot, proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf.message import Message

from xdsd.model.proxy import Proxy
from xdsd.model.snapshot import MeshSnapshot, ServiceKey
from xdsd.translate._common import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    NAME_TABLE_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from xdsd.translate.clusters import (
    eds_cluster_names,
    generate_clusters,
    generate_inbound_clusters,
    generate_outbound_clusters,
)
from xdsd.translate.context import (
    ProxyContext,
    context_key,
    group_key,
    outbound_key,
    proxy_context,
)
from xdsd.translate.endpoints import generate_endpoints
from xdsd.translate.gateway import (
    generate_gateway_listeners,
    generate_gateway_routes,
    generate_secrets,
)
from xdsd.translate.inbound import generate_inbound_listeners
from xdsd.translate.listeners import generate_outbound_listeners
from xdsd.translate.name_table import generate_name_table
from xdsd.translate.routes import generate_routes
from xdsd.translate.sidecar_ingress import with_ingress_clusters, with_ingress_listeners
from xdsd.translate.split_horizon import network_key

Generator = Callable[[ProxyContext], list[tuple[str, Message]]]
# Regenerates only the assignments of some services (EDS on an endpoint-only change).
ByService = Callable[[ProxyContext, frozenset[ServiceKey]], list[tuple[str, Message]]]

# Config kinds generation never reads: kept for validation and status only (each
# object of these kinds gets a warning saying so). The security kinds are read:
# inbound chains (mTLS, RBAC, JWT), outbound clusters (auto mTLS), gateways; and
# ConfigMaps, for MeshConfig (ConfigMap `istio`: extensionProviders of CUSTOM policies).
UNREAD_KINDS = frozenset(
    {
        "Telemetry",
        "EnvoyFilter",
        "WorkloadGroup",
        "ProxyConfig",
        "WasmPlugin",
    }
)
# Sidecars do not read Gateways or Secrets either (those are for router proxies).
_SIDECAR_UNREAD = UNREAD_KINDS | {"Gateway", "Secret"}


@dataclass(frozen=True)
class Part:
    """One independently cached piece of a type's resources.

    `key(ctx)` names everything the part reads from the context beyond the
    snapshot: proxies with equal keys share the part. A change to config kinds
    in `ignores` cannot alter its output, so it is reused as it is.
    """

    name: str
    key: Callable[[ProxyContext], Hashable]
    generate: Generator
    ignores: frozenset[str]
    # Ignored only while the mesh has no Sidecar: a default scope imports every visible
    # service whatever the VirtualServices say; a Sidecar's egress imports follow them.
    ignores_without_sidecar: frozenset[str] = frozenset()
    by_service: ByService | None = None

    def unaffected(self, kinds: frozenset[str], *snapshots: MeshSnapshot) -> bool:
        """Whether a change of these kinds (between these snapshots) leaves the part as is."""
        if not kinds:
            return False  # unknown change: assume everything
        ignores = self.ignores
        if self.ignores_without_sidecar and not any(s.configs_of("Sidecar") for s in snapshots):
            ignores = ignores | self.ignores_without_sidecar
        return kinds <= ignores


_VS = frozenset({"VirtualService"})


def _outbound_eds_key(ctx: ProxyContext) -> Hashable:
    """EDS is per network too (split horizon), shared by every proxy of one."""
    return (outbound_key(ctx), network_key(ctx))


def _router_eds_key(ctx: ProxyContext) -> Hashable:
    return (group_key(ctx), network_key(ctx))


# What only HTTP/network filters read (authorization, JWT, ext_authz providers in the
# mesh config): every part but the listeners ignores them. PeerAuthentication stays
# read by clusters and endpoints (auto mTLS).
_FILTER_ONLY = frozenset({"AuthorizationPolicy", "RequestAuthentication", "FetchedJwks"})
_SIDECAR_NOT_FILTERS = _SIDECAR_UNREAD | _FILTER_ONLY
# A sidecar's inbound side (its own ports, Sidecar ingress) reads no VirtualService
# (istiod builds inbound routes from the ports alone): a VirtualService edit keeps the
# inbound clusters and listeners of every app. A sourceLabels change that regroups an
# app changes its group key, and so the part it looks up.
_INBOUND_NOT_FILTERS = _SIDECAR_NOT_FILTERS | _VS
_INBOUND_UNREAD = _SIDECAR_UNREAD | _VS
_ROUTER_NOT_FILTERS = UNREAD_KINDS | _FILTER_ONLY
# The name table reads the Sidecar scope's services and headless endpoints only
# (as istiod's skippedNdsConfigs; WorkloadEntries stay read: headless ServiceEntries).
_NDS_UNREAD = _SIDECAR_UNREAD | _FILTER_ONLY | {"DestinationRule", "PeerAuthentication"}

# Sidecars: the outbound side (most of the bytes) is shared by every app of a namespace
# (outbound_key); only the inbound side depends on the app's own ports (group_key).
_SIDECAR_PARTS: Mapping[str, tuple[Part, ...]] = MappingProxyType(
    {
        CLUSTER_TYPE: (
            Part("outbound", outbound_key, generate_outbound_clusters, _SIDECAR_NOT_FILTERS, _VS),
            Part(
                "inbound",
                group_key,
                with_ingress_clusters(generate_inbound_clusters),
                _INBOUND_NOT_FILTERS,
            ),
        ),
        ENDPOINT_TYPE: (
            Part(
                "outbound",
                _outbound_eds_key,
                generate_endpoints,
                _SIDECAR_NOT_FILTERS,
                _VS,
                by_service=generate_endpoints,
            ),
        ),
        LISTENER_TYPE: (
            Part("outbound", outbound_key, generate_outbound_listeners, _SIDECAR_NOT_FILTERS),
            Part(
                "inbound",
                group_key,
                with_ingress_listeners(generate_inbound_listeners),
                _INBOUND_UNREAD,
            ),
        ),
        ROUTE_TYPE: (Part("outbound", outbound_key, generate_routes, _SIDECAR_NOT_FILTERS),),
        SECRET_TYPE: (Part("all", group_key, generate_secrets, _SIDECAR_NOT_FILTERS),),
        NAME_TABLE_TYPE: (Part("outbound", outbound_key, generate_name_table, _NDS_UNREAD, _VS),),
    }
)
_ROUTER_PARTS: Mapping[str, tuple[Part, ...]] = MappingProxyType(
    {
        CLUSTER_TYPE: (Part("all", group_key, generate_clusters, _ROUTER_NOT_FILTERS),),
        ENDPOINT_TYPE: (
            Part(
                "all",
                _router_eds_key,
                generate_endpoints,
                _ROUTER_NOT_FILTERS,
                by_service=generate_endpoints,
            ),
        ),
        LISTENER_TYPE: (Part("all", group_key, generate_gateway_listeners, UNREAD_KINDS),),
        ROUTE_TYPE: (Part("all", group_key, generate_gateway_routes, _ROUTER_NOT_FILTERS),),
        SECRET_TYPE: (Part("all", group_key, generate_secrets, _ROUTER_NOT_FILTERS),),
    }
)


def parts(ctx: ProxyContext, type_url: str) -> tuple[Part, ...]:
    """How a type's resources for this proxy are generated and shared (none: unknown type)."""
    return (_SIDECAR_PARTS if ctx.is_sidecar else _ROUTER_PARTS).get(type_url, ())


def _whole(type_url: str) -> Generator:
    def generate(ctx: ProxyContext) -> list[tuple[str, Message]]:
        out: list[tuple[str, Message]] = []
        for part in parts(ctx, type_url):
            out.extend(part.generate(ctx))
        return sorted(out, key=lambda item: item[0])

    return generate


# The whole type at once (for one proxy: translate, tests, benchmarks).
GENERATORS: Mapping[str, Generator] = MappingProxyType(
    {t: _whole(t) for t in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE)}
)


# Every type served to proxies: Envoy's, and the ones pilot-agent asks for itself.
SERVED_TYPES = frozenset(GENERATORS) | {NAME_TABLE_TYPE}


def generate_all(snapshot: MeshSnapshot, proxy: Proxy) -> dict[str, list[tuple[str, Message]]]:
    ctx = proxy_context(snapshot, proxy)
    return {type_url: gen(ctx) for type_url, gen in GENERATORS.items()}


__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "GENERATORS",
    "LISTENER_TYPE",
    "NAME_TABLE_TYPE",
    "ROUTE_TYPE",
    "SECRET_TYPE",
    "SERVED_TYPES",
    "Generator",
    "Part",
    "ProxyContext",
    "context_key",
    "eds_cluster_names",
    "generate_all",
    "group_key",
    "outbound_key",
    "parts",
    "proxy_context",
]
