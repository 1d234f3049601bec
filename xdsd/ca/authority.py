"""The certificate authority: signs workload CSRs with the caller's SPIFFE identity.

Istio's CA (istiod's `IstioCertificateService`) takes only the public key from a
CSR: the identity in the certificate comes from the caller's authentication,
never from names the CSR asks for. The certificate is shaped as Istio's workload
certificates: empty subject, the SPIFFE URI as the only (critical) SAN, server
and client auth, not a CA. The chain returned is leaf, the CA's own
certificate, any intermediates, root last.

Key material is never logged or put into error messages: errors name files and
what is wrong, not content.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_MAX_TTL = datetime.timedelta(hours=24)
# Certificates start a little in the past, for clock skew between hosts (Istio: 2 min).
BACKDATE = datetime.timedelta(minutes=2)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CAError(ValueError):
    """The CA cannot be loaded or cannot sign (the message never holds key material)."""


class CSRError(ValueError):
    """The CSR is not usable (not PEM, bad signature, unsupported key)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _hash_for(key: SigningKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _load_key(data: bytes, what: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CAError(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CAError(f"{what}: unsupported key type {type(key).__name__}")
    return key


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CAError(f"{what} holds no PEM certificate") from None
    return certs


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Signed:
    """A signed certificate: the PEM chain (leaf first, root last) and its validity."""

    chain: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int


class CertificateAuthority:
    """Signs CSRs with a CA certificate and key (a root, or an intermediate plus its chain)."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: SigningKey,
        chain: Sequence[x509.Certificate] = (),
        *,
        max_ttl: datetime.timedelta = DEFAULT_MAX_TTL,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CAError("the CA key does not belong to the CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CAError("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")
        if max_ttl <= datetime.timedelta(0):
            raise CAError("the maximum certificate lifetime must be positive")
        self.cert = cert
        self._key = key
        # The chain above the CA cert, root last; a self-signed CA cert is its own root.
        self.chain = tuple(c for c in chain if c != cert)
        self.max_ttl = max_ttl
        self._clock = clock

    def __repr__(self) -> str:  # never the key
        return f"CertificateAuthority({self.cert.subject.rfc4514_string()!r})"

    @classmethod
    def from_files(
        cls,
        cert_file: Path,
        key_file: Path,
        chain_file: Path | None = None,
        *,
        max_ttl: datetime.timedelta = DEFAULT_MAX_TTL,
    ) -> CertificateAuthority:
        """Load a CA: its certificate, key and (for an intermediate) the chain up to the root."""
        try:
            cert_data = cert_file.read_bytes()
            key_data = key_file.read_bytes()
            chain_data = chain_file.read_bytes() if chain_file is not None else b""
        except OSError as e:
            raise CAError(f"cannot read {e.filename}: {e.strerror}") from None
        return cls.from_pem(cert_data, key_data, chain_data, max_ttl=max_ttl, source=str(cert_file))

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes = b"",
        *,
        max_ttl: datetime.timedelta = DEFAULT_MAX_TTL,
        source: str = "CA",
    ) -> CertificateAuthority:
        """A CA from PEM data (e.g. a Kubernetes Secret's ca-cert.pem / ca-key.pem)."""
        certs = _load_certs(cert_pem, f"{source}: CA certificate")
        key = _load_key(key_pem, f"{source}: CA key")
        chain = _load_certs(chain_pem, f"{source}: CA chain") if chain_pem.strip() else []
        # A cert file holding the CA cert followed by its chain is accepted too.
        return cls(certs[0], key, [*certs[1:], *chain], max_ttl=max_ttl)

    @classmethod
    def from_cacerts(
        cls,
        entries: Mapping[str, bytes],
        *,
        max_ttl: datetime.timedelta = DEFAULT_MAX_TTL,
        source: str = "cacerts",
    ) -> CertificateAuthority:
        """A CA from Istio's plug-in CA layout (the `cacerts` Secret's keys).

        ca-cert.pem and ca-key.pem are required; cert-chain.pem (which commonly
        starts with ca-cert.pem again: that copy is dropped) leads up to
        root-cert.pem, which is appended when the chain does not end with it.
        Each link must be signed by the next, and the chain must end at root-cert.pem.
        """
        missing = [k for k in ("ca-cert.pem", "ca-key.pem") if not entries.get(k, b"").strip()]
        if missing:
            raise CAError(f"{source}: {', '.join(missing)} missing")
        cert = _load_certs(entries["ca-cert.pem"], f"{source}: ca-cert.pem")[0]
        chain_pem = entries.get("cert-chain.pem", b"")
        chain = _load_certs(chain_pem, f"{source}: cert-chain.pem") if chain_pem.strip() else []
        while chain and chain[0] == cert:
            chain.pop(0)
        root_pem = entries.get("root-cert.pem", b"")
        root = _load_certs(root_pem, f"{source}: root-cert.pem")[0] if root_pem.strip() else None
        top = chain[-1] if chain else cert
        if root is not None and top != root and top.issuer == root.subject:
            chain.append(root)  # a cert-chain.pem that stops below the root
        key = _load_key(entries["ca-key.pem"], f"{source}: ca-key.pem")
        ca = cls(cert, key, chain, max_ttl=max_ttl)
        if root is not None and ca.root != root:
            raise CAError(f"{source}: the CA chain does not end at root-cert.pem")
        links = [ca.cert, *ca.chain]
        for i, c in enumerate(links[:-1]):
            try:
                c.verify_directly_issued_by(links[i + 1])
            except (ValueError, TypeError, InvalidSignature):
                raise CAError(
                    f"{source}: certificate {i} of ca-cert.pem + cert-chain.pem "
                    "is not signed by the next"
                ) from None
        return ca

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    @property
    def root_pem(self) -> str:
        """The trust bundle proxies need (Istio's ConfigMap istio-ca-root-cert, root-cert.pem)."""
        return _pem(self.root)

    def sign_csr(
        self,
        csr_pem: str | bytes,
        identities: Sequence[str],
        requested_ttl: datetime.timedelta | None = None,
    ) -> Signed:
        """Sign the CSR's public key for `identities` (URIs), ignoring what the CSR asks for.

        The lifetime is the requested one capped at the CA's maximum (the maximum
        when none is asked for), and never past the CA certificate's own expiry.
        """
        if not identities:
            raise CAError("no identity to sign for")
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise CSRError("the CSR is not a PEM certificate request") from None
        try:
            valid = csr.is_signature_valid
        except UnsupportedAlgorithm:
            raise CSRError("the CSR's signature algorithm is not supported") from None
        if not valid:
            raise CSRError("the CSR's signature does not verify")
        public_key = csr.public_key()
        if not isinstance(
            public_key,
            rsa.RSAPublicKey
            | ec.EllipticCurvePublicKey
            | ed25519.Ed25519PublicKey
            | ed448.Ed448PublicKey,
        ):
            raise CSRError(f"unsupported CSR key type {type(public_key).__name__}")
        ttl = (
            self.max_ttl
            if requested_ttl is None or requested_ttl <= datetime.timedelta(0)
            else min(requested_ttl, self.max_ttl)
        )
        now = self._clock()
        not_before = now - BACKDATE
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(i) for i in identities]
                ),
                critical=True,  # the subject is empty (RFC 5280 4.2.1.6)
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        leaf = builder.sign(self._key, _hash_for(self._key))
        chain = (_pem(leaf), _pem(self.cert), *(_pem(c) for c in self.chain))
        return Signed(chain, not_before, not_after, serial)


# -- a development CA and serving certificate ------------------------------------------------

ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
SERVER_CERT = "server-cert.pem"  # server certificate followed by the root
SERVER_KEY = "server-key.pem"
DEFAULT_SERVER_NAMES = ("istiod.istio-system.svc", "istiod", "localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class DevCerts:
    """Files of a development CA and a serving certificate it signed."""

    directory: Path

    @property
    def root_cert(self) -> Path:
        return self.directory / ROOT_CERT

    @property
    def root_key(self) -> Path:
        return self.directory / ROOT_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only (created 0600, never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def ensure_dev_certs(
    directory: Path,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    *,
    trust_domain: str = "cluster.local",
    days: int = 365,
) -> DevCerts:
    """A self-signed development CA and a serving certificate in `directory`.

    Existing files are kept (a restart keeps the same root, so proxies keep
    trusting it); missing ones are made. The serving certificate is remade when
    it lacks one of `server_names` or expires within a day.
    """
    files = DevCerts(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _now()
    if files.root_cert.exists() and files.root_key.exists():
        root_cert = _load_certs(files.root_cert.read_bytes(), str(files.root_cert))[0]
        root_key = _load_key(files.root_key.read_bytes(), str(files.root_key))
        if not isinstance(root_key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{files.root_key}: the development CA key must be an EC key")
    else:
        root_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, "xdsd development root CA"),
            ]
        )
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days * 10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
            )
            .sign(root_key, hashes.SHA256())
        )
        _write_private(files.root_key, _key_pem(root_key))
        files.root_cert.write_bytes(root_cert.public_bytes(serialization.Encoding.PEM))
        for stale in (files.server_cert, files.server_key):
            stale.unlink(missing_ok=True)
    if not _server_cert_ok(files, server_names, now):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
            .issuer_name(root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(
                min(now + datetime.timedelta(days=days), root_cert.not_valid_after_utc)
            )
            .add_extension(x509.SubjectAlternativeName(_names(server_names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        _write_private(files.server_key, _key_pem(key))
        files.server_cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + root_cert.public_bytes(serialization.Encoding.PEM)
        )
    return files


def _server_cert_ok(files: DevCerts, names: Sequence[str], now: datetime.datetime) -> bool:
    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificates(files.server_cert.read_bytes())[0]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    return wanted <= have and cert.not_valid_after_utc > now + datetime.timedelta(days=1)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def verify_chain(chain_pem: Sequence[str], roots_pem: bytes) -> x509.Certificate:
    """Check that the chain (leaf first) verifies to one of the roots; return the leaf.

    Signatures and validity only (what a TLS peer checks first), for tests and the
    CLI; raises CAError naming the link that does not verify.
    """
    certs = [x509.load_pem_x509_certificate(p.encode()) for p in chain_pem]
    roots = x509.load_pem_x509_certificates(roots_pem)
    now = _now()
    for i, cert in enumerate(certs):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CAError(f"certificate {i} of the chain is not valid now")
        issuer = certs[i + 1] if i + 1 < len(certs) else None
        if issuer is None:
            issuer = next((r for r in roots if r.subject == cert.issuer), None)
            if issuer is None:
                raise CAError("the chain does not end at a trusted root")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError(f"certificate {i} of the chain is not signed by the next") from None
    last = certs[-1]
    if not any(r == last or r.subject == last.issuer for r in roots):
        raise CAError("the chain does not end at a trusted root")
    return certs[0]
