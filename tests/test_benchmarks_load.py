"""Smoke test: the load benchmark runs a tiny mesh against xdsd and the floor and prints its table.

No figure is asserted (they depend on the machine): only that every scenario
ran end to end, each proxy reached full config, no stream failed, and that the
processes it started are gone afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"
TINY = [
    "--proxies", "10", "--services", "10", "--endpoints", "2", "--namespaces", "2",
    "--churn-duration", "3", "--vs-changes", "2", "--idle", "0.5", "--settle", "0.2",
    "--churn-grace", "1.5",
]  # fmt: skip


def run_load(*args: str) -> str:
    """The benchmark's output, once it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def table_rows(out: str) -> dict[str, str]:
    """Each table line by its label."""
    return {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()}


@pytest.mark.timeout(60)
def test_load_benchmark_prints_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--keep", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "10 proxies (5 SotW, 5 Delta)" in out, out
    header = next(line for line in out.splitlines() if line.startswith("scenario / figure"))
    assert re.split(r"\s{2,}", header)[1:4] == ["xdsd", "floor", "xdsd/floor"], header
    rows = {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()}
    for label in (
        "connect storm: all proxies ACKed full config (s)",
        "VirtualService change -> ACKed by all: p50 (ms)",
        "endpoint churn: pod replacements",
        "memory: server RSS, no proxies (MiB)",
        "per connected proxy (KiB)",
    ):
        assert label in rows, out
    # Every proxy connected and saw every change, on both servers (counts, not timings).
    assert rows["streams still open at the end"].split()[-3:-1] == ["10", "10"], out
    assert rows["stream failures (retried with backoff)"].split()[-3:-1] == ["0", "0"], out
    assert rows["proxies that never ACKed it"].split()[-3:-1] == ["0", "0"], out
    assert "sovereign: not compared" in out, out
    assert "Traceback" not in proc.stderr, proc.stderr
    # Nothing left running: the servers' and workers' logs are closed, no xdsd on the mesh.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in ps.stdout


@pytest.mark.timeout(60)
def test_load_benchmark_with_server_workers(tmp_path: Path) -> None:
    """--server-workers 2: xdsd serve --workers 2 holds every proxy; nothing left running."""
    out = run_load(
        *(*TINY, "--targets", "xdsd", "--server-workers", "2"),
        *("--scenarios", "storm,vs", "--keep", str(tmp_path / "run")),
    )
    assert "server: 2 worker processes" in out, out
    rows = table_rows(out)
    assert rows["streams still open at the end"].split()[-2] == "10", out
    assert rows["proxies that never ACKed it"].split()[-2] == "0", out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in ps.stdout


def run_against(peer: str, tmp_path: Path, timeout: float) -> tuple[str, dict[str, str]]:
    """The benchmark's output against xdsd and `peer`, and its table rows by label;
    the header names both and their ratio."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--targets", f"xdsd,{peer}", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if line.startswith("scenario / figure"))
    assert re.split(r"\s{2,}", header)[1:4] == ["xdsd", peer, f"xdsd/{peer}"], header
    return out, {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()}


def assert_all_converged(out: str, rows: dict[str, str]) -> None:
    """Both servers kept every stream and every proxy saw every change (counts only)."""
    assert rows["streams still open at the end"].split()[-3:-1] == ["10", "10"], out
    assert rows["proxies that never ACKed it"].split()[-3:-1] == ["0", "0"], out
    assert rows["(event, proxy) pairs never ACKed"].split()[-3:-1] == ["0", "0"], out


def gcp_peer() -> Path | None:
    """The go-control-plane peer's binary if benchmarks/peers/build.sh built it (.ci/run
    does where go is present); tests never build it (a minute of Go compiling)."""
    script = SCRIPT.parent / "peers" / "build.sh"
    done = subprocess.run(
        ["bash", str(script), "gcp", "--print"], capture_output=True, text=True, check=False
    )
    path = Path(done.stdout.strip())
    return path if done.returncode == 0 and path.is_file() else None


@pytest.mark.timeout(90)
def test_load_benchmark_against_go_control_plane(tmp_path: Path) -> None:
    """--targets xdsd,gcp: go-control-plane's caches serve what xdsd generated; every
    proxy (SotW and Delta) converges on every change there too."""
    if gcp_peer() is None:
        pytest.skip("go-control-plane peer not built (benchmarks/peers/build.sh gcp needs go)")
    out, rows = run_against("gcp", tmp_path, timeout=80)
    assert_all_converged(out, rows)
    assert rows["stream failures (retried with backoff)"].split()[-3:-1] == ["0", "0"], out
    assert "linear cache for EDS" in out, out


@pytest.mark.timeout(150)
def test_load_benchmark_against_istiod(tmp_path: Path) -> None:
    """--targets xdsd,istiod: pilot-discovery on the same mesh (Kubernetes objects from
    the API test server, the VirtualService from its configDir): the simulated sidecars
    converge on every change there too, and its version and flags are printed."""
    from tests import istio_bin

    reason = istio_bin.skip_reason("pilot-discovery")
    if reason is not None:
        pytest.skip(reason)
    out, rows = run_against("istiod", tmp_path, timeout=140)
    assert_all_converged(out, rows)
    assert "istiod: pilot-discovery" in out and "ENABLE_CA_SERVER=false" in out, out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in ps.stdout  # pilot-discovery and the API server are gone


def test_sidecar_scoped_mesh_imports_own_and_shared_namespaces(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import load

    mesh = load.Mesh(20, 2, 5, tmp_path, shared=2)
    mesh.write_all()
    sidecar = (tmp_path / "ns-3" / "sidecar.yaml").read_text()
    assert '"hosts": ["./*", "ns-0/*", "ns-1/*"]' in sidecar
    assert '"hosts": ["./*", "ns-1/*"]' in (tmp_path / "ns-0" / "sidecar.yaml").read_text()
    # Churn replaces pods every proxy sees: services of ns-0 and ns-1, not the proxies' own.
    plan = load.churn_plan(mesh, n_proxies=10, events=6)
    assert {mesh.ns(s) for s, _ in plan} <= {"ns-0", "ns-1"}
    assert all(s >= 5 for s, _ in plan), plan
    assert not load.Mesh(4, 1, 2, None).shared  # no Sidecars unless asked


@pytest.mark.timeout(60)
def test_load_benchmark_with_sidecar_scoping() -> None:
    """Every proxy reaches full config and sees every change under Sidecar scoping."""
    out = run_load(*TINY, "--namespaces", "3", "--shared-namespaces", "1")
    assert "Sidecar scoping: each of 3 namespaces imports its own and ns-0" in out, out
    rows = table_rows(out)
    assert rows["streams still open at the end"].split()[-3:-1] == ["10", "10"], out
    assert rows["proxies that never ACKed it"].split()[-3:-1] == ["0", "0"], out
    assert rows["(event, proxy) pairs never ACKed"].split()[-3:-1] == ["0", "0"], out
