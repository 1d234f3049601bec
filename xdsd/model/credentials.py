"""Gateway credentials (TLS key pairs and CA bundles) in Kubernetes Secrets.

Which keys hold what follows istiod (pilot/pkg/credentials/kube/secrets.go):
a key pair is `cert`/`key` (generic Secret) or else `tls.crt`/`tls.key`
(kubernetes.io/tls); a CA bundle is `cacert` or else `ca.crt`. The CA for
`NAME-cacert` comes from a Secret of that name, or else from `NAME` itself.

Nothing here ever puts secret values into a message: problems name keys only.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from xdsd.model.objects import SecretData

GENERIC_CERT, GENERIC_KEY, GENERIC_CA = "cert", "key", "cacert"
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
CA_SUFFIX = "-cacert"
PEM_KEYS = (GENERIC_CERT, GENERIC_KEY, GENERIC_CA, TLS_CERT, TLS_KEY, TLS_CA)
_PEM_BEGIN = b"-----BEGIN "


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert: bytes
    key: bytes

    def __repr__(self) -> str:
        return "KeyPair(<redacted>)"


def _value(data: Mapping[str, str], key: str) -> bytes | None:
    if key not in data or not isinstance(data, SecretData):
        return None
    try:
        value = data.decoded(key)
    except (binascii.Error, ValueError, KeyError):
        return None
    return value or None


def is_pem(value: bytes) -> bool:
    return _PEM_BEGIN in value and b"-----END " in value


def pem_problems(data: SecretData) -> list[tuple[str, str]]:
    """(key, problem) for certificate/key entries that are not base64 PEM."""
    out: list[tuple[str, str]] = []
    for key in PEM_KEYS:
        if key not in data:
            continue
        try:
            value = data.decoded(key)
        except (binascii.Error, ValueError):
            continue  # reported as "not valid base64" by the parser
        if value and not is_pem(value):
            out.append((key, "is not PEM (expected -----BEGIN ...----- blocks)"))
    return out


def key_pair(data: SecretData) -> KeyPair | None:
    """istiod ExtractCertInfo: generic keys first, then kubernetes.io/tls keys."""
    for cert_key, key_key in ((GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY)):
        cert, key = _value(data, cert_key), _value(data, key_key)
        if cert is not None and key is not None:
            if not (is_pem(cert) and is_pem(key)):
                return None
            return KeyPair(cert, key)
    return None


def ca_bundle(data: SecretData) -> bytes | None:
    """istiod ExtractRoot: `cacert`, else `ca.crt`."""
    for key in (GENERIC_CA, TLS_CA):
        value = _value(data, key)
        if value is not None:
            return value if is_pem(value) else None
    return None
