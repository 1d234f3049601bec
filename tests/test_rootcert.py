"""The istio-ca-root-cert ConfigMap writer and the CA from a cacerts Secret, against the
Kubernetes API test server with the real client."""

from __future__ import annotations

import argparse
import base64
import datetime
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.certs import TestCA
from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings, metric, namespace
from tests.test_ca import ME, make_csr, verified_uris
from xdsd.app import XdsdApp
from xdsd.ca.authority import CAError, CertificateAuthority
from xdsd.demo import poll
from xdsd.security import SecuritySettings
from xdsd.sources.kube.rootcert import CONTROL_PLANE_CLUSTERS, leads

CM = "istio-ca-root-cert"
DEADLINE = 15.0


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def intermediate(root: TestCA) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster CA")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=12))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(root.key, hashes.SHA256())
    )
    return cert, key


def cacerts_entries(root: TestCA) -> dict[str, bytes]:
    """Istio's plug-in CA layout: cert-chain.pem repeats ca-cert.pem, then the root."""
    cert, key = intermediate(root)
    return {
        "ca-cert.pem": _pem(cert),
        "ca-key.pem": _key_pem(key),
        "root-cert.pem": root.cert_pem,
        "cert-chain.pem": _pem(cert) + root.cert_pem,
    }


def cacerts_secret(entries: dict[str, bytes], ns: str = "istio-system") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": ns},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in entries.items()},
    }


def ca_files(tmp_path: Path, root: TestCA) -> tuple[Path, Path]:
    """The CA as files (--ca-cert-file / --ca-key-file)."""
    cert_file, key_file = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    cert_file.write_bytes(root.cert_pem)
    key_file.write_bytes(_key_pem(root.key))
    return cert_file, key_file


def annotated(name: str, value: str) -> dict[str, Any]:
    ns = namespace(name)
    ns["metadata"]["annotations"] = {CONTROL_PLANE_CLUSTERS: value}
    return ns


# -- the cacerts layout --------------------------------------------------------------------


def test_leads() -> None:
    assert leads({CONTROL_PLANE_CLUSTERS: "main"}, "main")
    assert leads({CONTROL_PLANE_CLUSTERS: "east, main"}, "main")
    assert leads({CONTROL_PLANE_CLUSTERS: "*"}, "main")
    assert not leads({CONTROL_PLANE_CLUSTERS: "east"}, "main")
    assert not leads({}, "main")
    assert not leads(None, "main")


def test_cacerts_layout_drops_the_repeated_ca_cert() -> None:
    root = TestCA("mesh root")
    entries = cacerts_entries(root)
    ca = CertificateAuthority.from_cacerts(entries)
    assert ca.root == root.cert
    assert len(ca.chain) == 1  # the root only: the repeated ca-cert.pem is gone
    csr, _ = make_csr()
    signed = ca.sign_csr(csr, [ME])
    assert len(signed.chain) == 3  # leaf, cluster CA, root
    assert verified_uris(signed.chain, ca.root_pem) == [ME]
    # Without cert-chain.pem, root-cert.pem completes the chain.
    no_chain = {k: v for k, v in entries.items() if k != "cert-chain.pem"}
    assert CertificateAuthority.from_cacerts(no_chain).root == root.cert
    # A self-signed plug-in CA: ca-cert.pem is root-cert.pem.
    own = {"ca-cert.pem": root.cert_pem, "ca-key.pem": _key_pem(root.key)}
    own["root-cert.pem"] = own["cert-chain.pem"] = root.cert_pem
    assert CertificateAuthority.from_cacerts(own).chain == ()


def test_cacerts_inconsistent_is_refused_without_key_material() -> None:
    root = TestCA("mesh root")
    entries = cacerts_entries(root)
    other = TestCA("another root")
    with pytest.raises(CAError, match=r"root-cert\.pem") as e:
        CertificateAuthority.from_cacerts({**entries, "root-cert.pem": other.cert_pem})
    assert "PRIVATE KEY" not in str(e.value)
    with pytest.raises(CAError, match=r"ca-key\.pem missing"):
        CertificateAuthority.from_cacerts({"ca-cert.pem": entries["ca-cert.pem"]})


# -- the app in the Kubernetes mode ----------------------------------------------------------


@pytest.fixture
async def main() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(token="main-token", bookmark_interval=0.5) as api:
        api.apply(namespace("istio-system"))
        api.apply(namespace("shop"))
        yield api


