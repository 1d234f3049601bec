"""RequestAuthentication (security.istio.io v1, v1beta1): typed and validated.

Validation follows istiod's ValidateRequestAuthentication / validateJwtRule
(pkg/config/validation) and the CRD's schema rules: a rule needs an issuer or
a jwksUri (the API documents issuer as required; istiod accepts a jwksUri
alone, and so do we, with a warning); audiences, fromParams, fromCookies and
spaceDelimitedClaims entries are non-empty; jwksUri is an http(s) URL of at
most 2048 characters; only one of jwks and jwksUri; an inline jwks must parse
as a JWKS (private key material is a warning); fromHeaders need a name;
outputClaimToHeaders need a header (`^[-_A-Za-z0-9]+$`, unique) and a claim;
timeout is a duration of at least 1ms; presence is OPTIONAL or REQUIRED. The translation to Envoy's jwt_authn
filter is in `xdsd.translate.jwt_authn`; jwksUri fetching in `xdsd.sources.jwks`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.model import fields as f
from xdsd.model.fields import Issues
from xdsd.model.istio.workload_selector import (
    TargetRef,
    parse_selector,
    parse_target_refs,
    unknown_fields,
)
from xdsd.model.jwks import discovery_url, jwks_problems
from xdsd.model.types import ObjectRef

DEFAULT_TIMEOUT_NS = 5 * 10**9  # istiod: 5s when the rule sets none
_HEADER_NAME = re.compile(r"[-_A-Za-z0-9]+")
_RULE_FIELDS = frozenset(
    {
        "issuer",
        "audiences",
        "jwksUri",
        "jwks_uri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "outputPayloadToHeader",
        "forwardOriginalToken",
        "outputClaimToHeaders",
        "timeout",
        "spaceDelimitedClaims",
        "presence",
    }
)
PRESENCE = ("OPTIONAL", "REQUIRED")
MAX_JWKS_URI = 2048
MAX_SPACE_DELIMITED = 64


@dataclass(frozen=True)
class JwtHeader:
    name: str
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True)
class JwtRule:
    index: int  # position in spec.jwtRules (for field paths in later warnings)
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""  # inline key set (JSON)
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout_ns: int = DEFAULT_TIMEOUT_NS
    space_delimited_claims: tuple[str, ...] = ()
    # REQUIRED: a request without this token is rejected (401) even when another rule's
    # token is valid (Istio's `presence`, istio/api#3737; OPTIONAL by default).
    required: bool = False

    @property
    def fetch_key(self) -> str:
        """What xdsd fetches for this rule: the jwksUri, or (no key set given) the
        issuer's OpenID discovery document, as istiod; "" for an inline jwks."""
        if self.jwks:
            return ""
        if self.jwks_uri:
            return self.jwks_uri
        return discovery_url(self.issuer) if self.issuer else ""


@dataclass(frozen=True)
class RequestAuthentication:
    selector: Mapping[str, str] | None
    rules: tuple[JwtRule, ...]
    target_refs: tuple[TargetRef, ...] = ()


def jwks_uri_problem(uri: str) -> str | None:
    """istiod's security.ParseJwksURI, plus a host (the CRD: scheme http or https)."""
    try:
        u = urllib.parse.urlsplit(uri)
        port = u.port
    except ValueError as e:
        return f"{uri!r} is not a URL: {e}"
    if u.scheme not in ("http", "https"):
        return f"URI scheme {u.scheme!r} is not supported (http or https)"
    if not u.hostname:
        return f"{uri!r} has no host"
    if port == 0:
        return f"{uri!r}: port 0"
    if len(uri) > MAX_JWKS_URI:
        return f"must be at most {MAX_JWKS_URI} characters"
    return None


def _strings(iss: Issues, raw: Mapping[str, Any], key: str, path: str, what: str) -> list[str]:
    """A list of strings, each non-empty (istiod: '<what> must be non-empty string')."""
    out: list[str] = []
    where = f.join(path, key)
    for i, v in enumerate(f.get_list(iss, raw, key, path) or ()):
        if not isinstance(v, str):
            iss.error(f"{where}[{i}]", f"must be a string, not a {f.type_name(v)}")
        elif not v:
            iss.error(f"{where}[{i}]", f"{what} must be a non-empty string")
        else:
            out.append(v)
    return out


def _headers(iss: Issues, raw: Mapping[str, Any], path: str) -> tuple[JwtHeader, ...]:
    out: list[JwtHeader] = []
    where = f.join(path, "fromHeaders")
    for hp, h in f.items(iss, f.get_list(iss, raw, "fromHeaders", path), where):
        unknown_fields(iss, h, hp, frozenset({"name", "prefix"}))
        name = f.get_str(iss, h, "name", hp)
        prefix = h.get("prefix")
        if prefix is not None and not isinstance(prefix, str):
            iss.error(f.join(hp, "prefix"), f"must be a string, not a {f.type_name(prefix)}")
            prefix = ""
        if name is None:
            if "name" not in h or h.get("name") == "":
                iss.error(f.join(hp, "name"), "location header name must be a non-empty string")
            continue
        if any(ch in name for ch in "\x00\r\n:") or name != name.strip():
            # Envoy's HTTP_HEADER_NAME rule: such a name would be NACKed.
            iss.error(f.join(hp, "name"), f"{name!r} is not a valid header name")
            continue
        out.append(JwtHeader(name, prefix or ""))
    return tuple(out)


