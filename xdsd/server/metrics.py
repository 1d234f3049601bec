"""Prometheus metrics of the xDS server, under the names Istio dashboards use.

Created per server instance against an explicit registry (no import-time
globals), so tests and several servers in one process do not collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7)


@dataclass(frozen=True, slots=True)
class TypeMetrics:
    """The per-type children a push updates (looked up once, not per response)."""

    push_time: Any
    pushes: Any
    config_size: Any


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._by_type: dict[str, TypeMetrics] = {}
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
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Time from a config change to a proxy's ACK of the push it caused, in seconds.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 3, 5, 10, 20, 30),
            registry=registry,
        )
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Time to build and encode one pushed response, in seconds.",
            ["type"],
            buckets=(0.0001, 0.001, 0.01, 0.1, 1, 3, 5, 10),
            registry=registry,
        )
        self.bytes_sent = Counter(
            "xdsd_xds_sent_bytes",
            "Bytes of xDS responses written to proxies.",
            registry=registry,
        )
        self.send_wait = Histogram(
            "xdsd_xds_send_wait_seconds",
            "Time a response waited for one of the bounded send slots, in seconds.",
            buckets=(0.0001, 0.001, 0.01, 0.1, 0.5, 1, 5, 30),
            registry=registry,
        )
        self.slow_sends = Counter(
            "xdsd_xds_slow_sends",
            "Responses a proxy did not take within the slow-send time (slot given back).",
            registry=registry,
        )
        self.queue_time = Histogram(
            "xdsd_xds_push_queue_seconds",
            "Time from a push being queued to a stream to the stream starting it, in seconds.",
            buckets=(0.0001, 0.001, 0.01, 0.1, 0.5, 1, 5, 30),
            registry=registry,
        )
        self.admission_wait = Histogram(
            "xdsd_xds_admission_wait_seconds",
            "Time new streams waited for admission (the new-streams rate), in seconds.",
            buckets=(0.01, 0.1, 0.5, 1, 5, 10, 30, 60),
            registry=registry,
        )
        self.refused_streams = Counter(
            "xdsd_xds_refused_streams",
            "Streams refused before any config was sent, by reason.",
            ["reason"],
            registry=registry,
        )

    def by_type(self, short: str) -> TypeMetrics:
        found = self._by_type.get(short)
        if found is None:
            found = self._by_type[short] = TypeMetrics(
                self.push_time.labels(type=short),
                self.pushes.labels(type=short),
                self.config_size.labels(type=short),
            )
        return found
