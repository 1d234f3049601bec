"""The CA: real CSRs from `cryptography`, chains checked with cryptography's own verifier."""

from __future__ import annotations

import datetime
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from google.protobuf import descriptor_pb2

from tests.certs import TestCA
from xdsd.ca import proto
from xdsd.ca.authority import (
    CAError,
    CertificateAuthority,
    CSRError,
    ensure_dev_certs,
    verify_chain,
)

ME = "spiffe://cluster.local/ns/shop/sa/cart"
OTHER = "spiffe://cluster.local/ns/istio-system/sa/istiod"
REPO = Path(__file__).resolve().parent.parent


def make_csr(
    *uris: str, dns: tuple[str, ...] = (), cn: str | None = None, rsa_key: bool = False
) -> tuple[str, object]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def root_ca(max_ttl: datetime.timedelta = datetime.timedelta(hours=24)) -> CertificateAuthority:
    t = TestCA("mesh root")
    return CertificateAuthority.from_pem(t.cert_pem, _key_pem(t.key), max_ttl=max_ttl)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def verified_uris(chain: tuple[str, ...], root_pem: str) -> list[str]:
    """Verify leaf..root with cryptography's client verifier; the leaf's URI SANs."""
    certs = [x509.load_pem_x509_certificate(c.encode()) for c in chain]
    root = x509.load_pem_x509_certificate(root_pem.encode())
    assert certs[-1] == root, "the chain ends with the root"
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    verifier.verify(certs[0], certs[1:-1])
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def test_signs_the_csr_key_for_the_caller_identity_only() -> None:
    ca = root_ca()
    csr, key = make_csr(OTHER, dns=("istiod.istio-system.svc",), cn="istiod")
    signed = ca.sign_csr(csr, [ME])
    assert len(signed.chain) == 2  # leaf, root: a chain of one is an error for pilot-agent
    assert verified_uris(signed.chain, ca.root_pem) == [ME]
    leaf = x509.load_pem_x509_certificate(signed.chain[0].encode())
    assert leaf.subject == x509.Name([])  # nothing of the CSR's subject
    assert leaf.public_key() == key.public_key()  # type: ignore[attr-defined]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca


def test_rsa_csr_and_verify_chain() -> None:
    ca = root_ca()
    csr, _ = make_csr(rsa_key=True)
    signed = ca.sign_csr(csr, [ME])
    assert verified_uris(signed.chain, ca.root_pem) == [ME]
    verify_chain(signed.chain, ca.root_pem.encode())
    with pytest.raises(CAError):
        verify_chain(signed.chain, TestCA("someone else").cert_pem)


def test_validity_is_the_requested_one_capped_at_the_maximum() -> None:
    t = TestCA()
    real_now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority(
        t.cert, t.key, max_ttl=datetime.timedelta(hours=24), clock=lambda: real_now
    )
    csr, _ = make_csr()
    short = ca.sign_csr(csr, [ME], datetime.timedelta(hours=1))
    assert short.not_after - real_now == datetime.timedelta(hours=1)
    assert real_now - short.not_before == datetime.timedelta(minutes=2)
    long = ca.sign_csr(csr, [ME], datetime.timedelta(days=90))
    assert long.not_after <= real_now + datetime.timedelta(hours=24)
    default = ca.sign_csr(csr, [ME], None)
    assert default.not_after <= real_now + datetime.timedelta(hours=24)
    # Never past the CA's own expiry.
    ca2 = CertificateAuthority.from_pem(
        t.cert_pem, _key_pem(t.key), max_ttl=datetime.timedelta(days=365)
    )
    capped = ca2.sign_csr(csr, [ME], datetime.timedelta(days=100))
    assert capped.not_after == t.cert.not_valid_after_utc
    leaf = x509.load_pem_x509_certificate(capped.chain[0].encode())
    assert leaf.not_valid_after_utc == t.cert.not_valid_after_utc