async def test_ca_from_cacerts_secret_signs(
    tmp_path: Path, main: KubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    root = TestCA("mesh root")
    entries = cacerts_entries(root)
    main.apply(cacerts_secret(entries))
    settings = kube_settings(tmp_path, main, security=SecuritySettings(ca_secret="cacerts"))
    async with XdsdApp(settings) as app:
        ca = app.security.ca
        assert ca is not None and ca.root == root.cert
        assert app.security.ca_service is not None
        csr, _ = make_csr("spiffe://cluster.local/ns/other/sa/x")
        signed = ca.sign_csr(csr, [ME])
        assert verified_uris(signed.chain, root.cert_pem.decode()) == [ME]
    key_text = entries["ca-key.pem"].decode()
    body = key_text.splitlines()[1]
    assert body not in caplog.text and "PRIVATE KEY" not in caplog.text


async def until(check: Callable[[], bool], what: str) -> None:
    async def done() -> bool:
        return check()

    await poll(done, timeout=DEADLINE, what=what)


async def test_rotated_cacerts_secret_is_served_without_restart(
    tmp_path: Path, main: KubeApiServer
) -> None:
    old, new = TestCA("old root"), TestCA("new root")
    main.apply(annotated("istio-system", "*"))
    main.apply(namespace("shop"))
    main.apply(cacerts_secret(cacerts_entries(old)))
    settings = kube_settings(tmp_path, main, security=SecuritySettings(ca_secret="cacerts"))
    async with XdsdApp(settings) as app:
        await until(lambda: _root_of(main, "shop") == old.cert_pem.decode(), "the old root")
        service = app.security.ca_service
        assert service is not None
        main.apply(cacerts_secret(cacerts_entries(new)))

        def rotated() -> bool:
            ca = app.security.ca
            return ca is not None and ca.root == new.cert

        await until(rotated, "the rotated CA loaded")
        # The very service the gRPC server holds signs with the new CA.
        assert app.security.ca_service is service and service.ca is app.security.ca
        csr, _ = make_csr("spiffe://cluster.local/ns/other/sa/x")
        signed = service.ca.sign_csr(csr, [ME])
        assert verified_uris(signed.chain, new.cert_pem.decode()) == [ME]
        await until(lambda: _root_of(main, "shop") == new.cert_pem.decode(), "the new root")
        # A Secret that makes no CA (no key) is refused: the new CA keeps signing.
        broken = cacerts_entries(TestCA("third"))
        del broken["ca-key.pem"]
        main.apply(cacerts_secret(broken))
        await until(
            lambda: (metric(app, "xdsd_ca_rotations_total", result="error") or 0) >= 1,
            "the broken Secret refused",
        )
        assert app.security.ca.root == new.cert
        assert metric(app, "xdsd_ca_rotations_total", result="rotated") == 1


async def test_missing_cacerts_secret_is_a_clear_error(tmp_path: Path, main: KubeApiServer) -> None:
    settings = kube_settings(tmp_path, main, security=SecuritySettings(ca_secret="cacerts"))
    with pytest.raises(ValueError, match="Secret istio-system/cacerts"):
        async with XdsdApp(settings):
            pass


def _root_of(api: KubeApiServer, ns: str) -> str | None:
    cm = api.get("ConfigMap", ns, CM)
    return None if cm is None else str((cm.get("data") or {}).get("root-cert.pem"))


async def test_root_cert_configmaps_in_annotated_clusters(
    tmp_path: Path, main: KubeApiServer
) -> None:
    async with (
        KubeApiServer(token="west-token", bookmark_interval=0.5) as west,
        KubeApiServer(token="east-token", bookmark_interval=0.5) as east,
    ):
        # west names this control plane; east names another one; main is not annotated.
        west.apply(annotated("istio-system", "other, main"))
        east.apply(annotated("istio-system", "other"))
        for api in (west, east):
            for ns in ("shop", "web", "kube-system"):
                api.apply(namespace(ns))
        # A stale root left in west/web, and an identical one in west/shop.
        root = TestCA("mesh root")
        root_pem = root.cert_pem.decode()
        west.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CM, "namespace": "web"},
                "data": {"root-cert.pem": "stale"},
            }
        )
        same = west.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CM,
                    "namespace": "shop",
                    "labels": {"istio.io/config": "true"},
                },
                "data": {"root-cert.pem": root_pem},
            }
        )
        main.apply(west.remote_secret("west"))
        main.apply(east.remote_secret("east"))
        cert_file, key_file = ca_files(tmp_path, root)
        settings = kube_settings(
            tmp_path,
            main,
            security=SecuritySettings(ca_cert_file=cert_file, ca_key_file=key_file),
        )
        async with XdsdApp(settings) as app:
            west_ns = ("istio-system", "shop", "web")

            async def west_written() -> bool:
                return all(_root_of(west, ns) == root_pem for ns in west_ns)

            await poll(west_written, timeout=DEADLINE, what="root cert in every west namespace")
            cm = west.get("ConfigMap", "istio-system", CM)
            assert cm is not None and cm["metadata"]["labels"] == {"istio.io/config": "true"}
            assert west.get("ConfigMap", "kube-system", CM) is None
            # The identical one was left alone.
            still = west.get("ConfigMap", "shop", CM)
            assert still is not None
            assert still["metadata"]["resourceVersion"] == same["metadata"]["resourceVersion"]

            # Deleted by someone else: restored. A new namespace gets one.
            west.delete("ConfigMap", "web", CM)
            west.apply(namespace("late"))

            async def restored() -> bool:
                return _root_of(west, "web") == root_pem and _root_of(west, "late") == root_pem

            await poll(restored, timeout=DEADLINE, what="root cert restored and in a new namespace")

            # A new root is written everywhere.
            new_root = TestCA("new root").cert_pem.decode()
            assert app.root_certs is not None
            app.root_certs.set_root(new_root)

            async def rotated() -> bool:
                return all(_root_of(west, ns) == new_root for ns in (*west_ns, "late"))

            await poll(rotated, timeout=DEADLINE, what="the new root in every west namespace")
            assert (
                metric(app, "xdsd_root_cert_writes_total", cluster="west", op="update") or 0
            ) >= 4

            # Neither east (another control plane's) nor main (not annotated) was written.
            assert east.objects("ConfigMap") == []
            assert main.objects("ConfigMap") == []
            st = app.root_certs.status()
            assert st["west"]["leading"] and not st["east"]["leading"]
            assert not st["main"]["leading"]

            # Annotating main later makes it led.
            main.apply(annotated("istio-system", "*"))

            async def main_written() -> bool:
                return all(_root_of(main, ns) == new_root for ns in ("istio-system", "shop"))

            await poll(main_written, timeout=DEADLINE, what="root cert in main once annotated")


