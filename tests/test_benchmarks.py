"""Smoke test: the translate benchmark runs at a tiny size and prints its tables.

Figures are never asserted (they depend on the machine); only that the script
works end to end and prints what benchmarks/README.md describes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "translate.py"


def test_translate_benchmark_prints_tables() -> None:
    args = ["--quick", "--services", "20", "--endpoints", "2", "--namespaces", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--sidecars", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "20 services x 1 HTTP port(s), 2 endpoints each, 2 namespaces; 20 sidecars" in out
    for heading in (
        "Config -> snapshot",
        "One sidecar (client-0.ns-0, REDIRECT), per type",
        "Serving 20 sidecars over 2 namespaces (2 proxy groups)",
        "Memory (tracemalloc",
    ):
        assert heading in out, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # Per-type rows: 20 services -> 20 outbound clusters (+3 Istio ones) and 20 CLAs.
    assert rows["CDS"][1] == "23" and rows["EDS"][1] == "20", out
    assert {"LDS", "RDS", "total"} <= rows.keys(), out
    assert "GroupCache speed-up:" in out and "warning" not in out, out
    assert proc.stderr == "", proc.stderr


def test_istio_shapes_prints_xdsd_times_per_shape_and_type() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--istio-shapes", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    pairs = {(r[0], r[1]): r for r in rows if r[0] in ("http", "tcp", "virtualservice")}
    kinds = ("Cluster", "Endpoint", "Listener", "Route")
    assert {(s, k) for s in ("http", "virtualservice") for k in kinds} <= pairs.keys(), proc.stdout
    assert ("tcp", "Route") not in pairs and ("tcp", "Listener") in pairs, proc.stdout
    # 100 ServiceEntries and the proxy's own: 101 outbound clusters and assignments.
    assert pairs[("http", "Endpoint")][2] == "101", proc.stdout
    assert all(float(r[3]) > 0 for r in pairs.values()), proc.stdout