def test_intermediate_ca_chain_goes_to_the_root(tmp_path: Path) -> None:
    root = TestCA("root")
    # An intermediate signed by the root.
    ikey = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    icert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(ikey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=20))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(root.key, hashes.SHA256())
    )
    (tmp_path / "ca-cert.pem").write_bytes(icert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca-key.pem").write_bytes(_key_pem(ikey))
    (tmp_path / "root-cert.pem").write_bytes(root.cert_pem)
    ca = CertificateAuthority.from_files(
        tmp_path / "ca-cert.pem", tmp_path / "ca-key.pem", tmp_path / "root-cert.pem"
    )
    assert ca.root_pem == root.cert_pem.decode()
    csr, _ = make_csr()
    signed = ca.sign_csr(csr, [ME])
    assert len(signed.chain) == 3
    assert verified_uris(signed.chain, ca.root_pem) == [ME]


def test_bad_inputs() -> None:
    ca = root_ca()
    with pytest.raises(CSRError):
        ca.sign_csr("not a csr", [ME])
    csr, _ = make_csr()
    # A CSR whose signature does not match its content (proof of possession fails).
    der = bytearray(x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRError, match="signature"):
        ca.sign_csr(tampered, [ME])
    with pytest.raises(CAError):
        ca.sign_csr(csr, [])
    t1, t2 = TestCA(), TestCA()
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.from_pem(t1.cert_pem, _key_pem(t2.key))
    leaf = t1.issue("x")
    with pytest.raises(CAError, match="not a CA"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)


def test_key_material_stays_out_of_errors_and_repr(tmp_path: Path) -> None:
    t = TestCA()
    key_pem = _key_pem(t.key)
    body = key_pem.decode().splitlines()[1]
    ca = CertificateAuthority.from_pem(t.cert_pem, key_pem)
    assert body not in repr(ca) and body not in str(vars(ca))
    broken = key_pem.replace(body.encode(), body[::-1].encode())
    (tmp_path / "key.pem").write_bytes(broken)
    (tmp_path / "cert.pem").write_bytes(t.cert_pem)
    with pytest.raises(CAError) as e:
        CertificateAuthority.from_files(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert body[::-1] not in str(e.value) and "key" in str(e.value)


def test_dev_certs(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    files = ensure_dev_certs(d, ["xdsd.example", "127.0.0.1"])
    for key in (files.root_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root = files.root_cert.read_bytes()
    # A restart keeps the root (proxies keep trusting it) and the serving cert.
    server = files.server_cert.read_bytes()
    again = ensure_dev_certs(d, ["xdsd.example", "127.0.0.1"])
    assert again.root_cert.read_bytes() == root and again.server_cert.read_bytes() == server
    # New names: a new serving certificate from the same root.
    ensure_dev_certs(d, ["other.example"])
    chain = x509.load_pem_x509_certificates(files.server_cert.read_bytes())
    assert chain[-1] == x509.load_pem_x509_certificate(root)
    verifier = (
        PolicyBuilder()
        .store(Store([x509.load_pem_x509_certificate(root)]))
        .build_server_verifier(x509.DNSName("other.example"))
    )
    verifier.verify(chain[0], [])
    ca = CertificateAuthority.from_files(files.root_cert, files.root_key)
    csr, _ = make_csr()
    assert verified_uris(ca.sign_csr(csr, [ME]).chain, ca.root_pem) == [ME]


def test_descriptor_matches_the_proto_file(tmp_path: Path) -> None:
    """protos/istio_ca.proto compiled by grpcio-tools == the descriptor built in code."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "ca.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protos'}",
            f"--descriptor_set_out={out}",
            str(REPO / "protos" / "istio_ca.proto"),
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    assert compiled == proto.file_descriptor()


def test_wire_format_matches_istio_field_numbers() -> None:
    m = proto.messages()
    req = m.request(csr="PEM", validity_duration=3600)
    req.metadata["ClusterID"] = "remote"
    data = req.SerializeToString()
    # field 1 string (tag 0x0a), field 3 varint (tag 0x18), field 4 message (tag 0x22)
    assert data.startswith(b"\x0a\x03PEM\x18\x90\x1c\x22")
    resp = m.response(cert_chain=["a", "b"])
    assert resp.SerializeToString() == b"\x0a\x01a\x0a\x01b"
    assert proto.SERVICE == "istio.v1.auth.IstioCertificateService"


def test_no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    t = TestCA()
    ca = CertificateAuthority.from_pem(t.cert_pem, _key_pem(t.key))
    csr, _ = make_csr()
    ca.sign_csr(csr, [ME])
    assert "PRIVATE KEY" not in caplog.text
