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
            "Number of endpoints connected to this pilot using xDS.",
            ["version"],
            registry=registry,
        )
        self.pushes = Counter(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds.",
            ["type"],
            registry=registry,
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects",
            "Total number of xDS responses from pilot rejected by proxy.",
            ["type"],
            registry=registry,
        )
        self.expired_nonce = Counter(
            "pilot_xds_expired_nonce",
            "Total number of xDS requests with an expired nonce.",
            ["type"],
            registry=registry,
        )
        self.config_size = Histogram(
            "pilot_xds_config_size_bytes",
            "Distribution of configuration sizes pushed to clients",
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
