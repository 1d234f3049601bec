"""tests/security/jwt.py, the JWT helper of the security suite: tokens verify with the
public key rebuilt from the JWKS alone, as Envoy's jwt_authn would do."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.security.harness import Mesh
from tests.security.jwt import ISTIO_DEMO_ISSUER, JwtKey, claims_of, tampered


def _b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _int(s: str) -> int:
    return int.from_bytes(_b64(s), "big")


def verify(token: str, jwks: dict[str, object]) -> dict[str, object]:
    """Verify `token` against `jwks` (by kid); the header."""
    head_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(_b64(head_b64))
    keys = jwks["keys"]
    assert isinstance(keys, list)
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    signing_input = f"{head_b64}.{payload_b64}".encode()
    sig = _b64(sig_b64)
    if jwk["kty"] == "RSA":
        pub = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
        pub.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert jwk["crv"] == "P-256" and len(sig) == 64
        point = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), ec.SECP256R1())
        der = utils.encode_dss_signature(_int_bytes(sig[:32]), _int_bytes(sig[32:]))
        point.public_key().verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    result: dict[str, object] = header
    return result


def _int_bytes(b: bytes) -> int:
    return int.from_bytes(b, "big")


@pytest.mark.parametrize("make", [JwtKey.rsa, JwtKey.ec], ids=["RS256", "ES256"])
def test_tokens_verify_with_the_jwks(make: object) -> None:
    assert callable(make)
    key = make()
    other = JwtKey.ec(kid="other")
    jwks = json.loads(key.jwks_json(other))
    assert [k["kid"] for k in jwks["keys"]] == [key.kid, "other"]
    token = key.token(aud="httpbin", groups=["group1"], exp_in=60)
    header = verify(token, jwks)
    assert header == {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    claims = claims_of(token)
    assert claims["iss"] == claims["sub"] == ISTIO_DEMO_ISSUER
    assert claims["aud"] == "httpbin" and claims["groups"] == ["group1"]
    assert 0 < int(claims["exp"]) - time.time() <= 60
    with pytest.raises(InvalidSignature):
        verify(tampered(token), jwks)
    # Expired, without sub, another kid in the header.
    assert int(claims_of(key.token(exp_in=-10))["exp"]) < time.time()
    assert "sub" not in claims_of(key.token(sub=None))
    assert json.loads(_b64(key.token(header={"kid": "nope"}).split(".")[0]))["kid"] == "nope"


async def test_jwks_server_serves_and_fails_on_demand(tmp_path: Path) -> None:
    key = JwtKey.rsa()
    mesh = Mesh(tmp_path)
    try:
        jwks = await mesh.jwks_server({"/jwks.json": key.jwks()})
        async with ClientSession(timeout=ClientTimeout(total=5)) as s:
            async with s.get(jwks.url()) as r:
                assert r.status == 200 and await r.json() == key.jwks()
            jwks.status = 503
            async with s.get(jwks.url()) as r:
                assert r.status == 503
            async with s.get(jwks.url("/other.json")) as r:
                assert r.status == 503
        assert jwks.fetches == {"/jwks.json": 2, "/other.json": 1}
    finally:
        await mesh.close()
