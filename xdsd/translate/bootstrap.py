"""Envoy bootstrap that connects a proxy to xdsd over ADS (what pilot-agent writes).

The result is plain JSON-able data; `xdsd bootstrap` prints it and the tests and
`xdsd demo` start real Envoy processes with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

XDS_CLUSTER = "xds-grpc"
# pilot-agent's SDS server (workload cert "default", trust bundle "ROOTCA", file-root:/
# file-cert: resources), which ISTIO_MUTUAL and file-based DestinationRule TLS reach over
# the bootstrap cluster "sds-grpc". The path is Istio's, relative to Envoy's working dir.
SDS_CLUSTER = "sds-grpc"
ISTIO_SDS_SOCKET = "./var/run/secrets/workload-spiffe-uds/socket"


@dataclass(frozen=True)
class BootstrapOptions:
    node_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    xds_host: str = "127.0.0.1"
    xds_port: int = 15010
    delta: bool = False
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    cluster: str = "Kubernetes"  # node.cluster: Istio puts the workload's service cluster here
    # TLS to the control plane (SNI and trust bundle), e.g. through an ingress gateway.
    tls_server_name: str | None = None
    tls_ca_file: str | None = None
    initial_fetch_timeout_s: float = 0  # 0: wait for the control plane for ever
    # Unix socket of the local agent's SDS (cluster sds-grpc); None: no such cluster.
    sds_socket: str | None = ISTIO_SDS_SOCKET
    # A service-account token (JWT) for the control plane: sent as `authorization: Bearer`
    # on the ADS stream, as pilot-agent's xDS proxy does (Envoy sends the value fixed at
    # bootstrap time: restart Envoy with a fresh bootstrap before the token expires).
    token: str | None = field(default=None, repr=False)
    # The proxy's cluster id, sent as the `clusterid` header (which cluster reviews the token).
    cluster_id_header: str | None = None


def split_address(address: str, default_port: int = 15010) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT); raise ValueError with the reason."""
    host, sep, port_s = address.rpartition(":")
    if not sep:
        return address, default_port
    host = host.strip("[]")
    if not host:
        raise ValueError(f"xDS address {address!r} has no host")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"xDS address {address!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"xDS address {address!r}: port {port} is out of range")
    return host, port


def _config_source(opts: BootstrapOptions) -> dict[str, Any]:
    return {
        "ads": {},
        "initial_fetch_timeout": f"{opts.initial_fetch_timeout_s}s",
        "resource_api_version": "V3",
    }


def sds_cluster(socket_path: str) -> dict[str, Any]:
    """Istio's bootstrap cluster sds-grpc: HTTP/2 to the agent's SDS over a unix socket."""
    return {
        "name": SDS_CLUSTER,
        "alt_stat_name": SDS_CLUSTER + ";",
        "type": "STATIC",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}
            ],
        },
    }


def build_bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    initial_metadata = []
    if opts.token:
        initial_metadata.append({"key": "authorization", "value": f"Bearer {opts.token}"})
    if opts.cluster_id_header:
        initial_metadata.append({"key": "clusterid", "value": opts.cluster_id_header})
    if initial_metadata:
        grpc_service["initial_metadata"] = initial_metadata
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": opts.xds_host,
                                        "port_value": opts.xds_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if opts.tls_server_name or opts.tls_ca_file:
        tls: dict[str, Any] = {"alpn_protocols": ["h2"]}
        if opts.tls_ca_file:
            tls["validation_context"] = {"trusted_ca": {"filename": opts.tls_ca_file}}
        context: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": tls,
        }
        if opts.tls_server_name:
            context["sni"] = opts.tls_server_name
        xds_cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": context,
        }

    metadata = dict(opts.metadata)
    return {
        "node": {
            "id": opts.node_id,
            "cluster": opts.cluster,
            "metadata": metadata,
        },
        "admin": {
            "address": {
                "socket_address": {"address": opts.admin_address, "port_value": opts.admin_port}
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if opts.delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": True,
            },
            "cds_config": _config_source(opts),
            "lds_config": _config_source(opts),
        },
        "static_resources": {
            "clusters": [xds_cluster]
            + ([sds_cluster(opts.sds_socket)] if opts.sds_socket is not None else [])
        },
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        # Istio's sidecars allow 2^31-1 downstream connections; Envoy warns when no limit
        # is set, and warns of the runtime key istiod's bootstrap sets it with
        # (overload.global_downstream_max_connections) as deprecated: this is its successor.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 2147483647,
                    },
                }
            ]
        },
    }
