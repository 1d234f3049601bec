"""Where the real Istio binaries built by tools/istio/build.sh are.

Looked up in order: $XDSD_ISTIO_BIN (the bin folder; .ci/run exports it), then
$XDSD_ISTIO_CACHE/bin, then ~/.cache/xdsd/istio-<pinned version>/bin, the
version pinned in tools/istio/go.mod (the same rule as build.sh). Tests that
need a binary skip with `skip_reason(...)` when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GO_MOD = ROOT / "tools" / "istio" / "go.mod"
BUILD = "tools/istio/build.sh"


def pinned_version() -> str:
    """istio.io/istio's version in our go.mod ('' when it is not there)."""
    try:
        text = GO_MOD.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "istio.io/istio":
            return parts[1]
    return ""


def cache_dir() -> Path:
    explicit = os.environ.get("XDSD_ISTIO_CACHE")
    if explicit:
        return Path(explicit)
    return Path.home() / ".cache" / "xdsd" / f"istio-{pinned_version()}"


def bin_dir() -> Path:
    explicit = os.environ.get("XDSD_ISTIO_BIN")
    return Path(explicit) if explicit else cache_dir() / "bin"


def binary(name: str) -> Path | None:
    """The built binary `name` (pilot-agent, istioctl, pilot-discovery), or None."""
    path = bin_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def bootstrap_template() -> Path | None:
    """Istio's Envoy bootstrap template (the istio-proxy image's envoy_bootstrap_tmpl.json)."""
    path = bin_dir().parent / "share" / "envoy_bootstrap_tmpl.json"
    return path if path.is_file() else None


def skip_reason(*names: str) -> str | None:
    """Why a test needing these binaries (and the template for pilot-agent) cannot run."""
    missing = [n for n in names if binary(n) is None]
    if "pilot-agent" in names and bootstrap_template() is None:
        missing.append("envoy_bootstrap_tmpl.json")
    if not missing:
        return None
    return (
        f"Istio {pinned_version() or '?'} not built ({', '.join(missing)} missing in "
        f"{bin_dir()}): run {BUILD} (needs go)"
    )
