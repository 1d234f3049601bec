"""Gateway parsing and validation (istiod ValidateGateway), and gateway credential Secrets."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from xdsd.model import credentials as creds
from xdsd.model.istio.gateway import Gateway, Server
from xdsd.model.objects import SecretData
from xdsd.model.parse import ParseResult, parse_document
from xdsd.model.types import ConfigObject


def gw_doc(servers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers, **spec},
    }


def http_server(**extra: Any) -> dict[str, Any]:
    return {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"], **extra}


def parse(doc: dict[str, Any]) -> ParseResult:
    return parse_document(doc, "gw.yaml#0")


def errors(r: ParseResult) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in r.errors if e.severity == "error"]


def warnings(r: ParseResult) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in r.errors if e.severity == "warning"]


def typed(r: ParseResult) -> Gateway:
    assert errors(r) == []
    (obj,) = r.objects
    assert isinstance(obj, ConfigObject)
    assert isinstance(obj.typed, Gateway)
    return obj.typed


def test_full_gateway_is_typed() -> None:
    g = typed(
        parse(
            gw_doc(
                [
                    http_server(tls={"httpsRedirect": True}),
                    {
                        "name": "main-https",
                        "port": {"number": 443, "name": "https", "protocol": "https"},
                        "hosts": ["./shop.example.com", "*/api.example.com", "ns1/*.example.org"],
                        "bind": "10.0.0.1",
                        "tls": {
                            "mode": "MUTUAL",
                            "credentialName": "shop-cred",
                            "subjectAltNames": ["client.example.com"],
                            "minProtocolVersion": "TLSV1_2",
                            "maxProtocolVersion": "TLSV1_3",
                            "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256"],
                        },
                    },
                    {
                        "port": {"number": 8443, "name": "tls-pt", "protocol": "TLS"},
                        "hosts": ["*.pass.example.com"],
                        "tls": {"mode": "PASSTHROUGH"},
                    },
                    {
                        "port": {"number": 9443, "name": "https-files", "protocol": "HTTPS"},
                        "hosts": ["files.example.com"],
                        "tls": {
                            "mode": "SIMPLE",
                            "serverCertificate": "/etc/certs/cert.pem",
                            "privateKey": "/etc/certs/key.pem",
                        },
                    },
                ]
            )
        )
    )
    assert g.selector == (("istio", "ingressgateway"),)
    assert g.selects({"istio": "ingressgateway", "app": "x"})
    assert not g.selects({"istio": "egressgateway"})
    http, https, passthrough, files = g.servers
    assert http.port.is_http and http.tls is not None and http.tls.https_redirect
    assert http.is_http_server and not http.is_tls_server
    assert https.name == "main-https" and https.bind == "10.0.0.1"
    assert https.port.protocol == "HTTPS"  # case-insensitive, canonical
    assert https.hosts == ("./shop.example.com", "*/api.example.com", "ns1/*.example.org")
    assert https.tls is not None
    assert https.tls.mode == "MUTUAL" and https.tls.credential_name == "shop-cred"
    assert https.tls.requires_client_cert and https.is_https_terminating
    assert https.tls.min_protocol_version == "TLSV1_2"
    assert https.tls.cipher_suites == ("ECDHE-RSA-AES128-GCM-SHA256",)
    assert passthrough.is_passthrough and passthrough.is_tls_server
    assert files.tls is not None and files.tls.server_certificate == "/etc/certs/cert.pem"


def test_no_selector_selects_every_gateway() -> None:
    doc = gw_doc([http_server()])
    del doc["spec"]["selector"]
    g = typed(parse(doc))
    assert g.selector is None and g.selects({})


def test_tls_mode_defaults_to_passthrough_as_in_the_proto() -> None:
    g = typed(parse(gw_doc([http_server(tls={"httpsRedirect": True})])))
    assert g.servers[0].tls is not None and g.servers[0].tls.mode == "PASSTHROUGH"


@pytest.mark.parametrize(
    ("server", "path", "message"),
    [
        (
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}},
            "spec.servers[0].hosts",
            "at least one host",
        ),
        (http_server(hosts=["shop"]), "spec.servers[0].hosts[0]", "short names"),
        (
            http_server(hosts=["bad_ns!/a.example.com"]),
            "spec.servers[0].hosts[0]",
            "invalid namespace",
        ),
        (http_server(hosts=["/a.example.com"]), "spec.servers[0].hosts[0]", "cannot be empty"),
        (http_server(hosts=["a*.example.com"]), "spec.servers[0].hosts[0]", "partial wildcard"),
        ({"hosts": ["*"]}, "spec.servers[0].port", "is required"),
        (
            http_server(port={"number": 0, "name": "h", "protocol": "HTTP"}),
            "spec.servers[0].port.number",
            "out of range",
        ),
        (
            http_server(port={"number": 80, "name": "h", "protocol": "QUIC"}),
            "spec.servers[0].port.protocol",
            "invalid protocol",
        ),
        (
            http_server(port={"number": 80, "protocol": "HTTP"}),
            "spec.servers[0].port.name",
            "port name must be set",
        ),
        (
            http_server(port={"number": 80, "name": "h", "protocol": "HTTP", "targetPort": 8080}),
            "spec.servers[0].port.targetPort",
            "no impact on Gateways",
        ),
        (http_server(bind="not-an-ip"), "spec.servers[0].bind", "not an IP"),
        (
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]},
            "spec.servers[0].tls",
            "must have TLS settings",
        ),
        (
            http_server(tls={"mode": "SIMPLE", "credentialName": "c"}),
            "spec.servers[0].tls",
            "plain text HTTP ports",
        ),
        (
            {
                "port": {"number": 31400, "name": "tcp", "protocol": "TCP"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE", "credentialName": "c"},
            },
            "spec.servers[0].tls",
            "non HTTPS/TLS ports",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE"},
            },
            "spec.servers[0].tls.serverCertificate",
            "requires a server certificate",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"},
            },
            "spec.servers[0].tls.caCertificates",
            "requires a client CA bundle",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {
                    "mode": "SIMPLE",
                    "credentialName": "c",
                    "serverCertificate": "/c",
                    "privateKey": "/k",
                },
            },
            "spec.servers[0].tls",
            "only one of credential_name",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "ISTIO_MUTUAL", "credentialName": "c"},
            },
            "spec.servers[0].tls.credentialName",
            "ISTIO_MUTUAL TLS cannot have",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "FANCY"},
            },
            "spec.servers[0].tls.mode",
            "is not one of",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "SSLV3"},
            },
            "spec.servers[0].tls.minProtocolVersion",
            "is not one of",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {
                    "mode": "SIMPLE",
                    "credentialName": "c",
                    "minProtocolVersion": "TLSV1_3",
                    "maxProtocolVersion": "TLSV1_2",
                },
            },
            "spec.servers[0].tls",
            "above maxProtocolVersion",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE", "credentialName": "sds://x"},
            },
            "spec.servers[0].tls.credentialName",
            "invalid credential name",
        ),
    ],
)
def test_invalid_servers_are_rejected_with_their_path(
    server: dict[str, Any], path: str, message: str
) -> None:
    r = parse(gw_doc([server]))
    assert r.objects == ()
    assert any(p == path and message in m for p, m in errors(r)), errors(r)


def test_gateway_level_errors() -> None:
    r = parse(gw_doc([]))
    assert ("spec.servers", "gateway must have at least one server") in errors(r)
    dup = parse(gw_doc([http_server(), http_server(hosts=["a.example.com"])]))
    assert any("duplicate name http" in m for _, m in errors(dup))
    dotted = gw_doc([http_server()])
    dotted["metadata"]["name"] = "my.gw"
    assert any(
        p == "metadata.name" and "invalid gateway name" in m for p, m in errors(parse(dotted))
    )


@pytest.mark.parametrize(
    ("server", "path", "message"),
    [
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE", "credentialName": "c", "caCrl": "/crl"},
            },
            "spec.servers[0].tls.caCrl",
            "not supported yet",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {
                    "mode": "SIMPLE",
                    "credentialName": "c",
                    "cipherSuites": ["NOPE", "AES128-SHA", "AES128-SHA"],
                },
            },
            "spec.servers[0].tls.cipherSuites",
            "ignoring invalid cipher suites: ['NOPE']",
        ),
        (
            {
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "PASSTHROUGH", "credentialName": "c"},
            },
            "spec.servers[0].tls",
            "does not use certificates",
        ),
        (
            http_server(defaultEndpoint="127.0.0.1:8080"),
            "spec.servers[0].defaultEndpoint",
            "not supported yet",
        ),
        (
            http_server(bind="unix:///sock", port={"number": 0, "name": "h", "protocol": "HTTP"}),
            "spec.servers[0].bind",
            "not supported yet",
        ),
        (
            {"port": {"number": 53, "name": "dns", "protocol": "UDP"}, "hosts": ["*"]},
            "spec.servers[0].port",
            "UDP servers not supported yet",
        ),
        (
            {
                "port": {"number": 31400, "name": "tcp", "protocol": "TCP"},
                "hosts": ["*"],
                "tls": {"httpsRedirect": True},
            },
            "spec.servers[0].tls",
            "non HTTPS/TLS ports",
        ),
    ],
)
def test_unsupported_fields_warn_with_their_path(
    server: dict[str, Any], path: str, message: str
) -> None:
    r = parse(gw_doc([server]))
    found = warnings(r) + errors(r)
    assert any(p == path and message in m for p, m in found), found


def test_cipher_suites_filtered_like_istiod() -> None:
    g = typed(
        parse(
            gw_doc(
                [
                    {
                        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                        "hosts": ["*"],
                        "tls": {
                            "mode": "SIMPLE",
                            "credentialName": "c",
                            "cipherSuites": ["NOPE", "AES128-SHA", "AES128-SHA", "-ALL"],
                        },
                    }
                ]
            )
        )
    )
    tls = g.servers[0].tls
    assert tls is not None and tls.cipher_suites == ("AES128-SHA", "-ALL")


def test_server_dataclasses_are_hashable() -> None:
    g = typed(parse(gw_doc([http_server()])))
    assert hash(g) == hash(typed(parse(gw_doc([http_server()]))))
    assert isinstance(g.servers[0], Server)


# ---------------------------------------------------------------- credential Secrets

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def secret_doc(data: dict[str, str], stype: str = "kubernetes.io/tls") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cred", "namespace": "istio-system"},
        "type": stype,
        "data": data,
    }


def test_tls_and_generic_secrets_give_key_pairs_and_cas() -> None:
    tls = SecretData({"tls.crt": b64(CERT), "tls.key": b64(KEY), "ca.crt": b64(CERT)})
    pair = creds.key_pair(tls)
    assert pair is not None and pair.cert == CERT and pair.key == KEY
    assert "MIIE" not in repr(pair)
    assert creds.ca_bundle(tls) == CERT
    generic = SecretData(
        {"cert": b64(CERT), "key": b64(KEY), "tls.crt": b64(b"x"), "cacert": b64(CERT)}
    )
    pair = creds.key_pair(generic)
    assert pair is not None and pair.cert == CERT  # generic keys win (istiod ExtractCertInfo)
    assert creds.key_pair(SecretData({"tls.crt": b64(CERT)})) is None
    assert creds.ca_bundle(SecretData({"tls.crt": b64(CERT)})) is None


def test_non_pem_secret_is_reported_by_key_without_its_value() -> None:
    r = parse_document(
        secret_doc({"tls.crt": b64(b"not a certificate"), "tls.key": b64(KEY)}), "s.yaml#0"
    )
    assert errors(r) == []  # kept (other uses), but not served over SDS
    assert warnings(r) == [
        ("data['tls.crt']", "is not PEM (expected -----BEGIN ...----- blocks): not served over SDS")
    ]
    assert all("not a certificate" not in e.message for e in r.errors)
    obj = r.objects[0]
    assert isinstance(obj, ConfigObject)
    assert creds.key_pair(obj.spec["data"]) is None


def test_non_base64_secret_is_an_error_naming_the_key() -> None:
    r = parse_document(secret_doc({"tls.crt": "%%%", "tls.key": b64(KEY)}), "s.yaml#0")
    assert ("data['tls.crt']", "is not valid base64") in errors(r)
    assert all("%%%" not in e.message for e in r.errors)
