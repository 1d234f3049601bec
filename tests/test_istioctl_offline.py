"""istioctl on xdsd's config folder, without a cluster (`analyze --use-kube=false`).

The folder format (multi-document YAML of Kubernetes and Istio objects) is what
istioctl reads from files: it analyzes the bundled example without a finding.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import istio_bin

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "mesh"

pytestmark = pytest.mark.skipif(
    istio_bin.binary("istioctl") is None, reason=istio_bin.skip_reason("istioctl") or ""
)


def test_istioctl_analyze_accepts_the_example_folder(tmp_path: Path) -> None:
    example = EXAMPLE
    istioctl = istio_bin.binary("istioctl")
    assert istioctl is not None
    # A clean environment: no kubeconfig, nothing but the files.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(istioctl), "analyze", "--use-kube=false", str(example)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "No validation issues found" in out
    for f in sorted(example.glob("*.yaml")):
        assert str(f) in out
