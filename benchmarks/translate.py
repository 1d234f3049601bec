#!/usr/bin/env python3
"""Measure xdsd's translate pipeline on a synthetic mesh; prints figures, asserts nothing.

    python benchmarks/translate.py [--services 1000] [--endpoints 10] [--namespaces 10]
    python benchmarks/translate.py --quick          # smaller mesh, one repetition, < 20 s

The mesh goes through the real path: Kubernetes-shaped documents (Services,
Pods, EndpointSlices) -> xdsd.model.parse -> ConfigStore -> build_snapshot ->
translate generators -> serialized Resources / GroupCache. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.internal import api_implementation

from xdsd.cache.groups import GroupCache
from xdsd.cache.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    Resource,
    ResourceSet,
    short_type,
)
from xdsd.model.build import build_snapshot
from xdsd.model.parse import ParseResult, parse_documents
from xdsd.model.proxy import Proxy, parse_proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.translate.generate import (
    GENERATORS,
    ProxyContext,
    context_key,
    group_key,
    proxy_context,
)

T = TypeVar("T")
Doc = dict[str, Any]

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
FULL = {"services": 1000, "endpoints": 10, "namespaces": 10, "ports": 1, "sidecars": 1000}
QUICK = {"services": 200, "endpoints": 5, "namespaces": 5, "ports": 1, "sidecars": 200}
FIRST_SERVICE_PORT = 8080
POD_NET = ipaddress.IPv4Address("10.0.0.1")  # pod IPs: 10.0.0.1, 10.0.0.2, ...
SERVICE_NET = ipaddress.IPv4Address("10.96.0.1")  # ClusterIPs
CLIENT_NET = ipaddress.IPv4Address("192.168.0.1")  # benchmark sidecars: not mesh pods


# -- the synthetic mesh ------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshShape:
    services: int
    endpoints: int
    namespaces: int
    ports: int

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.namespaces}"


def mesh_documents(shape: MeshShape) -> dict[str, list[Doc]]:
    """Kubernetes documents by source file: one Services/Pods/EndpointSlices file per namespace."""
    files: dict[str, list[Doc]] = {}
    ports = [(f"http-{p}" if p else "http", FIRST_SERVICE_PORT + p) for p in range(shape.ports)]
    for i in range(shape.services):
        ns = shape.namespace(i)
        name = f"svc-{i}"
        labels = {"app": name, "version": "v1"}
        files.setdefault(f"{ns}/services.yaml", []).append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {
                    "clusterIP": str(SERVICE_NET + i),
                    "selector": {"app": name},
                    "ports": [
                        {"name": pname, "port": port, "targetPort": port + 1000, "protocol": "TCP"}
                        for pname, port in ports
                    ],
                },
            }
        )
        slice_endpoints = []
        for j in range(shape.endpoints):
            ip = str(POD_NET + i * shape.endpoints + j)
            pod = f"{name}-{j}"
            files.setdefault(f"{ns}/pods.yaml", []).append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [
                            {
                                "name": "app",
                                "ports": [
                                    {"name": pname, "containerPort": port + 1000}
                                    for pname, port in ports
                                ],
                            }
                        ],
                    },
                    "status": {
                        "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
            slice_endpoints.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                    "zone": f"zone-{j % 3}",
                }
            )
        files.setdefault(f"{ns}/endpointslices.yaml", []).append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abcde",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [
                    {"name": pname, "port": port + 1000, "protocol": "TCP"} for pname, port in ports
                ],
                "endpoints": slice_endpoints,
            }
        )
    return files


def sidecar(i: int, shape: MeshShape) -> Proxy:
    """Benchmark sidecar i: a client pod (not a mesh workload) in namespace i % N."""
    ns = shape.namespace(i)
    node_id = f"sidecar~{CLIENT_NET + i}~client-{i}.{ns}~{ns}.svc.cluster.local"
    return parse_proxy(node_id, {"NAMESPACE": ns, "ISTIO_VERSION": "1.24.0"})


# -- measuring ---------------------------------------------------------------------------------


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[float, T]:
    """(best wall time in seconds over `repeat` runs, the result of that run)."""
    best: tuple[float, T] | None = None
    for _ in range(max(1, repeat)):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        if best is None or elapsed < best[0]:
            best = (elapsed, result)
        del result
    assert best is not None
    return best


def traced(fn: Callable[[], T]) -> tuple[int, int, T]:
    """(bytes still allocated when fn returns, peak bytes during fn, result) by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base, peak - base, result


