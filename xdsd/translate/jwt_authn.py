"""RequestAuthentication -> envoy.filters.http.jwt_authn.

As istiod (pilot/pkg/security/authn/policy_applier.go, convertToEnvoyJwtConfig):

- The jwtRules of every RequestAuthentication that applies to the workload
  (`policy_select.applicable`, oldest first) are joined, then stably sorted
  by issuer; rule N becomes provider `origins-N`.
- Each provider: issuer, audiences, the token locations (fromHeaders,
  fromParams, fromCookies; none: Envoy's defaults, `Authorization: Bearer` and
  `access_token`), `forward` (forwardOriginalToken), `forward_payload_header`
  (outputPayloadToHeader), `claim_to_headers` (outputClaimToHeaders),
  `normalize_payload_in_metadata` (scope, permission and spaceDelimitedClaims
  split on spaces), `clear_route_cache` on router proxies (gateways route on
  claims), and `local_jwks`: the inline jwks, or the key set xdsd fetched for
  the jwksUri (or the issuer's OpenID discovery) -- until one is fetched, or
  when the fetch failed and nothing was fetched before, a key set of a public
  key whose private key was thrown away, so every token fails (fail closed).
- One rule for every path (`prefix: /`): with one provider, `requires_any
  [origins-0, allow_missing]`; with several, `requires_any [origins-0, ...,
  origins-N, requires_all [requires_any [origins-i, allow_missing] ...]]`. A
  present but invalid token is rejected (401); a request without one passes,
  and AuthorizationPolicy (`requestPrincipals`) decides. A rule with
  `presence: REQUIRED` is a bare `origins-i` (no allow_missing), and with one
  such rule the whole is `requires_all` of each rule's requirement (newer
  istiod). CORS preflights bypass the filter.

The contract with RBAC (xdsd.translate.rbac): a verified token's payload is
written to the dynamic metadata namespace `envoy.filters.http.jwt_authn`
under the key `payload` (every provider the same key), so
`requestPrincipals` (`ISS/SUB`) and `request.auth.*` conditions match
`payload.iss`, `payload.sub`, `payload.aud`, `payload.azp` and claims there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import empty_pb2

from xdsd.model.istio.requestauthentication import JwtRule, RequestAuthentication
from xdsd.model.jwks import JWKS_KIND, fetched_index
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate import _common as c

if TYPE_CHECKING:
    from xdsd.translate.context import ProxyContext

JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "payload"
KIND = "RequestAuthentication"
PROVIDER_PREFIX = "origins-"
DEFAULT_SPACE_DELIMITED = ("permission", "scope")

# A key set no token can match: an RSA public key whose private key was discarded
# when it was made (for this project). Served for a jwksUri that has no key set yet.
UNMATCHABLE_JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "RSA",
                "e": "AQAB",
                "n": (
                    "rv-XCcTAuDfNgtc0Ax2BomXYa5OG2uW5IplphimvgC5OnVNIvzr3ML1wlfX-05RWp-iljD3_"
                    "X4V15r_NecoU1u36we4Spc6MIo8Xo8UEIbWvvG9W_dmXcytlzd_b_Tcm7a5Fon2jKVs4Q4AF"
                    "Qc1ztbPNrt2EvZveflmFCTxUf8gpD1A9svFzBwPqHRaeV1NI3bVOIolYMw5skBRgwTU3YR6E"
                    "em6UPoSJ8jSGAQit5zA8IaCmBh0ane48gXqrAyPRKGzRiZe_JLIjCyoabstD8uwvHK9MVAua"
                    "6cYFaA2k_81-4dxRAPkH9kZ8OihwYoxR6fVnH_oesN8ACCSwq-R-EQ"
                ),
            }
        ]
    },
    sort_keys=True,
)


def jwt_rules(snapshot: MeshSnapshot, refs: Sequence[tuple[str, str]]) -> list[JwtRule]:
    """The rules of the RequestAuthentications `refs` (namespace, name; Istio's order),
    joined and stably sorted by issuer as istiod does."""
    by_ref = snapshot.derived(__name__ + ".by_ref", _by_ref)
    rules: list[JwtRule] = []
    for ref in refs:
        obj = by_ref.get(ref)
        if obj is not None and isinstance(obj.typed, RequestAuthentication):
            rules.extend(obj.typed.rules)
    return sorted(rules, key=lambda r: r.issuer)


def _by_ref(snapshot: MeshSnapshot) -> Mapping[tuple[str, str], ConfigObject]:
    return {(o.namespace, o.name): o for o in snapshot.configs_of(KIND)}


def _fetched(snapshot: MeshSnapshot) -> Mapping[str, ConfigObject]:
    return fetched_index(snapshot.configs_of(JWKS_KIND))


def local_jwks(snapshot: MeshSnapshot, rule: JwtRule) -> str:
    """The key set Envoy gets inline for a rule (istiod's BuildLocalJwks)."""
    if rule.jwks:
        return rule.jwks
    doc = snapshot.derived(__name__ + ".fetched", _fetched).get(rule.fetch_key)
    jwks = doc.spec.get("jwks", "") if doc is not None else ""
    return jwks or UNMATCHABLE_JWKS


def _provider(
    snapshot: MeshSnapshot, rule: JwtRule, clear_route_cache: bool
) -> jwt_pb2.JwtProvider:
    spaced = sorted(set(DEFAULT_SPACE_DELIMITED) | set(rule.space_delimited_claims))
    p = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=list(rule.audiences),
        forward=rule.forward_original_token,
        forward_payload_header=rule.output_payload_to_header,
        payload_in_metadata=JWT_PAYLOAD_KEY,
        normalize_payload_in_metadata=jwt_pb2.JwtProvider.NormalizePayload(
            space_delimited_claims=spaced
        ),
        clear_route_cache=clear_route_cache,
        from_params=list(rule.from_params),
        from_cookies=list(rule.from_cookies),
        local_jwks=base_pb2.DataSource(inline_string=local_jwks(snapshot, rule)),
    )
    for h in rule.from_headers:
        p.from_headers.add(name=h.name, value_prefix=h.prefix)
    for ch in rule.output_claim_to_headers:
        p.claim_to_headers.add(header_name=ch.header, claim_name=ch.claim)
    return p


def jwt_authentication(
    snapshot: MeshSnapshot, rules: Sequence[JwtRule], *, clear_route_cache: bool
) -> jwt_pb2.JwtAuthentication | None:
    """istiod's convertToEnvoyJwtConfig; None without rules."""
    if not rules:
        return None
    cfg = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    each: list[jwt_pb2.JwtRequirement] = []  # per rule: origins-i (or missing, if optional)
    named: list[jwt_pb2.JwtRequirement] = []  # origins-i alone
    for i, rule in enumerate(rules):
        name = f"{PROVIDER_PREFIX}{i}"
        cfg.providers[name].CopyFrom(_provider(snapshot, rule, clear_route_cache))
        named.append(jwt_pb2.JwtRequirement(provider_name=name))
        if rule.required:
            each.append(jwt_pb2.JwtRequirement(provider_name=name))
            continue
        optional = jwt_pb2.JwtRequirementOrList()
        optional.requirements.add(provider_name=name)
        optional.requirements.add(allow_missing=empty_pb2.Empty())
        each.append(jwt_pb2.JwtRequirement(requires_any=optional))
    if len(each) == 1:
        requires = each[0]
    elif any(r.required for r in rules):
        # No "any one token" shortcut: an optional token must not stand in for a
        # required one (istio/istio#60830).
        requires = jwt_pb2.JwtRequirement(
            requires_all=jwt_pb2.JwtRequirementAndList(requirements=each)
        )
    else:
        every = jwt_pb2.JwtRequirement(
            requires_all=jwt_pb2.JwtRequirementAndList(requirements=each)
        )
        requires = jwt_pb2.JwtRequirement(
            requires_any=jwt_pb2.JwtRequirementOrList(requirements=[*named, every])
        )
    cfg.rules.add(match=route_components_pb2.RouteMatch(prefix="/"), requires=requires)
    return cfg


def jwt_authn_filter(ctx: ProxyContext) -> hcm_pb2.HttpFilter | None:
    """The proxy's jwt_authn filter, or None when no RequestAuthentication applies
    (inbound HTTP chains of sidecars, gateway HCMs; placed before RBAC)."""
    rules = jwt_rules(ctx.snapshot, ctx.security.request_authn)
    cfg = jwt_authentication(ctx.snapshot, rules, clear_route_cache=not ctx.is_sidecar)
    if cfg is None:
        return None
    return hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=c.pack(cfg))
