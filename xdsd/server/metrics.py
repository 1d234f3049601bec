"""Prometheus metrics of the xDS server, under the names Istio dashboards use.

Created per server instance against an explicit registry (no import-time
globals), so tests and several servers in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7)


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connected = Gauge(
            "pilot_xds",
            "Proxies connected over xDS, by Istio version.",
            ["version"],
            registry=registry,
        )
        self.pushes = Counter(
            "pilot_xds_pushes",
            "xDS responses sent to proxies, by type.",
            ["type"],
            registry=registry,
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects",
            "xDS responses rejected (NACKed) by proxies, by type.",
            ["type"],
            registry=registry,
        )
        self.expired_nonce = Counter(
            "pilot_xds_expired_nonce",
            "xDS requests that answered a nonce other than the last one sent.",
            ["type"],
            registry=registry,
        )
        self.config_size = Histogram(
            "pilot_xds_config_size_bytes",
            "Size of xDS responses sent, in bytes.",
            ["type"],
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.send_errors = Counter(
            "xdsd_xds_send_errors",
            "Streams that failed while sending a response.",
            registry=registry,
        )
        self.refused_streams = Counter(
            "xdsd_xds_refused_streams",
            "Streams refused before any config was sent, by reason.",
            ["reason"],
            registry=registry,
        )