@dataclass
class Served:
    cache: GroupCache
    context_s: float = 0.0  # time in proxy_context + group_key (paid by every proxy)


def serve_via_cache(snapshot: MeshSnapshot, proxies: Sequence[Proxy]) -> Served:
    """What XdsdApp does for each connected proxy: context, group key, cached ResourceSets."""
    served = Served(GroupCache())
    served.cache.reset(snapshot.generation, snapshot)
    contexts: dict[Hashable, tuple[ProxyContext, Hashable]] = {}
    for proxy in proxies:
        start = time.perf_counter()
        ckey = context_key(snapshot, proxy)
        hit = contexts.get(ckey)
        if hit is None:
            ctx = proxy_context(snapshot, proxy)
            hit = contexts[ckey] = (ctx, group_key(ctx))
        served.context_s += time.perf_counter() - start
        for type_url in PUSH_ORDER:
            if type_url in GENERATORS:
                served.cache.get(hit[0], hit[1], type_url)
    return served


def serve_individually(snapshot: MeshSnapshot, proxies: Sequence[Proxy]) -> int:
    """Every proxy generated and serialized on its own (no sharing); returns bytes made."""
    made = 0
    for proxy in proxies:
        ctx = proxy_context(snapshot, proxy)
        for type_url in PUSH_ORDER:
            generator = GENERATORS.get(type_url)
            if generator is None:
                continue
            rset = ResourceSet.of(
                type_url, [Resource.from_message(n, type_url, m) for n, m in generator(ctx)]
            )
            made += rset.size_bytes
    return made


@dataclass(frozen=True)
class TypeFigures:
    type: str
    resources: int
    generate_s: float
    serialize_s: float  # protobuf SerializeToString(deterministic=True)
    wrap_s: float  # Resource.from_bytes + ResourceSet.of: content hash, Any/Resource framing
    size: int  # serialized bytes

    def row(self) -> list[object]:
        per = self.size // self.resources if self.resources else 0
        times = (ms(self.generate_s), ms(self.serialize_s), ms(self.wrap_s))
        return [self.type, self.resources, *times, self.size / 1024, per]


def measure_type(ctx: ProxyContext, type_url: str, repeat: int) -> TypeFigures:
    """Generation, serialization and wrapping of one type for one proxy, timed apart."""
    generator = GENERATORS[type_url]
    t_gen, messages = timed(lambda: generator(ctx), repeat)

    def serialize() -> list[tuple[str, bytes]]:
        return [(n, m.SerializeToString(deterministic=True)) for n, m in messages]

    t_ser, payloads = timed(serialize, repeat)

    def wrap() -> ResourceSet:
        return ResourceSet.of(type_url, [Resource.from_bytes(n, type_url, b) for n, b in payloads])

    t_wrap, rset = timed(wrap, repeat)
    name = short_type(type_url).upper()
    return TypeFigures(name, len(rset), t_gen, t_ser, t_wrap, rset.size_bytes)


def spread(proxies: Sequence[Proxy], k: int) -> list[Proxy]:
    """k proxies taken evenly over the list (so every namespace is represented)."""
    if k >= len(proxies):
        return list(proxies)
    step = len(proxies) / k
    return [proxies[int(i * step)] for i in range(k)]


# -- output ------------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        first = r[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ms(seconds: float) -> float:
    return seconds * 1000


def mib(n: int) -> float:
    return n / (1024 * 1024)


