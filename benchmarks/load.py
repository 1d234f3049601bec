#!/usr/bin/env python3
"""Load benchmark: N simulated proxies on real ADS streams against xdsd and the floor.

    python benchmarks/load.py --quick        # 200 proxies, 200 services x 5 endpoints (~1 min)
    python benchmarks/load.py --full         # 2,000 proxies, 1,000 services x 10, 60 s churn
    python benchmarks/load.py --full --proxies 10000 --targets xdsd   # 5,000 services, Sidecar scoping

xdsd runs as a subprocess (`python -m xdsd serve`) on a synthetic mesh written
as YAML files, so its CPU and memory are measured on their own; the load
generator (benchmarks/loadgen.py) runs the proxies in worker processes; the
floor (benchmarks/floor.py) serves the same bytes, captured from xdsd, and
computes nothing. Scenarios: connect storm, VirtualService change, endpoint
churn, memory per proxy. Figures are printed, never asserted; see
benchmarks/README.md for what each one means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from loadgen import VS_MARK, ProxySpec, class_of_node, pod_ip  # noqa: E402

QUICK = {
    "proxies": 200,
    "services": 200,
    "endpoints": 5,
    "namespaces": 5,
    "churn_duration": 10.0,
    "vs_changes": 3,
}
FULL = {
    "proxies": 2000,
    "services": 1000,
    "endpoints": 10,
    "namespaces": 10,
    "churn_duration": 60.0,
    "vs_changes": 5,
}
# The larger family (`--full --proxies 10000`): 5,000 services, Sidecar scoping.
SCOPED = {**FULL, "services": 5000, "namespaces": 50, "shared_namespaces": 2}
SOVEREIGN = (
    "sovereign: not compared (sovereign 0.32 serves xDS only as REST/JSON polled by Envoy, "
    "POST /v3/discovery:TYPE; no ADS gRPC stream, SotW or Delta, so no push to converge; and "
    "its config comes from hand-written templates, not Kubernetes/Istio objects: "
    "see benchmarks/README.md)"
)


# -- the synthetic mesh, as files -----------------------------------------------------------


class Mesh:
    """Services svc-S in ns-(S mod N), E pods each; one VirtualService in ns-0.

    Files: NS/services.yaml (the namespace's Services), NS/endpoints/svc-S.yaml
    (the service's Pods and its EndpointSlice: a pod replacement rewrites this
    file only) and ns-0/virtualservice.yaml. Documents are JSON (valid YAML).

    `shared` > 0: Sidecar scoping. Every namespace has a Sidecar `default` (NS/sidecar.yaml)
    whose egress imports its own namespace and the shared ones, ns-0 .. ns-(shared-1).
    """

    def __init__(
        self, services: int, endpoints: int, namespaces: int, root: Path | None, shared: int = 0
    ) -> None:
        self.services = services
        self.endpoints = endpoints
        self.namespaces = namespaces
        self.root = root
        self.shared = frozenset(f"ns-{k}" for k in range(min(shared, namespaces)))
        # service -> [(pod name, address)] by slot
        self.pods = [
            [(f"svc-{s}-{j}", pod_ip(s * endpoints + j)) for j in range(endpoints)]
            for s in range(services)
        ]
        self.next_ip = services * endpoints
        self.replaced = 0

    def like(self, root: Path | None = None) -> Mesh:
        """A mesh of the same shape, in its initial state (written under `root`, if any)."""
        return Mesh(self.services, self.endpoints, self.namespaces, root, len(self.shared))

    def ns(self, s: int) -> str:
        return f"ns-{s % self.namespaces}"

    def write_all(self) -> None:
        assert self.root is not None
        by_ns: dict[str, list[dict[str, Any]]] = {}
        for s in range(self.services):
            by_ns.setdefault(self.ns(s), []).append(self._service(s))
        for ns, docs in by_ns.items():
            _write(self.root / ns / "services.yaml", docs)
        for s in range(self.services):
            self.write_endpoints(s)
        self.write_vs(0)
        if self.shared:
            for ns in by_ns:
                _write(self.root / ns / "sidecar.yaml", [self._sidecar(ns)])

    def _sidecar(self, ns: str) -> dict[str, Any]:
        hosts = ["./*", *(f"{shared}/*" for shared in sorted(self.shared) if shared != ns)]
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": ns},
            "spec": {"egress": [{"hosts": hosts}]},
        }

    def _service(self, s: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": f"svc-{s}",
                "namespace": self.ns(s),
                "labels": {"app": f"svc-{s}"},
            },
            "spec": {
                "clusterIP": f"172.20.{s // 250}.{s % 250 + 1}",
                "selector": {"app": f"svc-{s}"},
                "ports": [{"name": "http", "port": 8080, "targetPort": 9080, "protocol": "TCP"}],
            },
        }

    def write_endpoints(self, s: int) -> None:
        assert self.root is not None
        ns = self.ns(s)
        docs: list[dict[str, Any]] = []
        slice_eps = []
        for j, (pod, ip) in enumerate(self.pods[s]):
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod,
                        "namespace": ns,
                        "labels": {"app": f"svc-{s}", "version": "v1"},
                    },
                    "spec": {
                        "serviceAccountName": f"svc-{s}",
                        "containers": [{"name": "app", "ports": [{"containerPort": 9080}]}],
                    },
                    "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
                }
            )
            slice_eps.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                    "zone": f"zone-{j % 3}",
                }
            )
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"svc-{s}-bench",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": f"svc-{s}"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
                "endpoints": slice_eps,
            }
        )
        _write(self.root / ns / "endpoints" / f"svc-{s}.yaml", docs)

    def write_vs(self, mark: int) -> None:
        """VirtualService for svc-0 whose first route carries the marker (name and header)."""
        assert self.root is not None
        text = VS_MARK.format(mark)
        doc = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "bench-vs", "namespace": "ns-0"},
            "spec": {
                "hosts": ["svc-0"],
                "http": [
                    {
                        "name": text,
                        "match": [{"headers": {"x-bench": {"exact": text}}}],
                        "route": [{"destination": {"host": "svc-0"}}],
                    },
                    {"route": [{"destination": {"host": "svc-0"}}]},
                ],
            },
        }
        _write(self.root / "ns-0" / "virtualservice.yaml", [doc])

    def replace_pod(self, s: int, j: int) -> tuple[str, str]:
        """Pod slot j of svc-s gets a new pod (new name and address); (old, new) address."""
        self.replaced += 1
        old = self.pods[s][j][1]
        new = pod_ip(self.next_ip)
        self.next_ip += 1
        self.pods[s][j] = (f"svc-{s}-{j}-r{self.replaced}", new)
        if self.root is not None:
            self.write_endpoints(s)
        return old, new


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    """Atomically (a dot-file renamed into place: the folder source skips dot-files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    os.replace(tmp, path)


def proxy_specs(n: int, mesh: Mesh, protocol: str) -> list[ProxySpec]:
    """Proxy i is the sidecar of pod i (svc-S's pods in order); beyond the pods, clients."""
    specs = []
    for i in range(n):
        if i < mesh.services * mesh.endpoints:
            s, j = divmod(i, mesh.endpoints)
            pod, ip = mesh.pods[s][j]
            ns = mesh.ns(s)
        else:
            ns = f"ns-{i % mesh.namespaces}"
            pod, ip = f"client-{i}", f"10.0.{i // 250 % 250}.{i % 250 + 1}"
        node_id = f"sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"
        delta = protocol == "delta" or (protocol == "mixed" and i % 2 == 1)
        specs.append(ProxySpec(i, node_id, ns, delta, class_of_node(node_id)))
    return specs


def churn_plan(mesh: Mesh, n_proxies: int, events: int) -> list[tuple[int, int]]:
    """(service, pod slot) per event: services whose pods are not benchmark proxies first;
    with Sidecar scoping, services of the shared namespaces (seen by every proxy)."""
    first_free = min(mesh.services, math.ceil(n_proxies / mesh.endpoints))
    everyone = [s for s in range(mesh.services) if not mesh.shared or mesh.ns(s) in mesh.shared]
    pool = [s for s in everyone if s >= first_free] or everyone
    return [(pool[i % len(pool)], (i // len(pool)) % mesh.endpoints) for i in range(events)]


# -- processes --------------------------------------------------------------------------------


def xdsd_revision() -> str:
    """The commit xdsd runs from, and whether xdsd/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "xdsd"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "revision unknown (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes in xdsd/" if dirty else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    out.append(int(entry.name))
    return out


class Server:
    """A server under test in a subprocess."""

    name = ""

    def __init__(self, argv: list[str], log: Path, stdin: int | None = None) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE if stdin is not None else self._log,
            stderr=self._log,
            cwd=HERE.parent,
        )
        self.port = getattr(self, "port", 0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class XdsdServer(Server):
    name = "xdsd"

    def __init__(
        self,
        config_dir: Path,
        work: Path,
        args: argparse.Namespace,
        kubeconfig: Path | None = None,
    ) -> None:
        """`kubeconfig`: read the mesh from that Kubernetes API server instead of the folder."""
        self.port = free_port()
        self.admin = free_port()
        prefix = [sys.executable]
        if args.profile_server:
            prefix += ["-m", "cProfile", "-o", str(args.profile_server)]
        else:
            prefix += ["-m"]
        argv = [
            *prefix,
            "xdsd",
            "serve",
            *(
                ("--kubeconfig", str(kubeconfig))
                if kubeconfig
                else ("--config-dir", str(config_dir))
            ),
            "--xds-port",
            str(self.port),
            "--admin-port",
            str(self.admin),
            "--log-level",
            "warning",
            "--poll-interval",
            str(args.poll_interval),
            "--workers",
            str(args.server_workers),
            *args.xdsd_arg,
        ]
        if args.profile_server:
            argv[argv.index("xdsd")] = str(Path(sys.executable).parent / "xdsd")
        super().__init__(argv, work / "xdsd.log")

    def streams_per_worker(self, total: int) -> str:
        """serve --workers: each worker's ADS streams, from the supervisor's /debug/workers
        (workers report every 0.2 s: wait up to 3 s for all `total` to be counted)."""
        url = f"http://127.0.0.1:{self.admin}/debug/workers"
        counts: list[int] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=5) as r,
            ):
                counts = [int(w["streams"]) for w in json.loads(r.read())]
            if sum(counts) >= total:
                break
            time.sleep(0.1)
        return " / ".join(map(str, counts)) if counts else "unknown"

    def gc_pauses(self) -> tuple[float, float, float, float | None]:
        """(full collections, seconds in them, seconds in all collections, the longest
        pause's histogram bucket) from xdsd's /metrics (`xdsd_gc_pause_seconds`; with
        --server-workers, the supervisor's only)."""
        url = f"http://127.0.0.1:{self.admin}/metrics"
        full = full_s = total = 0.0
        buckets: dict[float, float] = {}
        counts = 0.0
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                value = line.rsplit(" ", 1)[-1]
                if line.startswith("xdsd_gc_pause_seconds_sum{"):
                    total += float(value)
                    if 'generation="2"' in line:
                        full_s = float(value)
                elif line.startswith("xdsd_gc_pause_seconds_count{"):
                    counts += float(value)
                    if 'generation="2"' in line:
                        full = float(value)
                elif line.startswith("xdsd_gc_pause_seconds_bucket{"):
                    le = line.split('le="', 1)[1].split('"', 1)[0]
                    bound = float("inf") if le == "+Inf" else float(le)
                    buckets[bound] = buckets.get(bound, 0.0) + float(value)
        longest = min((b for b, c in buckets.items() if c >= counts), default=None)
        return full, full_s, total, longest

    # With --server-workers N the server is the supervisor and its N worker processes.
    def cpu(self) -> float:
        return proc_cpu(self.pid) + sum(proc_cpu(c) for c in children(self.pid))

    def rss(self) -> int:
        return proc_rss(self.pid) + sum(proc_rss(c) for c in children(self.pid))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.admin}/ready"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"xdsd exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"xdsd not ready after {timeout:.0f} s:\n{self.log_tail()}")


class FloorServer(Server):
    name = "floor"

    def __init__(self, capture: Path, work: Path) -> None:
        port = free_port()
        argv = [
            sys.executable,
            str(HERE / "floor.py"),
            "--capture",
            str(capture),
            "--port",
            str(port),
        ]
        super().__init__(argv, work / "floor.log", stdin=subprocess.PIPE)
        self.port = port

    def wait_ready(self, timeout: float) -> None:
        self.ready_line("ready", timeout)

    def ready_line(self, word: str, timeout: float) -> list[str]:
        """Wait for the stdout line starting with `word`; the words after it."""
        assert self.proc.stdout is not None
        import select

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                first, *rest = line.decode().split() or [""]
                if first == word:
                    return rest
                if not line:
                    break
            if not self.alive():
                break
        raise RuntimeError(f"{self.name} not ready:\n{self.log_tail()}")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        super().stop()


class GcpServer(FloorServer):
    """The go-control-plane peer (benchmarks/peers/gcp): the floor's protocol, Go's caches."""

    name = "gcp"

    def __init__(self, binary: str, capture: Path, work: Path) -> None:
        port = free_port()
        argv = [binary, "-capture", str(capture), "-port", str(port)]
        Server.__init__(self, argv, work / "gcp.log", stdin=subprocess.PIPE)
        self.port = port


class MeshApiServer(FloorServer):
    """The mesh in the Kubernetes API test server, for xdsd's Kubernetes mode
    (benchmarks/peers/istiod.py --api-only): changes are applied to it as for istiod."""

    name = "api"

    def __init__(self, mesh_dir: Path, work: Path) -> None:
        argv = [
            sys.executable,
            str(HERE / "peers" / "istiod.py"),
            *("--api-only", "--mesh", str(mesh_dir), "--work", str(work / "api")),
        ]
        Server.__init__(self, argv, work / "api.log", stdin=subprocess.PIPE)
        self.kubeconfig = Path()

    def wait_ready(self, timeout: float) -> None:
        self.kubeconfig = Path(self.ready_line("ready-api", timeout)[0])


class IstiodServer(FloorServer):
    """istiod (pilot-discovery) on the same mesh, through benchmarks/peers/istiod.py: the
    mesh's Kubernetes objects from the Kubernetes API test server, the VirtualService
    from its --configDir. CPU and memory are pilot-discovery's own (not the API server's)."""

    name = "istiod"

    def __init__(self, mesh_dir: Path, work: Path) -> None:
        port = free_port()
        argv = [
            sys.executable,
            str(HERE / "peers" / "istiod.py"),
            *("--mesh", str(mesh_dir), "--work", str(work / "istiod"), "--port", str(port)),
        ]
        Server.__init__(self, argv, work / "istiod.log", stdin=subprocess.PIPE)
        self.port = port
        self.istiod_pid = 0

    def wait_ready(self, timeout: float) -> None:
        self.istiod_pid = int(self.ready_line("ready", timeout)[0])

    @property
    def pid(self) -> int:
        return self.istiod_pid or self.proc.pid


def istiod_description() -> str:
    """pilot-discovery's version and flags, for the output."""
    from peers import istiod as peer

    binary = peer.istio_bin() / "pilot-discovery"
    done = subprocess.run([str(binary), "version", "-s"], capture_output=True, text=True)
    version = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"
    flags = " ".join(peer.flags(Path("KUBECONFIG"), Path("CONFIG_DIR"), Path("MESH"), 0, 0))
    env = " ".join(f"{k}={v}" for k, v in peer.ENV.items())
    return f"pilot-discovery {version}; {env} {flags}"


def build_peer(name: str, say: Callable[[str], None]) -> str | None:
    """The peer's binary, built by benchmarks/peers/build.sh; None (said why) without Go."""
    script = HERE / "peers" / "build.sh"
    if shutil.which("go") is None:
        say(f"  {name}: skipped: go is not on PATH (the peer is built from its Go module)")
        return None
    done = subprocess.run(["bash", str(script), name], capture_output=True, text=True)
    if done.returncode != 0:
        say(f"  {name}: skipped: building it failed: {done.stderr.strip()[-500:]}")
        return None
    if done.stdout.strip():
        say(f"  {done.stdout.strip()}")
    path = subprocess.run(
        ["bash", str(script), name, "--print"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return path


def byte_swaps(
    server: FloorServer, mesh: Mesh
) -> tuple[Callable[[int], None], Callable[[int, int], tuple[str, str]]]:
    """The VirtualService and endpoint changes of a peer serving captured bytes (the floor,
    go-control-plane): the marker or address swapped, by a command on its stdin."""
    marks = {"vs": 0}

    def vs(k: int) -> None:
        server.command(f"rds {VS_MARK.format(marks['vs'])} {VS_MARK.format(k)}")
        marks["vs"] = k

    def ep(s: int, j: int) -> tuple[str, str]:
        old, new = mesh.replace_pod(s, j)
        server.command(f"eds {old} {new}")
        return old, new

    return vs, ep


def istio_bin_dir() -> Path:
    from peers import istiod as peer

    return peer.istio_bin()


def write_gcp_capture(data: dict[str, Any], path: Path) -> None:
    """The capture as the Go peer reads it: each payload once, classes by index."""
    import base64

    index: dict[bytes, int] = {}
    payloads: list[str] = []
    classes: dict[str, dict[str, dict[str, int]]] = {}
    for klass, by_type in data.items():
        out = classes[klass] = {}
        for type_url, named in by_type.items():
            names = out[type_url] = {}
            for name, payload in named.items():
                i = index.get(payload)
                if i is None:
                    i = index[payload] = len(payloads)
                    payloads.append(base64.b64encode(payload).decode())
                names[name] = i
    path.write_text(json.dumps({"payloads": payloads, "classes": classes}))


class Workers:
    """Load generator processes, each an asyncio loop with its share of the proxies."""

    def __init__(self, specs: Sequence[ProxySpec], count: int, per_channel: int) -> None:
        ctx = mp.get_context("spawn")  # no fork after grpc is loaded
        count = max(1, min(count, len(specs)))
        size = math.ceil(len(specs) / count)
        self.pipes = []
        self.procs = []
        for w in range(count):
            parent, child = ctx.Pipe()
            chunk = list(specs[w * size : (w + 1) * size])
            proc = ctx.Process(
                target=loadgen.worker_main, args=(child, chunk, per_channel), daemon=True
            )
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def call(self, *cmd: Any, timeout: float = 600) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(cmd)
        out = []
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            if not pipe.poll(timeout):
                raise RuntimeError(f"load worker {proc.pid} did not answer {cmd[0]!r}")
            out.append(pipe.recv())
        return out

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs if p.pid)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Figures:
    name: str
    values: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run_target(
    server: Server,
    workers: Workers,
    specs: Sequence[ProxySpec],
    mesh: Mesh,
    args: argparse.Namespace,
    push_vs: Callable[[int], None],
    push_endpoint: Callable[[int, int], tuple[str, str]],
    after_storm: Callable[[], None] | None,
    say: Callable[[str], None],
) -> Figures:
    fig = Figures(server.name)
    v = fig.values
    n = len(specs)
    address = f"127.0.0.1:{server.port}"

    # -- idle: memory with no proxy, CPU of the folder watch and timers
    time.sleep(0.5)
    rss0 = server.rss()
    c0 = server.cpu()
    time.sleep(args.idle)
    v["idle_cpu"] = (server.cpu() - c0) / args.idle * 100
    v["rss0"] = rss0 / 2**20

    # -- 1. connect storm
    say(f"  {server.name}: connect storm, {n:,} proxies")
    c0, w0 = server.cpu(), workers.cpu()
    t0 = storm_t0 = time.monotonic()
    workers.call("connect", address)
    got = [x for part in workers.call("wait_full", t0 + args.storm_timeout) for x in part]
    fulls = [tf for _, tf in got if tf is not None]
    t_end = max(fulls) if fulls else time.monotonic()
    v["storm_full"] = len(fulls)
    v["storm_s"] = (t_end - t0) if len(fulls) == n else None
    v["storm_tput"] = len(fulls) / (t_end - t0) if fulls else None
    per_proxy = [tf - ts for ts, tf in got if tf is not None]
    v["storm_p50"] = _ms(pct(per_proxy, 0.5))
    v["storm_cpu"] = server.cpu() - c0
    if isinstance(server, XdsdServer) and args.server_workers > 1:
        say(f"  {server.name}: proxies held per worker process: {server.streams_per_worker(n)}")
    v["storm_cpu_per_proxy"] = v["storm_cpu"] / max(1, len(fulls)) * 1000
    v["storm_gen_cpu"] = workers.cpu() - w0
    time.sleep(1.0)
    v["rssN"] = server.rss() / 2**20
    v["kib_per_proxy"] = (server.rss() - rss0) / 1024 / n
    if len(fulls) < n:
        fig.notes.append(f"connect storm: only {len(fulls):,} of {n:,} proxies got full config")
    if after_storm is not None:
        after_storm()

    # -- 2. VirtualService change: every proxy's RDS carries the new marker
    lat: list[float] = []
    if "vs" not in args.scenario_list:
        args.vs_changes_run = 0
    fanouts: list[float] = []
    missing = 0
    for k in range(1, getattr(args, "vs_changes_run", args.vs_changes) + 1):
        time.sleep(args.settle)
        t0 = time.monotonic()
        push_vs(k)
        times = [x for part in workers.call("wait_vs", k, t0 + args.change_timeout) for x in part]
        seen = [t - t0 for t in times if t is not None]
        missing += n - len(seen)
        lat.extend(seen)
        if len(seen) > 1 and max(seen) > min(seen):
            fanouts.append(len(seen) / (max(seen) - min(seen)))
    if fanouts or lat:
        say(f"  {server.name}: {args.vs_changes} VirtualService changes")
    v["vs_p50"], v["vs_p99"], v["vs_max"] = (_ms(pct(lat, q)) for q in (0.5, 0.99, 1.0))
    v["vs_missing"] = missing
    v["vs_fanout"] = statistics.median(fanouts) if fanouts else None

    # -- 3. endpoint churn: one pod replaced every interval
    events = max(1, int(args.churn_duration * 1000 / args.churn_interval))
    if "churn" not in args.scenario_list:
        events = 0
    if events:
        plan = churn_plan(mesh, n, events)
        mesh_copy = mesh.like()
        mesh_copy.pods = [list(p) for p in mesh.pods]
        mesh_copy.next_ip, mesh_copy.replaced = mesh.next_ip, mesh.replaced
        new_ips = {mesh_copy.replace_pod(s, j)[1].encode(): i for i, (s, j) in enumerate(plan)}
        workers.call("track_ips", new_ips)
        say(
            f"  {server.name}: endpoint churn, {events} pod replacements every "
            f"{args.churn_interval:g} ms"
        )
        time.sleep(args.settle)
        c0, w0 = server.cpu(), workers.cpu()
        start = time.monotonic()
        written: list[float] = []
        for i, (s, j) in enumerate(plan):
            delay = start + i * args.churn_interval / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            written.append(time.monotonic())
            push_endpoint(s, j)
        churn_wall = time.monotonic() - start
        cpu_churn = server.cpu() - c0
        time.sleep(args.churn_grace)
        per_event: dict[int, list[float]] = {}
        for part in workers.call("collect_ips"):
            for ev, ts in part.items():
                per_event.setdefault(ev, []).extend(ts)
        lat = [t - written[ev] for ev, ts in per_event.items() for t in ts]
        v["churn_events"] = events
        v["churn_p50"], v["churn_p99"], v["churn_max"] = (
            _ms(pct(lat, q)) for q in (0.5, 0.99, 1.0)
        )
        v["churn_missing"] = events * n - len(lat)
        v["churn_cpu"] = cpu_churn / churn_wall * 100
        v["churn_gen_cpu"] = (workers.cpu() - w0) / (churn_wall + args.churn_grace) * 100

    if isinstance(server, XdsdServer):
        v["gc_full"], v["gc_full_s"], v["gc_s"], v["gc_max"] = server.gc_pauses()
        if args.metrics_out is not None:  # for looking into where the time went
            url = f"http://127.0.0.1:{server.admin}/metrics"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
                args.metrics_out.write_bytes(r.read())

    # -- stream health at the end
    stats = workers.call("stats")
    v["errors"] = sum(s["errors"] for s in stats)
    v["alive"] = sum(s["alive"] for s in stats)
    v["sent_mib"] = sum(s["bytes"] for s in stats) / 2**20
    err_times = sorted(t for s in stats for t in s["error_times"])
    if err_times:
        failed = sum(s["proxies_failed"] for s in stats)
        fig.notes.append(
            f"{int(v['errors']):,} stream failures on {failed:,} proxies (each retried with "
            f"Envoy's backoff); the last at {err_times[-1] - storm_t0:,.1f} s after the storm "
            "began; core: " + " | ".join(sorted({d for s in stats for d in s["error_debug"]}))[:300]
        )
    samples = sorted({e for s in stats for e in s["error_samples"]})
    if samples:
        fig.notes.append("stream errors, e.g.: " + "; ".join(samples[:3]))
    workers.call("close")
    return fig


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# -- profiling --------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = find_py_spy()
    if exe is None:
        return None
    argv = [
        exe,
        "record",
        "-p",
        str(pid),
        "-f",
        "raw",
        "-o",
        str(out),
        "-r",
        "100",
        "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def profile_summary(path: Path, top: int = 15) -> str:
    """Self and inclusive shares of sampled CPU per file:function, from py-spy raw stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    if not total:
        return "  (no samples)"
    lines = [f"  {total:,} samples (100 Hz, threads with Python on CPU)"]
    lines.append("  self  function (where the time is spent)")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {c / total * 100:4.1f}%  {f}")
    lines.append("  incl  xdsd function (time below it)")
    mine = [(f, c) for f, c in incl.items() if f.startswith("xdsd/")]
    for f, c in sorted(mine, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {c / total * 100:4.1f}%  {f}")
    return "\n".join(lines)


def _frame(text: str) -> str:
    name, _, where = text.rpartition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    if "/xdsd/" in file:
        file = "xdsd/" + file.rsplit("/xdsd/", 1)[1]
    return f"{file}:{name}" if name else text


# -- output -----------------------------------------------------------------------------------

# (key, label, better: "low"/"high"/None, target text)
ROWS: list[tuple[str, str, str | None, str]] = [
    ("storm_s", "connect storm: all proxies ACKed full config (s)", "low", ""),
    ("storm_tput", "  throughput (proxies/s)", "high", ">= 0.7 x floor"),
    ("storm_p50", "  per proxy, stream open -> full config ACKed p50 (ms)", "low", ""),
    ("storm_cpu", "  server CPU (s)", "low", ""),
    ("storm_cpu_per_proxy", "  server CPU per converged proxy (ms)", "low", ""),
    ("storm_gen_cpu", "  load generator CPU (s)", None, ""),
    ("vs_p50", "VirtualService change -> ACKed by all: p50 (ms)", "low", ""),
    ("vs_p99", "  p99 (ms)", "low", "<= 1000 at 2,000"),
    ("vs_max", "  max (ms)", "low", ""),
    ("vs_fanout", "  fan-out, first to last ACK (proxies/s)", "high", ">= 0.7 x floor"),
    ("vs_missing", "  proxies that never ACKed it", "low", "0"),
    ("churn_events", "endpoint churn: pod replacements", None, ""),
    ("churn_p50", "  convergence at each proxy: p50 (ms)", "low", ""),
    ("churn_p99", "  p99 (ms)", "low", "<= 250"),
    ("churn_max", "  max (ms)", "low", ""),
    ("churn_missing", "  (event, proxy) pairs never ACKed", "low", "0"),
    ("churn_cpu", "  server CPU (% of one core)", "low", ""),
    ("churn_gen_cpu", "  load generator CPU (% of one core)", None, ""),
    ("idle_cpu", "idle server CPU, no proxies (% of one core)", "low", ""),
    ("rss0", "memory: server RSS, no proxies (MiB)", "low", ""),
    ("rssN", "  server RSS, all connected (MiB)", "low", ""),
    ("kib_per_proxy", "  per connected proxy (KiB)", "low", "<= 100"),
    ("gc_full", "server full GC passes, whole run", None, ""),
    ("gc_full_s", "  server time in full GC passes (s)", None, ""),
    ("gc_s", "  server time in all GC passes, young ones too (s)", None, ""),
    ("gc_max", "  longest GC pause, at most (s)", None, ""),
    ("alive", "streams still open at the end", "high", "all"),
    ("errors", "stream failures (retried with backoff)", "low", "0"),
    ("sent_mib", "bytes received by the proxies (MiB)", None, ""),
]


NO_RATIO = frozenset({"vs_missing", "churn_missing", "alive", "errors", "churn_events"})


def render(figs: Sequence[Figures]) -> str:
    header = ["scenario / figure", *(f.name for f in figs)]
    # xdsd against each peer measured in the same run.
    peers = [f for f in figs[1:] if figs and figs[0].name == "xdsd"]
    header += [f"xdsd/{f.name}" for f in peers]
    header.append("target (issue 7)")
    rows = []
    for key, label, _better, target in ROWS:
        cells = [label, *(_cell(f.values.get(key)) for f in figs)]
        for peer in peers:
            a, b = figs[0].values.get(key), peer.values.get(key)
            comparable = _better is not None and key not in NO_RATIO
            cells.append(f"{a / b:,.2f}" if comparable and a is not None and b else "")
        cells.append(target)
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        parts = [
            r[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1], strict=True)),
        ]
        parts.append(r[-1])
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _cell(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, about a minute (default)")
    size.add_argument("--full", action="store_true", help="issue 7's profile: 2,000 proxies, ...")
    p.add_argument("--proxies", type=int, help="simulated proxies (quick 200, full 2,000)")
    p.add_argument("--services", type=int, help="Kubernetes Services (200 / 1,000)")
    p.add_argument("--endpoints", type=int, help="pods per service (5 / 10)")
    p.add_argument("--namespaces", type=int, help="namespaces (5 / 10)")
    p.add_argument(
        "--shared-namespaces",
        type=int,
        help="Sidecar scoping: each namespace's Sidecar imports its own and this many shared "
        "namespaces (0: no Sidecars; 2 with --full --proxies 10000 or more)",
    )
    p.add_argument("--protocol", choices=["mixed", "sotw", "delta"], default="mixed")
    p.add_argument("--workers", type=int, default=2, help="load generator processes (2)")
    p.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="xdsd's worker processes (serve --workers N; 1: one process); server CPU and "
        "memory are summed over the supervisor and its workers",
    )
    p.add_argument(
        "--streams-per-channel",
        type=int,
        help=f"ADS streams sharing one gRPC channel / HTTP/2 connection "
        f"({loadgen.STREAMS_PER_CHANNEL}; with --server-workers > 1: 10, since the kernel "
        "spreads connections, not streams, over the workers)",
    )
    p.add_argument(
        "--churn-interval", type=float, default=110.0, help="ms between pod replacements"
    )
    p.add_argument("--churn-duration", type=float, help="seconds of churn (10 / 60)")
    p.add_argument("--vs-changes", type=int, help="VirtualService edits (3 / 5)")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.05,
        help="xdsd's --poll-interval, s: the cap on batching folder events, and the folder "
        "poll where events are unavailable (0.05: the folder stands in for a Kubernetes watch)",
    )
    p.add_argument(
        "--targets",
        default="xdsd,floor",
        help="xdsd,floor,gcp,istiod (floor and gcp serve what xdsd generated, so they need "
        "xdsd; gcp: the go-control-plane peer, istiod: pilot-discovery, both built with go)",
    )
    p.add_argument(
        "--xdsd-source",
        choices=["folder", "kube"],
        default="folder",
        help="where xdsd reads the mesh: its config folder (file events), or the Kubernetes "
        "API test server istiod reads too (kube: the same watch path for both)",
    )
    p.add_argument(
        "--scenarios",
        default="storm,vs,churn",
        help="storm,vs,churn (the storm and memory always run: the others need the proxies)",
    )
    p.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measurement")
    p.add_argument("--settle", type=float, default=0.5, help="pause between steps, s")
    p.add_argument("--churn-grace", type=float, default=3.0, help="wait after the last churn, s")
    p.add_argument("--storm-timeout", type=float, help="s (default: 30 + 40 ms per proxy)")
    p.add_argument("--change-timeout", type=float, default=30.0, help="s per VS change")
    p.add_argument("--profile-server", type=Path, help="run xdsd under cProfile, stats to FILE")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="sample xdsd with py-spy (if installed) during its scenarios; raw stacks to FILE "
        "and a summary printed",
    )
    p.add_argument("--keep", type=Path, help="keep the mesh folder and logs here")
    p.add_argument(
        "--metrics-out", type=Path, metavar="FILE", help="xdsd's /metrics at the end of its run"
    )
    p.add_argument(
        "--xdsd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for xdsd serve (repeat; e.g. --xdsd-arg=--push-concurrency=500)",
    )
    args = p.parse_args(argv)
    base = FULL if args.full else QUICK
    if args.full and args.proxies is not None and args.proxies >= 10_000:
        base = SCOPED
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.shared_namespaces is None:
        args.shared_namespaces = 0
    if args.shared_namespaces < 0:
        p.error("--shared-namespaces must not be negative")
    if args.storm_timeout is None:
        args.storm_timeout = 30 + 0.04 * args.proxies
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not set(targets) <= {"xdsd", "floor", "gcp", "istiod"} or "xdsd" not in targets:
        p.error("--targets: xdsd, optionally with floor, gcp and istiod")
    args.target_list = targets
    args.scenario_list = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    if args.streams_per_channel is None:
        args.streams_per_channel = loadgen.STREAMS_PER_CHANNEL if args.server_workers == 1 else 10
    for name in ("proxies", "services", "endpoints", "namespaces", "workers", "server_workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: TextIO = sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="xdsd-load-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    config = work / "mesh"
    if config.exists():
        shutil.rmtree(config)
    mesh = Mesh(args.services, args.endpoints, args.namespaces, config, args.shared_namespaces)
    mesh.write_all()
    specs = proxy_specs(args.proxies, mesh, args.protocol)
    n_delta = sum(1 for s in specs if s.delta)
    say(
        f"xdsd load benchmark: {args.proxies:,} proxies ({args.proxies - n_delta:,} SotW, "
        f"{n_delta:,} Delta) in {args.workers} load processes; {args.services:,} services x "
        f"{args.endpoints} endpoints over {args.namespaces} namespaces"
    )
    n_sw = args.server_workers
    server = (
        f"{n_sw} worker processes (serve --workers; CPU and memory: supervisor + workers)"
        if n_sw > 1
        else "1 process"
    )
    say(
        f"xdsd: {xdsd_revision()}; server: {server}; "
        f"{args.streams_per_channel} ADS streams per client connection"
    )
    say(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; xdsd "
        + (
            "reads the mesh from the Kubernetes API test server (list/watch, as istiod)"
            if args.xdsd_source == "kube"
            else f"watches its config folder (--poll-interval {args.poll_interval:g} s)"
        )
        + "; churn: one pod replaced every "
        f"{args.churn_interval:g} ms for {args.churn_duration:g} s"
    )
    if mesh.shared:
        say(
            f"Sidecar scoping: each of {args.namespaces} namespaces imports its own and "
            f"{', '.join(sorted(mesh.shared))}; churn replaces pods of the shared namespaces"
        )
    say()
    workers: Workers | None = None
    spy: subprocess.Popen[bytes] | None = None
    servers: list[Server] = []
    figs: list[Figures] = []
    try:
        workers = Workers(specs, args.workers, args.streams_per_channel)
        # -- xdsd
        api: MeshApiServer | None = None
        if args.xdsd_source == "kube":
            api = MeshApiServer(config, work)
            servers.append(api)
            api.wait_ready(120 + args.services * args.endpoints / 100)
        xdsd = XdsdServer(config, work, args, api.kubeconfig if api else None)
        servers.append(xdsd)
        xdsd.wait_ready(60 + args.services * args.endpoints / 200)
        if args.py_spy:
            spy = start_py_spy(xdsd.pid, args.py_spy)
            if spy is None:
                say("  py-spy not found: no profile")
        capture_file = work / "capture.pickle"

        def capture() -> None:
            reps: dict[str, ProxySpec] = {}
            for s in specs:
                reps.setdefault(s.klass, ProxySpec(s.index, s.node_id, s.namespace, False, s.klass))
            say(f"  xdsd: capturing the served bytes for the floor ({len(reps)} proxy classes)")
            try:
                data = asyncio.run(
                    loadgen.capture(
                        f"127.0.0.1:{xdsd.port}", list(reps.values()), args.storm_timeout
                    )
                )
            except RuntimeError as e:
                say(f"  xdsd: capture failed, no floor: {e}")
                return
            capture_file.write_bytes(pickle.dumps(data))

        def vs_xdsd(k: int) -> None:
            mesh.write_vs(k)
            if api is not None:
                api.command(f"vs {config / 'ns-0' / 'virtualservice.yaml'}")

        def ep_xdsd(s: int, j: int) -> tuple[str, str]:
            old, new = mesh.replace_pod(s, j)
            if api is not None:
                api.command(f"endpoints {config / mesh.ns(s) / 'endpoints' / f'svc-{s}.yaml'}")
            return old, new

        floor_mesh = mesh.like()
        figs.append(
            run_target(
                xdsd,
                workers,
                specs,
                mesh.like(),
                args,
                vs_xdsd,
                ep_xdsd,
                capture if {"floor", "gcp"} & set(args.target_list) else None,
                say,
            )
        )
        stop_py_spy(spy)
        xdsd.stop()
        if api is not None:
            api.stop()
        # -- the floor: the same bytes, the same changes, from the same initial state
        if "floor" in args.target_list and capture_file.exists():
            floor = FloorServer(capture_file, work)
            servers.append(floor)
            floor.wait_ready(60)
            vs_floor, ep_floor = byte_swaps(floor, floor_mesh)
            figs.append(
                run_target(floor, workers, specs, floor_mesh, args, vs_floor, ep_floor, None, say)
            )
            floor.stop()
        # -- go-control-plane: the same bytes in its snapshot and linear caches
        gcp_bin = build_peer("gcp", say) if "gcp" in args.target_list else None
        if gcp_bin is not None and capture_file.exists():
            gcp_capture = work / "capture-gcp.json"
            write_gcp_capture(pickle.loads(capture_file.read_bytes()), gcp_capture)
            gcp = GcpServer(gcp_bin, gcp_capture, work)
            servers.append(gcp)
            gcp.wait_ready(120)
            gcp_mesh = mesh.like()
            vs_gcp, ep_gcp = byte_swaps(gcp, gcp_mesh)
            fig = run_target(gcp, workers, specs, gcp_mesh, args, vs_gcp, ep_gcp, None, say)
            fig.notes.append(gcp.log_tail(1))
            figs.append(fig)
            gcp.stop()
        # -- istiod: Istio's own control plane on the same mesh
        if "istiod" in args.target_list:
            if not (istio_bin_dir() / "pilot-discovery").is_file():
                say("  istiod: skipped: pilot-discovery not built (tools/istio/build.sh, needs go)")
            else:
                istiod_mesh = mesh.like(work / "imesh")
                istiod_mesh.write_all()
                istiod = IstiodServer(istiod_mesh.root or work, work)
                servers.append(istiod)
                istiod.wait_ready(120 + args.services * args.endpoints / 100)
                say(f"  istiod: {istiod_description()}")
                assert istiod_mesh.root is not None
                iroot = istiod_mesh.root

                def vs_istiod(k: int) -> None:
                    istiod_mesh.write_vs(k)
                    istiod.command(f"vs {iroot / 'ns-0' / 'virtualservice.yaml'}")

                def ep_istiod(s: int, j: int) -> tuple[str, str]:
                    old, new = istiod_mesh.replace_pod(s, j)
                    path = iroot / istiod_mesh.ns(s) / "endpoints" / f"svc-{s}.yaml"
                    istiod.command(f"endpoints {path}")
                    return old, new

                figs.append(
                    run_target(
                        istiod, workers, specs, istiod_mesh, args, vs_istiod, ep_istiod, None, say
                    )
                )
                istiod.stop()
    except KeyboardInterrupt:
        say("interrupted: stopping the servers and load processes")
        return 130
    finally:
        stop_py_spy(spy)
        if workers is not None:
            workers.stop()
        for server in servers:
            server.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    say()
    say(render(figs))
    for f in figs:
        for note in f.notes:
            say(f"  {f.name}: {note}")
    say(f"  {SOVEREIGN}")
    if args.profile_server:
        say(f"  xdsd cProfile stats: {args.profile_server}")
    if args.py_spy and args.py_spy.exists():
        say()
        say(f"xdsd profile (py-spy, all scenarios; raw stacks in {args.py_spy})")
        say(profile_summary(args.py_spy))
    say()
    say(f"done in {time.monotonic() - started:,.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
