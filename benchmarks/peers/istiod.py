#!/usr/bin/env python3
"""The istiod peer of benchmarks/load.py: Istio's own pilot-discovery on the same mesh.

    python benchmarks/peers/istiod.py --mesh DIR --work DIR --port P

pilot-discovery (built from Istio's Go module by tools/istio/build.sh) reads the
mesh as it would in a cluster: Services, Pods and EndpointSlices from a Kubernetes
API server, here the test server of tests/kube/ (the real list/watch protocol, in
this process), and the Istio config (the benchmark's VirtualService) from its
`--configDir` file source. Its CA and webhooks are off (xdsd's are not part of
the benchmark either); xDS is served in plaintext on 127.0.0.1:P, as istiod's
15010.

Commands on stdin, one per line:

    endpoints FILE   a service's endpoints file (its Pods and EndpointSlice) changed:
                     its objects are applied, its Pods no longer in it deleted
    vs FILE          the VirtualService file changed: copied into the configDir

It prints "ready PID" (pilot-discovery's pid, whose CPU and memory load.py
measures) once pilot-discovery answers /ready and lists every Service of the mesh,
and stops everything on EOF of stdin or SIGTERM.

`--api-only`: no pilot-discovery; the mesh, the VirtualService too, is served by the
API server alone (for xdsd in its Kubernetes mode: `load.py --xdsd-source kube`),
and it prints "ready-api KUBECONFIG".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.kube.apiserver import KubeApiServer, ResourceType  # noqa: E402

# What istiod's informers list besides the test server's defaults (404 there would
# keep it from syncing).
EXTRA_TYPES = (
    ResourceType(
        "admissionregistration.k8s.io",
        ("v1",),
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        ("v1",),
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    ResourceType(
        "apiextensions.k8s.io",
        ("v1",),
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
    ),
    ResourceType("networking.k8s.io", ("v1",), "ingresses", "Ingress", True),
    ResourceType("networking.k8s.io", ("v1",), "ingressclasses", "IngressClass", False),
)
# Turned off, and said so in load.py's output: what the comparison must not include.
ENV = {
    "ENABLE_CA_SERVER": "false",  # no CA (xdsd's is off in the benchmark)
    "POD_NAMESPACE": "istio-system",
    "POD_NAME": "istiod-bench-0",
    "REVISION": "default",
}


def istio_bin() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "tools" / "istio" / "build.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(os.environ.get("XDSD_ISTIO_BIN") or out)


def flags(kubeconfig: Path, config_dir: Path, mesh: Path, port: int, http: int) -> list[str]:
    return [
        "discovery",
        "--kubeconfig",
        str(kubeconfig),
        "--configDir",
        str(config_dir),
        "--meshConfig",
        str(mesh),
        "--grpcAddr",
        f"127.0.0.1:{port}",
        "--httpAddr",
        f"127.0.0.1:{http}",
        "--httpsAddr",
        "",  # no webhooks
        "--secureGRPCAddr",
        "",  # no TLS xDS (no CA)
        "--monitoringAddr",
        "",
        "--log_output_level",
        "default:warn",
    ]


def load_docs(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    return [json.loads(part) for part in text.split("---\n") if part.strip()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Peer:
    def __init__(
        self, api: KubeApiServer, mesh: Path, work: Path, port: int, api_only: bool = False
    ) -> None:
        self.api, self.mesh, self.work, self.port = api, mesh, work, port
        self.api_only = api_only
        self.config_dir = work / "istiod-config"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pods: dict[Path, set[tuple[str, str]]] = {}  # endpoints file -> its pods

    def load_mesh(self) -> int:
        """Every Namespace, Service, Pod and EndpointSlice of the mesh folder, applied."""
        services = 0
        namespaces = {"istio-system"} | {p.name for p in self.mesh.iterdir() if p.is_dir()}
        for ns in sorted(namespaces):
            self.api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for path in sorted(self.mesh.glob("*/services.yaml")):
            for doc in load_docs(path):
                self.api.apply(doc)
                services += 1
        for path in sorted(self.mesh.glob("*/endpoints/*.yaml")):
            self.endpoints(path)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.mesh.glob("*/virtualservice.yaml")):
            self.istio_config(path)
        for path in sorted(self.mesh.glob("*/sidecar.yaml")):  # Sidecar scoping, if any
            self.istio_config(path)
        return services

    def endpoints(self, path: Path) -> None:
        docs = load_docs(path)
        now = set()
        for doc in docs:
            self.api.apply(doc)
            if doc["kind"] == "Pod":
                now.add((doc["metadata"]["namespace"], doc["metadata"]["name"]))
        for ns, name in self.pods.get(path, set()) - now:
            self.api.delete("Pod", ns, name)
        self.pods[path] = now

    def istio_config(self, path: Path) -> None:
        """An Istio config file (the VirtualService, a Sidecar): applied to the API server
        (--api-only), else copied into istiod's configDir."""
        if self.api_only:
            for doc in load_docs(path):
                self.api.apply(doc)
            return
        target = self.config_dir / f"{path.parent.name}-{path.name}"
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def start(self, binary: Path, services: int) -> None:
        kubeconfig = self.work / "istiod.kubeconfig"
        kubeconfig.write_text(self.api.kubeconfig_yaml("Kubernetes"))
        mesh = self.work / "istiod-mesh.yaml"
        mesh.write_text("{}\n")  # MeshConfig defaults
        http = free_port()
        self.http = http
        argv = [
            str(binary / "pilot-discovery"),
            *flags(kubeconfig, self.config_dir, mesh, self.port, http),
        ]
        log = (self.work / "pilot-discovery.log").open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, env={**os.environ, **ENV}, stdin=subprocess.DEVNULL
        )
        (self.work / "pilot-discovery.args").write_text(" ".join(argv[1:]) + "\n")

    def ready(self, services: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/ready", timeout=2) as r:
                if r.status != 200:
                    return False
            url = f"http://127.0.0.1:{self.http}/debug/registryz"
            with urllib.request.urlopen(url, timeout=10) as r:
                listed = json.loads(r.read())
        except (OSError, ValueError):
            return False
        mine = [s for s in listed if s.get("Attributes", {}).get("Namespace", "").startswith("ns-")]
        return len(mine) >= services

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def run(args: argparse.Namespace) -> int:
    async with KubeApiServer(token=None, bookmark_interval=30, max_history=1_000_000) as api:
        for rt in EXTRA_TYPES:
            api.register(rt)
        peer = Peer(api, args.mesh, args.work, args.port, api_only=args.api_only)
        services = peer.load_mesh()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + args.ready_timeout
        kubeconfig = args.work / "mesh.kubeconfig"
        kubeconfig.write_text(api.kubeconfig_yaml("Kubernetes"))
        if not args.api_only:
            peer.start(istio_bin(), services)
        try:
            while not args.api_only and not await loop.run_in_executor(None, peer.ready, services):
                if peer.proc is not None and peer.proc.poll() is not None:
                    print(f"pilot-discovery exited {peer.proc.returncode}", file=sys.stderr)
                    return 1
                if time.monotonic() > deadline:
                    print("pilot-discovery not ready in time", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.2)
            if args.api_only:
                print(f"ready-api {kubeconfig}", flush=True)
            else:
                assert peer.proc is not None
                print(f"ready {peer.proc.pid}", flush=True)
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            while not stop.is_set():
                line_task = asyncio.ensure_future(reader.readline())
                stop_task = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_task not in done:
                    stop_task.cancel()
                if line_task not in done:
                    line_task.cancel()
                    break
                raw = line_task.result()
                if not raw:
                    break  # EOF
                line = raw.decode().strip()
                if not line:
                    continue
                verb, _, path = line.partition(" ")
                if verb == "endpoints":
                    peer.endpoints(Path(path))
                elif verb == "vs":
                    peer.istio_config(Path(path))
                else:
                    print(f"istiod peer: bad command {line!r}", file=sys.stderr)
        finally:
            peer.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--mesh", type=Path, required=True, help="the mesh folder load.py wrote")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--port", type=int, default=0, help="pilot-discovery's xDS port")
    p.add_argument("--api-only", action="store_true", help="serve the mesh, run no istiod")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
