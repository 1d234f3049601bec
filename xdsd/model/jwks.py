"""JSON Web Key Sets: validation, and the fetched documents as config objects.

A RequestAuthentication's `jwksUri` is fetched by xdsd (as istiod does by
default) and inlined into Envoy's jwt_authn provider. The fetcher
(`xdsd.sources.jwks`) does the I/O; what it learned reaches the snapshot as a
synthetic config object of kind `JWKS_KIND` in the config store, one per URI
(source `jwks:URI`, never a file or a cluster object), so a new or changed key
set goes through the store, the debounce and the push like any edit, and
`--workers` ships it as any store change. Its spec holds the last good key
set (`jwks`, "" until one was fetched) and the last fetch problem (`error`,
"" when the last fetch worked): a refresh that finds the same keys changes
nothing, so nothing is pushed.

`fetch_problems` turns the documents' problems into warnings on the
RequestAuthentications that name them, so `xdsd validate`-style output,
`/debug/configz` and `--write-status` show them on the object a user wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from xdsd.model.objects import key_of, object_label
from xdsd.model.types import ConfigError, ConfigObject, ObjectRef

JWKS_KIND = "FetchedJwks"  # not an API kind: the parser never makes one from a document
JWKS_GROUP = "xdsd.internal"
JWKS_SOURCE_PREFIX = "jwks:"
OPENID_SUFFIX = "/.well-known/openid-configuration"

# Envoy's jwt_verify_lib: the key types and the members each needs.
_KEY_MEMBERS = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "oct": ("k",),
    "OKP": ("crv", "x"),
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def is_fetched_source(source: str) -> bool:
    """A store source holding a fetched key set (kept when a config source resyncs)."""
    return source.startswith(JWKS_SOURCE_PREFIX)


def discovery_url(issuer: str) -> str:
    """Where an issuer's OpenID configuration is (istiod: issuer without a trailing /)."""
    return issuer.rstrip("/") + OPENID_SUFFIX


def jwks_problems(text: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a JWKS document: a JSON object with a `keys` list holding
    at least one usable key; private key material is a warning (Envoy uses public keys)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return [f"not JSON: {e}"], []
    if not isinstance(doc, dict):
        return ["must be a JSON object with a 'keys' list"], []
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        return ["must have a non-empty 'keys' list"], []
    errors: list[str] = []
    warnings: list[str] = []
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            errors.append(f"keys[{i}] must be a JSON object")
            continue
        kty = key.get("kty")
        members = _KEY_MEMBERS.get(kty) if isinstance(kty, str) else None
        if members is None:
            errors.append(f"keys[{i}].kty {kty!r} must be one of {', '.join(_KEY_MEMBERS)}")
            continue
        missing = [m for m in members if not isinstance(key.get(m), str) or not key.get(m)]
        if missing:
            errors.append(f"keys[{i}] ({kty}) lacks {', '.join(missing)}")
            continue
        if kty == "oct" or any(m in key for m in _PRIVATE_MEMBERS):
            warnings.append(
                f"keys[{i}] contains private key material; only public keys are used "
                "for verification"
            )
    return errors, warnings


def fetched_object(key: str, *, jwks: str, error: str, via: str = "") -> ConfigObject:
    """The store's record of one fetched URI (`key`: the jwksUri, or an issuer's OpenID
    discovery URL; `via`: the jwks_uri discovery named)."""
    ref = ObjectRef(JWKS_KIND, "", key, JWKS_SOURCE_PREFIX + key)
    spec: Mapping[str, Any] = MappingProxyType({"jwks": jwks, "error": error, "via": via})
    return ConfigObject(ref=ref, group=JWKS_GROUP, version="v1", spec=spec)


def fetched_index(objs: Iterable[ConfigObject]) -> Mapping[str, ConfigObject]:
    return MappingProxyType({o.name: o for o in objs if o.kind == JWKS_KIND})


def describe(obj: ConfigObject) -> dict[str, Any]:
    """A fetched key set for debug output (`/debug/configz`): its state and key ids."""
    jwks, error = str(obj.spec.get("jwks", "")), str(obj.spec.get("error", ""))
    kids: list[str] = []
    if jwks:
        keys = json.loads(jwks).get("keys", [])
        kids = [str(k.get("kid", "")) for k in keys if isinstance(k, dict)]
    return {
        "url": obj.name,
        "state": "failing" if error else "ok",
        "error": error,
        "via": obj.spec.get("via", ""),
        "key_ids": kids,
    }


def fetch_problems(
    request_authns: Iterable[ConfigObject], fetched: Iterable[ConfigObject]
) -> list[ConfigError]:
    """A warning on each jwtRule whose key set could not be fetched (or not yet)."""
    index = fetched_index(fetched)
    out: list[ConfigError] = []
    for obj in request_authns:
        typed = obj.typed
        for rule in getattr(typed, "rules", ()):
            key = rule.fetch_key
            if not key:
                continue
            doc = index.get(key)
            if doc is None or not doc.spec.get("error"):
                continue
            field = "jwksUri" if rule.jwks_uri else "issuer"
            if doc.spec.get("jwks"):
                what = "serving the key set fetched before"
            else:
                what = "its tokens are rejected (a key set no token matches is served)"
            out.append(
                ConfigError(
                    obj.ref.source,
                    object_label(key_of(obj.ref)),
                    f"spec.jwtRules[{rule.index}].{field}",
                    f"JWKS from {key} could not be fetched: {doc.spec['error']}; {what}",
                    "warning",
                )
            )
    return out