async def test_root_certs_only_in_namespaces_of_the_revision(
    tmp_path: Path, main: KubeApiServer
) -> None:
    root = TestCA("mesh root")
    main.apply(annotated("istio-system", "*"))
    blue = namespace("shop")
    blue["metadata"]["labels"] = {"istio.io/rev": "blue"}
    main.apply(blue)
    main.apply(namespace("web"))  # unlabelled: not blue's
    cert_file, key_file = ca_files(tmp_path, root)
    settings = kube_settings(
        tmp_path,
        main,
        revision="blue",
        security=SecuritySettings(ca_cert_file=cert_file, ca_key_file=key_file),
    )
    async with XdsdApp(settings):
        root_pem = root.cert_pem.decode()
        await until(
            lambda: (
                _root_of(main, "shop") == root_pem and _root_of(main, "istio-system") == root_pem
            ),
            "root cert in blue's namespaces",
        )
        assert _root_of(main, "web") is None


async def test_root_certs_only_in_namespaces_discovery_selects(
    tmp_path: Path, main: KubeApiServer
) -> None:
    """MeshConfig discoverySelectors: istiod's namespace controller writes the ConfigMap
    only into discovered namespaces; a namespace labelled later gets it then."""
    root = TestCA("mesh root")
    main.apply(annotated("istio-system", "*"))
    main.apply(namespace("shop", {"mesh": "on"}))
    main.apply(namespace("legacy"))
    main.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "discoverySelectors:\n- matchLabels: {mesh: 'on'}\n"},
        }
    )
    cert_file, key_file = ca_files(tmp_path, root)
    settings = kube_settings(
        tmp_path, main, security=SecuritySettings(ca_cert_file=cert_file, ca_key_file=key_file)
    )
    async with XdsdApp(settings):
        root_pem = root.cert_pem.decode()
        await until(
            lambda: (
                _root_of(main, "shop") == root_pem and _root_of(main, "istio-system") == root_pem
            ),
            "root cert in the selected namespaces",
        )
        assert _root_of(main, "legacy") is None
        main.apply(namespace("legacy", {"mesh": "on"}))
        await until(lambda: _root_of(main, "legacy") == root_pem, "root cert once selected")


async def test_no_configmaps_without_a_ca(tmp_path: Path, main: KubeApiServer) -> None:
    main.apply(annotated("istio-system", "main"))
    async with XdsdApp(kube_settings(tmp_path, main)) as app:
        assert app.root_certs is None
        await app.ready.wait()
    assert main.objects("ConfigMap") == []


def test_cli_ca_secret(tmp_path: Path) -> None:
    from xdsd import cli

    def args(*argv: str) -> argparse.Namespace:
        return cli._parser().parse_args(["serve", "--kubeconfig", "k", *argv])

    _, sec = cli._security_settings(args("--ca-secret", "cacerts", "--dev-certs", str(tmp_path)))
    assert sec.ca_secret == "cacerts" and sec.ca_cert_file is None
    with pytest.raises(ValueError, match="not both"):
        cli._security_settings(
            args("--ca-secret", "c", "--ca-cert-file", "x", "--ca-key-file", "y")
        )
    with pytest.raises(ValueError, match="Kubernetes mode"):
        cli._security_settings(
            cli._parser().parse_args(["serve", "--config-dir", ".", "--ca-secret", "c"])
        )
