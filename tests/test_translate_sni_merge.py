"""One SNI host defined twice on a port is one filter chain (the first definition wins).

Envoy rejects a whole LDS update whose listener has two chains with the same match
("filter chain '' has the same matching rules defined as ''"). Found with Istio's
own configs: a VirtualService tls route whose sniHosts name two ServiceEntry hosts
made one chain per host, both matching both names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap
from xdsd.model.build import build_snapshot
from xdsd.model.proxy import parse_proxy
from xdsd.model.store import ConfigStore
from xdsd.sources.folder import load_yaml
from xdsd.translate._common import LISTENER_TYPE
from xdsd.translate.generate import generate_all

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [other.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c, namespace: other}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls, namespace: default}
spec:
  hosts: [api.example.com, other.example.com]
  tls:
  - match: [{port: 443, sniHosts: [api.example.com, other.example.com]}]
    route: [{destination: {host: api.example.com}}]
"""


@pytest.mark.parametrize("mode", ["NONE", "REDIRECT"])
def test_shared_sni_host_is_one_chain(mode: str, tmp_path: Path) -> None:
    store = ConfigStore()
    store.apply_file("c.yaml", load_yaml(CONFIG.encode(), "c.yaml"))
    snap = build_snapshot(store, generation=1)
    node = "sidecar~127.0.0.1~c-0.default~default.svc.cluster.local"
    proxy = parse_proxy(node, {"NAMESPACE": "default", "INTERCEPTION_MODE": mode})
    resources = generate_all(snap, proxy)
    name = "127.0.0.1_443" if mode == "NONE" else "0.0.0.0_443"
    listener = dict(resources[LISTENER_TYPE])[name]
    names = [list(fc.filter_chain_match.server_names) for fc in listener.filter_chains]
    assert names == [["api.example.com", "other.example.com"]]
    if envoy_binary() is not None:
        result = envoy_validate(static_bootstrap(resources, node), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
