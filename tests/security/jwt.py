"""JWTs for RequestAuthentication tests: a signing key, its JWKS, and tokens.

Made with `cryptography` only (RS256 with RSA 2048, ES256 with P-256); no JWT library:

    key = JwtKey.rsa(kid="test")            # or JwtKey.ec()
    jwks = key.jwks_json()                   # RequestAuthentication jwtRules[].jwks
    token = key.token(iss="testing@secure.istio.io", sub="testing@secure.istio.io",
                      aud="httpbin", groups=["group1"], exp_in=3600)

`Istio's` documented demo token has iss == sub == "testing@secure.istio.io"; the
request principal Istio derives is `ISS/SUB`. `token(...)` takes any claim as a
keyword; `exp_in` (seconds from now, may be negative for an expired token), `nbf`,
`iat` default to sensible values; `header=` overrides header fields (e.g. a wrong kid).
`tampered(token)` flips the signature so that it no longer verifies.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

ISTIO_DEMO_ISSUER = "testing@secure.istio.io"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(size, "big"))


@dataclass(frozen=True)
class JwtKey:
    """A private key that signs tokens, with its public JWK."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    kid: str
    alg: str  # RS256 or ES256

    @classmethod
    def rsa(cls, kid: str = "rsa-test-key") -> JwtKey:
        return cls(rsa.generate_private_key(65537, 2048), kid, "RS256")

    @classmethod
    def ec(cls, kid: str = "ec-test-key") -> JwtKey:
        return cls(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")

    # ---- public side

    def jwk(self) -> dict[str, str]:
        if isinstance(self.key, rsa.RSAPrivateKey):
            pub = self.key.public_key().public_numbers()
            return {"kty": "RSA", "kid": self.kid, "alg": self.alg, "use": "sig",
                    "n": _uint(pub.n), "e": _uint(pub.e)}  # fmt: skip
        point = self.key.public_key().public_numbers()
        return {"kty": "EC", "kid": self.kid, "alg": self.alg, "use": "sig", "crv": "P-256",
                "x": _uint(point.x, 32), "y": _uint(point.y, 32)}  # fmt: skip

    def jwks(self, *others: JwtKey) -> dict[str, Any]:
        """A JWKS document with this key (and `others`)."""
        return {"keys": [self.jwk(), *(k.jwk() for k in others)]}

    def jwks_json(self, *others: JwtKey) -> str:
        return json.dumps(self.jwks(*others))

    # ---- tokens

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        der = self.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: R || S

    def token(
        self,
        *,
        iss: str = ISTIO_DEMO_ISSUER,
        sub: str | None = ISTIO_DEMO_ISSUER,
        aud: str | list[str] | None = None,
        exp_in: float | None = 3600,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed compact JWS. None leaves a claim out (`exp_in=None`: no exp)."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": iss, "iat": now}
        if sub is not None:
            payload["sub"] = sub
        if aud is not None:
            payload["aud"] = aud
        if exp_in is not None:
            payload["exp"] = now + int(exp_in)
        payload.update(claims)
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = (
            b64url(json.dumps(head, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(payload, separators=(",", ":")).encode())
        ).encode()
        return signing_input.decode() + "." + b64url(self.sign(signing_input))


def tampered(token: str) -> str:
    """The same token with a signature that no longer verifies."""
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0xFF
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWS (unverified), for assertions."""
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return result
