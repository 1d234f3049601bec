"""Shared helpers for the generators: type URLs, Istio names and defaults, proto builders.

Names and defaults follow istiod (pilot/pkg/networking/core, pilot/pkg/model,
pilot/pkg/networking/util); each constant says what it mirrors.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from xdsd.model.types import Protocol

# Type URLs, derived from the protos (the cache stage names the same strings; the
# translate stage may not import it, see the import-linter layers).
_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = _PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name
ENDPOINT_TYPE = _PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name
LISTENER_TYPE = _PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name
ROUTE_TYPE = _PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name
SECRET_TYPE = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# Istio's DNS name table (NDS), for pilot-agent rather than Envoy.
NAME_TABLE_TYPE = _PREFIX + "istio.networking.nds.v1.NameTable"

# Cluster names (pilot/pkg/networking/util).
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"

# Listener and filter chain names (pilot/pkg/model/listener.go, util.PassthroughFilterChain).
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
VIRTUAL_OUTBOUND_CATCHALL_TCP = "virtualOutbound-catchall-tcp"
VIRTUAL_OUTBOUND_BLACKHOLE = "virtualOutbound-blackhole"
VIRTUAL_INBOUND_BLACKHOLE = "virtualInbound-blackhole"
VIRTUAL_INBOUND_CATCHALL_HTTP = "virtualInbound-catchall-http"
PASSTHROUGH_FILTER_CHAIN = "PassthroughFilterChain"

# Route names (util.Passthrough / util.BlackHole, route.DefaultRouteName).
ALLOW_ANY = "allow_any"
BLOCK_ALL = "block_all"
DEFAULT_ROUTE = "default"
INBOUND_VHOST_PREFIX = "inbound|http|"

# Mesh defaults (MeshConfig): proxyListenPort, proxyInboundListenPort, connectTimeout,
# dnsRefreshRate.
PROXY_LISTEN_PORT = 15001
PROXY_INBOUND_LISTEN_PORT = 15006
CONNECT_TIMEOUT_S = 10
DNS_REFRESH_RATE_S = 60
# Source address of inbound passthrough/inbound clusters, exempted from iptables capture.
INBOUND_PASSTHROUGH_BIND_V4 = "127.0.0.6"
INBOUND_PASSTHROUGH_BIND_V6 = "::6"
WILDCARD_V4 = "0.0.0.0"
WILDCARD_V6 = "::"
LOCALHOST_V4 = "127.0.0.1"
LOCALHOST_V6 = "::1"
# Envoy/pilot-agent's own ports: never generate a listener that binds them (NONE mode).
RESERVED_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090})

# ALPNs the HTTP inspector sets for plaintext HTTP (istiod without HTTP/1.0 support).
PLAINTEXT_HTTP_ALPNS = ("http/1.1", "h2c")
RAW_BUFFER = "raw_buffer"

# Circuit-breaker thresholds istiod sets on every cluster (getDefaultCircuitBreakerThresholds).
MAX_UINT32 = 2**32 - 1
# Cleanup interval istiod sets on inbound ORIGINAL_DST clusters (maxSecondsValue).
MAX_DURATION_S = (2**63 - 1 - 999_999_999) // 1_000_000_000  # 9223372035 s

# Default outbound retry policy (route/retry: DefaultPolicy).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_NUM_RETRIES = 2
DEFAULT_HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
INBOUND_RETRY_ON = "reset-before-request"

HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# RouteConfiguration.max_direct_response_body_size_bytes istiod sets on outbound routes.
MAX_DIRECT_RESPONSE_BODY_BYTES = 1024 * 1024
# PassthroughCluster's HTTP idle timeout (istiod passthroughHttpProtocolOptions).
PASSTHROUGH_IDLE_TIMEOUT_S = 300


def is_http2(protocol: Protocol) -> bool:
    """Istio's Protocol.IsHTTP2: GRPC-Web counts too (unlike model's Protocol.is_http2)."""
    return protocol.is_http2 or protocol is Protocol.GRPC_WEB


def pack(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1_000_000_000))
    return d


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def ads_config_source() -> config_source_pb2.ConfigSource:
    """ADS, v3, initial_fetch_timeout 0s: what istiod puts in EDS and RDS config sources."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        initial_fetch_timeout=seconds(0),
        resource_api_version=config_source_pb2.V3,
    )


@functools.lru_cache(maxsize=1 << 16)
def ip_version(value: str) -> int:
    """4 or 6 for an IP address, 0 otherwise. Cached: every proxy context asks again."""
    try:
        return ipaddress.ip_address(value).version
    except ValueError:
        return 0


def is_ip(value: str) -> bool:
    return ip_version(value) != 0


def is_ipv6(value: str) -> bool:
    return ip_version(value) == 6


def typed_san_matchers(sans: Iterable[str], *, uri_only: bool = False) -> list[Message]:
    """Exact SAN matches in Envoy's typed form (`match_typed_subject_alt_names`).

    istiod still fills the untyped `match_subject_alt_names`, which Envoy deprecated: it
    matched any SAN type, so user-given names match DNS, URI, email and IP SANs here too;
    SPIFFE identities (ISTIO_MUTUAL) are URIs.
    """
    M = common_pb2.SubjectAltNameMatcher
    types = (M.URI,) if uri_only else (M.DNS, M.URI, M.EMAIL, M.IP_ADDRESS)
    return [
        M(san_type=t, matcher=string_pb2.StringMatcher(exact=san)) for san in sans for t in types
    ]


def outbound_cluster_name(port: int, hostname: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{hostname}"


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


def listener_name(bind: str, port: int) -> str:
    return f"{bind}_{port}"