def _claim_headers(iss: Issues, raw: Mapping[str, Any], path: str) -> tuple[ClaimToHeader, ...]:
    out: list[ClaimToHeader] = []
    seen: set[str] = set()
    where = f.join(path, "outputClaimToHeaders")
    for cp, c in f.items(iss, f.get_list(iss, raw, "outputClaimToHeaders", path), where):
        unknown_fields(iss, c, cp, frozenset({"header", "claim"}))
        header = f.get_str(iss, c, "header", cp)
        claim = f.get_str(iss, c, "claim", cp)
        if header is None or claim is None:
            iss.error(cp, "outputClaimToHeaders header and claim must be non-empty strings")
            continue
        if not _HEADER_NAME.fullmatch(header):
            iss.error(f.join(cp, "header"), f"header name {header!r} is not a valid header name")
            continue
        if header.lower() in seen:
            iss.error(f.join(cp, "header"), f"header {header!r} is set by another claim")
            continue
        seen.add(header.lower())
        out.append(ClaimToHeader(header, claim))
    return tuple(out)


def _rule(iss: Issues, index: int, raw: Mapping[str, Any], rp: str) -> JwtRule:
    unknown_fields(iss, raw, rp, _RULE_FIELDS)
    issuer = f.get_str(iss, raw, "issuer", rp) or ""
    uri_key = "jwks_uri" if "jwksUri" not in raw and "jwks_uri" in raw else "jwksUri"
    jwks_uri = f.get_str(iss, raw, uri_key, rp) or ""
    jwks = f.get_str(iss, raw, "jwks", rp) or ""
    if not issuer and not jwks_uri:
        iss.error(f.join(rp, "issuer"), "issuer or jwksUri must be a non-empty string")
    elif not issuer:
        iss.warn(
            f.join(rp, "issuer"),
            "no issuer: a token of any issuer signed by these keys is accepted",
        )
    if jwks_uri:
        problem = jwks_uri_problem(jwks_uri)
        if problem is not None:
            iss.error(f.join(rp, uri_key), problem)
    if jwks and jwks_uri:
        iss.error(rp, "only one of jwks or jwksUri can be set")
    if jwks:
        errors, warnings = jwks_problems(jwks)
        for e in errors:
            iss.error(f.join(rp, "jwks"), f"jwks parse error: {e}")
        for w in warnings:
            iss.warn(f.join(rp, "jwks"), w)
    audiences = _strings(iss, raw, "audiences", rp, "audience")
    params = _strings(iss, raw, "fromParams", rp, "location query")
    cookies = _strings(iss, raw, "fromCookies", rp, "cookie name")
    spaced = _strings(iss, raw, "spaceDelimitedClaims", rp, "claim name")
    if len(spaced) > MAX_SPACE_DELIMITED:
        iss.error(f.join(rp, "spaceDelimitedClaims"), f"at most {MAX_SPACE_DELIMITED} claims")
    payload_header = f.get_str(iss, raw, "outputPayloadToHeader", rp) or ""
    if payload_header and not _HEADER_NAME.fullmatch(payload_header):
        iss.error(
            f.join(rp, "outputPayloadToHeader"),
            f"header name {payload_header!r} is not a valid header name",
        )
    timeout = f.duration_ns(iss, raw, "timeout", rp)
    presence = f.get_str(iss, raw, "presence", rp) or "OPTIONAL"
    if presence not in PRESENCE:
        iss.error(f.join(rp, "presence"), f"{presence!r} must be one of {', '.join(PRESENCE)}")
    rule = JwtRule(
        index=index,
        issuer=issuer,
        audiences=tuple(audiences),
        jwks_uri=jwks_uri,
        jwks=jwks,
        from_headers=_headers(iss, raw, rp),
        from_params=tuple(params),
        from_cookies=tuple(cookies),
        output_payload_to_header=payload_header,
        forward_original_token=bool(f.get_bool(iss, raw, "forwardOriginalToken", rp)),
        output_claim_to_headers=_claim_headers(iss, raw, rp),
        timeout_ns=DEFAULT_TIMEOUT_NS if timeout is None else timeout,
        space_delimited_claims=tuple(spaced),
        required=presence == "REQUIRED",
    )
    return rule


def parse(iss: Issues, spec: Mapping[str, Any], path: str, ref: ObjectRef) -> RequestAuthentication:
    unknown_fields(iss, spec, path, frozenset({"selector", "targetRef", "targetRefs", "jwtRules"}))
    selector = parse_selector(iss, spec, path)
    targets = parse_target_refs(iss, spec, path)
    if targets:
        iss.warn(
            f.join(path, "targetRefs" if "targetRefs" in spec else "targetRef"),
            "targets Gateway API gateways and waypoints, which xdsd does not serve: "
            "the policy applies to no sidecar",
        )
    rules: list[JwtRule] = []
    where = f.join(path, "jwtRules")
    for i, raw in enumerate(f.get_list(iss, spec, "jwtRules", path) or ()):
        rp = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            iss.error(rp, f"must be a mapping, not a {f.type_name(raw)}")
            continue
        rules.append(_rule(iss, i, raw, rp))
    if "jwtRules" in spec and not rules and not iss.failed:
        iss.warn(where, "no jwtRules: the policy validates no token")
    return RequestAuthentication(selector, tuple(rules), targets)
