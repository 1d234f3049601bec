"""Per-proxy generation on the config shapes of istiod's own benchmarks, beside istiod's.

istiod's `pilot/pkg/xds` benchmarks (bench_test.go: BenchmarkClusterGeneration, ...)
render a config template per shape and time one `Generate` of a type for one sidecar
(IP 1.1.1.1, namespace default; XDS caching off, so every op generates). The shapes
used here, built as the same objects in Python (the templates are not copied):

* http: a ServiceEntry for the proxy's own instance (example.com, 1.1.1.1:80 HTTP) and
  N ServiceEntries `random-I.host.example`, STATIC, one endpoint, HTTP port 80;
* tcp: the same with TCP port 7070;
* virtualservice: the http shape (endpoint 1.2.3.4, no address) plus a VirtualService
  per host: a named route matching prefix /foo or regex /bar, URI rewrite.

xdsd's time per type is generate + serialize (istiod's Generate returns marshalled
resources); best of `repeat`. istiod's is ns/op from the test binary that
`benchmarks/peers/build.sh istio-bench` builds from the pinned Istio module (skipped
with a message where it is not built).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from translate import timed  # the translate benchmark's timing (best of `repeat`)

from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xdsd.model.build import build_snapshot
from xdsd.model.parse import parse_documents
from xdsd.model.proxy import parse_proxy
from xdsd.model.store import ConfigStore
from xdsd.translate.generate import GENERATORS, proxy_context

SHAPES = ("http", "tcp", "virtualservice")
# istiod's benchmark names per type (the Go side), in xdsd's push order.
TYPES = (("Cluster", CLUSTER), ("Endpoint", ENDPOINT), ("Listener", LISTENER), ("Route", ROUTE))
# Shapes without routes (as istiod's SkipType): tcp has no RDS.
SKIP = {("tcp", ROUTE)}
SERVICES = 100  # istiod's Services for these shapes


def _service_entry(
    name: str, host: str, port: tuple[int, str, str], endpoint: str, address: str | None
) -> dict[str, Any]:
    number, port_name, protocol = port
    spec: dict[str, Any] = {
        "hosts": [host],
        "ports": [{"number": number, "name": port_name, "protocol": protocol}],
        "resolution": "STATIC",
        "location": "MESH_INTERNAL",
        "endpoints": [{"address": endpoint, "labels": {"security.istio.io/tlsMode": "istio"}}],
    }
    if address is not None:
        spec["addresses"] = [address]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def shape_documents(shape: str, services: int = SERVICES) -> list[dict[str, Any]]:
    port = (7070, "tcp", "TCP") if shape == "tcp" else (80, "http", "HTTP")
    docs = [_service_entry("proxy-service-instance", "example.com", port, "1.1.1.1", None)]
    for i in range(services):
        host = f"random-{i}.host.example"
        if shape == "virtualservice":
            docs.append(_service_entry(f"service-{i}", host, port, "1.2.3.4", None))
            docs.append(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": {"name": f"vs-{i}", "namespace": "default"},
                    "spec": {
                        "hosts": [host],
                        "http": [
                            {
                                "name": "match-route",
                                "match": [{"uri": {"prefix": "/foo"}}, {"uri": {"regex": "/bar"}}],
                                "rewrite": {"uri": "/new-url"},
                                "route": [{"destination": {"host": host}}],
                            }
                        ],
                    },
                }
            )
        else:
            address = f"240.240.{i // 255}.{i % 255}"
            endpoint = f"240.241.{i // 255}.{i % 255}"
            docs.append(_service_entry(f"service-{i}", host, port, endpoint, address))
    return docs


@dataclass(frozen=True)
class Row:
    shape: str
    kind: str  # istiod's benchmark type name
    resources: int
    xdsd_ms: float
    istiod_ms: float | None


def measure_xdsd(shape: str, repeat: int) -> list[tuple[str, int, float]]:
    """(type name, resources, ms per proxy) for each type of the shape."""
    result = parse_documents(shape_documents(shape), f"{shape}.yaml")
    if result.errors:
        raise RuntimeError(f"{shape}: {result.errors[0]}")
    store = ConfigStore()
    store.apply_file(f"{shape}.yaml", result)
    snapshot = build_snapshot(store, generation=1)
    proxy = parse_proxy(
        "sidecar~1.1.1.1~v0.default~default.svc.cluster.local",
        {
            "NAMESPACE": "default",
            "ISTIO_VERSION": "1.26.0",
            "LABELS": {"istio.io/benchmark": "true"},
        },
    )
    ctx = proxy_context(snapshot, proxy)
    out = []
    for kind, type_url in TYPES:
        if (shape, type_url) in SKIP:
            continue
        generator = GENERATORS[type_url]

        def once(generator: Any = generator) -> list[bytes]:
            return [m.SerializeToString(deterministic=True) for _, m in generator(ctx)]

        count = len(once())
        out.append((kind, count, timed(once, repeat)[0] * 1000))
    return out


_BENCH_LINE = re.compile(r"^Benchmark(\w+)Generation/(\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op")


def measure_istiod(binary: Path, benchtime: str = "50x") -> dict[tuple[str, str], float]:
    """(shape, type name) -> ms per op, from istiod's test binary."""
    kinds = "|".join(k for k, _ in TYPES)
    pattern = f"^Benchmark({kinds})Generation$/^({'|'.join(SHAPES)})$"
    proc = subprocess.run(
        [str(binary), "-test.run", "^$", "-test.bench", pattern, "-test.benchtime", benchtime],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        # The tests read their templates from the package's folder (in the module cache).
        cwd=Path(binary.with_name(binary.name + ".dir").read_text().strip()),
    )
    out: dict[tuple[str, str], float] = {}
    for line in proc.stdout.splitlines():
        m = _BENCH_LINE.match(line)
        if m:
            out[(m.group(2), m.group(1))] = float(m.group(3)) / 1e6
    if proc.returncode != 0 and not out:
        raise RuntimeError(f"istiod benchmark failed: {(proc.stdout + proc.stderr)[-500:]}")
    return out


def istiod_binary() -> Path | None:
    """The test binary `peers/build.sh istio-bench` built, or None (not built, no go)."""
    script = Path(__file__).resolve().parent / "peers" / "build.sh"
    done = subprocess.run(
        ["bash", str(script), "istio-bench", "--print"], capture_output=True, text=True, check=False
    )
    path = Path(done.stdout.strip()) if done.returncode == 0 else None
    return path if path is not None and path.is_file() else None


def compare(repeat: int, istiod_binary: Path | None, say: Callable[[str], None]) -> Sequence[Row]:
    istiod: dict[tuple[str, str], float] = {}
    if istiod_binary is not None:
        say(f"  istiod: running {istiod_binary.name} (Go testing.B, 50 ops per case)")
        try:
            istiod = measure_istiod(istiod_binary)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            say(f"  istiod: skipped: {e}")
    rows = []
    for shape in SHAPES:
        for kind, count, ms in measure_xdsd(shape, repeat):
            rows.append(Row(shape, kind, count, ms, istiod.get((shape, kind))))
    return rows


def render(rows: Sequence[Row]) -> str:
    head = ("shape", "type", "resources", "xdsd ms", "istiod ms", "xdsd/istiod")
    lines = [head]
    for r in rows:
        ratio = f"{r.xdsd_ms / r.istiod_ms:.2f}" if r.istiod_ms else "-"
        istiod = f"{r.istiod_ms:.3f}" if r.istiod_ms is not None else "-"
        lines.append((r.shape, r.kind, str(r.resources), f"{r.xdsd_ms:.3f}", istiod, ratio))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