def max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, MeshShape]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--services", type=int, help="Kubernetes Services (default 1000; quick 200)")
    p.add_argument("--endpoints", type=int, help="endpoints (Pods) per service (10; quick 5)")
    p.add_argument("--namespaces", type=int, help="namespaces the services spread over (10; 5)")
    p.add_argument("--ports", type=int, help="HTTP ports per service (1)")
    p.add_argument("--sidecars", type=int, help="sidecars served in the GroupCache test (1000)")
    p.add_argument(
        "--individual-sample",
        type=int,
        default=None,
        help="sidecars actually generated one by one; the rest is extrapolated "
        "(default: all in --quick, else 50)",
    )
    p.add_argument("--repeat", type=int, help="runs per timing, best kept (3; quick 1)")
    p.add_argument("--quick", action="store_true", help="a smaller mesh, one run each (< 20 s)")
    p.add_argument(
        "--istio-shapes",
        action="store_true",
        help="only the comparison with istiod's own pilot/pkg/xds benchmarks (its config "
        "shapes; istiod's times from `peers/build.sh istio-bench`, when built)",
    )
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.individual_sample is None:
        args.individual_sample = args.sidecars if args.quick else 50
    for name in ("services", "endpoints", "namespaces", "ports", "sidecars", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    shape = MeshShape(args.services, args.endpoints, args.namespaces, args.ports)
    return args, shape


def istio_shapes_main(repeat: int, emit: Callable[[str], None]) -> int:
    import istio_shapes

    binary = istio_shapes.istiod_binary()
    emit(
        f"per-proxy generation on istiod's benchmark shapes ({istio_shapes.SERVICES} services; "
        f"one sidecar, 1.1.1.1 in default); xdsd: generate + serialize, best of {repeat}"
    )
    emit(f"Python {platform.python_version()}, protobuf backend {api_implementation.Type()}")
    if binary is None:
        emit("  istiod: skipped: not built (benchmarks/peers/build.sh istio-bench, needs go)")
    emit()
    emit(istio_shapes.render(istio_shapes.compare(repeat, binary, emit)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, shape = parse_args(argv)

    def emit(text: str = "") -> None:
        print(text, flush=True)

    started = time.perf_counter()
    if args.istio_shapes:
        return istio_shapes_main(args.repeat, emit)
    emit(
        f"xdsd translate benchmark: {shape.services:,} services x {shape.ports} HTTP port(s), "
        f"{shape.endpoints} endpoints each, {shape.namespaces} namespaces; "
        f"{args.sidecars:,} sidecars"
    )
    emit(
        f"Python {platform.python_version()} ({platform.machine()}), "
        f"protobuf backend {api_implementation.Type()}, best of {args.repeat} run(s)"
    )
    emit()

    # -- config -> snapshot ------------------------------------------------------------------
    t_docs, files = timed(lambda: mesh_documents(shape))
    n_docs = sum(len(d) for d in files.values())

    def parse_all() -> dict[str, ParseResult]:
        return {src: parse_documents(docs, src) for src, docs in files.items()}

    t_parse, parsed = timed(parse_all, args.repeat)
    errors = [e for r in parsed.values() for e in r.errors]
    if errors:
        emit(f"warning: {len(errors)} parse errors, first: {errors[0]}")

    def fill_store() -> ConfigStore:
        store = ConfigStore()
        for src, result in parsed.items():
            store.apply_file(src, result)
        return store

    t_store, store = timed(fill_store, args.repeat)
    t_build, snapshot = timed(lambda: build_snapshot(store, generation=1), args.repeat)
    n_endpoints = sum(len(v) for v in snapshot.endpoints.values())

    # -- one sidecar, per type ---------------------------------------------------------------
    proxy = sidecar(0, shape)
    t_ctx, ctx = timed(lambda: proxy_context(snapshot, proxy), args.repeat)
    figures = [measure_type(ctx, t, args.repeat) for t in TYPES]
    total = TypeFigures(
        "total",
        sum(f.resources for f in figures),
        sum(f.generate_s for f in figures),
        sum(f.serialize_s for f in figures),
        sum(f.wrap_s for f in figures),
        sum(f.size for f in figures),
    )
    type_rows = [f.row() for f in [*figures, total]]

    emit(
        table(
            "Config -> snapshot",
            ["stage", "ms", "objects"],
            [
                ["make documents (benchmark only)", ms(t_docs), n_docs],
                ["parse (xdsd.model.parse)", ms(t_parse), n_docs],
                ["store (ConfigStore.apply_file)", ms(t_store), len(store)],
                ["build_snapshot", ms(t_build), n_endpoints],
                ["proxy_context (one sidecar)", ms(t_ctx), len(ctx.services)],
            ],
        )
    )
    emit(
        "  objects: documents parsed / objects stored / endpoints in the snapshot / "
        "services visible"
    )
    emit()
    emit(
        table(
            f"One sidecar ({proxy.id}, REDIRECT), per type",
            ["type", "resources", "generate ms", "serialize ms", "wrap ms", "KiB", "B/resource"],
            type_rows,
        )
    )
    emit()

    # -- GroupCache vs one by one --------------------------------------------------------------
    proxies = [sidecar(i, shape) for i in range(args.sidecars)]
    t_cache, served = timed(lambda: serve_via_cache(snapshot, proxies), args.repeat)
    groups = len({key for key, _ in served.cache.sets()})
    sample = spread(proxies, args.individual_sample)
    t_sample, _ = timed(lambda: serve_individually(snapshot, sample), 1)
    t_single = t_sample * len(proxies) / len(sample)
    extrapolated = len(sample) < len(proxies)
    t_shared = t_cache - served.context_s
    emit(
        table(
            f"Serving {len(proxies):,} sidecars over {shape.namespaces} namespaces "
            f"({groups} proxy groups)",
            ["how", "total ms", "ms/sidecar"],
            [
                ["through GroupCache (as XdsdApp)", ms(t_cache), ms(t_cache) / len(proxies)],
                [
                    "  proxy_context + group_key",
                    ms(served.context_s),
                    ms(served.context_s) / len(proxies),
                ],
                [
                    f"  generate + serialize ({groups} groups)",
                    ms(t_shared),
                    ms(t_shared) / len(proxies),
                ],
                [
                    "each generated individually"
                    + (f" (measured on {len(sample)}, extrapolated)" if extrapolated else ""),
                    ms(t_single),
                    ms(t_single) / len(proxies),
                ],
            ],
        )
    )
    emit(f"  GroupCache speed-up: {t_single / t_cache:,.1f}x")
    emit()

    # -- memory (tracemalloc; separate runs, tracing slows everything down) -------------------
    kept_build, peak_build, snap2 = traced(lambda: build_snapshot(store, generation=2))

    def parse_and_store() -> ConfigStore:
        fresh = ConfigStore()
        for src, docs in files.items():
            fresh.apply_file(src, parse_documents(docs, src))
        return fresh

    kept_store, peak_store, store2 = traced(parse_and_store)
    kept_group, peak_group, served2 = traced(lambda: serve_via_cache(snap2, [proxy]))
    group_bytes = sum(r.size_bytes for r in served2.cache.sets().values())
    one_per_ns = [sidecar(i, shape) for i in range(shape.namespaces)]
    kept_all, peak_all, served3 = traced(lambda: serve_via_cache(snap2, one_per_ns))
    all_bytes = sum(r.size_bytes for r in served3.cache.sets().values())
    n_groups = len({key for key, _ in served3.cache.sets()})
    emit(
        table(
            "Memory (tracemalloc: Python allocations only)",
            ["what", "retained MiB", "peak MiB"],
            [
                ["parsed config (parse + ConfigStore)", mib(kept_store), mib(peak_store)],
                ["snapshot (build_snapshot)", mib(kept_build), mib(peak_build)],
                [
                    f"one group's resources ({group_bytes / 1024:,.0f} KiB serialized)",
                    mib(kept_group),
                    mib(peak_group),
                ],
                [
                    f"all {n_groups} groups' resources ({all_bytes / 1024:,.0f} KiB serialized)",
                    mib(kept_all),
                    mib(peak_all),
                ],
            ],
        )
    )
    emit(f"  process max RSS: {max_rss_mib():,.0f} MiB")
    del store2, served2, served3
    emit()
    emit(f"done in {time.perf_counter() - started:,.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
