"""Authentication and authorization of xDS and CA calls.

Unit tests of the pieces (credentials, authenticators in order, Istio's
authorization rule, the new-streams limiter, TokenReview against the Kubernetes
API test server), then the TLS gRPC server: xDS and the CA on one TLS port with
a JWT the test server's TokenReview accepts, the mTLS port with a workload
certificate, and the refusals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry

from tests.certs import TestCA
from tests.kube.apiserver import KubeApiServer
from tests.test_ca import make_csr, verified_uris
from tests.test_server_grpc import FakeProvider, clusters
from xdsd.ca import proto
from xdsd.ca.authority import CertificateAuthority, ensure_dev_certs
from xdsd.ca.identity import IstioAuthorizer, identity_from_username, parse_spiffe
from xdsd.ca.service import CertificateService
from xdsd.cache.resources import CLUSTER
from xdsd.server.ads import ServerSettings, XdsServices
from xdsd.server.auth import (
    AuthError,
    BearerTokenAuthenticator,
    Caller,
    ClientCertAuthenticator,
    StreamAuth,
    credentials,
)
from xdsd.server.grpc_server import GrpcSettings, XdsServer
from xdsd.server.limits import TokenBucket
from xdsd.server.metrics import XdsMetrics
from xdsd.sources.kube.tokenreview import KubeTokenReviewer

pytestmark = pytest.mark.timeout(60)

TD = "cluster.local"
SHOP_NODE = "sidecar~10.0.0.1~cart-1.shop~shop.svc.cluster.local"


# -- pieces ------------------------------------------------------------------------------


def test_spiffe_and_usernames() -> None:
    assert identity_from_username("system:serviceaccount:shop:cart", TD) == (
        "spiffe://cluster.local/ns/shop/sa/cart"
    )
    assert identity_from_username("kubernetes-admin", TD) is None
    assert identity_from_username("system:serviceaccount:shop", TD) is None
    sid = parse_spiffe("spiffe://td/ns/a/sa/b")
    assert sid is not None and (sid.namespace, sid.service_account) == ("a", "b")
    assert parse_spiffe("spiffe://td/ns/a") is None
    assert parse_spiffe("https://td/ns/a/sa/b") is None


def test_istio_authorization() -> None:
    authz = IstioAuthorizer()
    cart = Caller(("spiffe://cluster.local/ns/shop/sa/cart",), "test")
    authz.authorize(cart, SHOP_NODE, {})
    authz.authorize(cart, SHOP_NODE, {"NAMESPACE": "shop", "SERVICE_ACCOUNT": "cart"})
    with pytest.raises(AuthError) as e:
        authz.authorize(cart, SHOP_NODE, {"SERVICE_ACCOUNT": "payments"})
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(AuthError) as e:
        authz.authorize(cart, "sidecar~10.0.0.1~a.other~other.svc.cluster.local", {})
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    # The metadata NAMESPACE wins over the node id (as istiod reads it).
    with pytest.raises(AuthError):
        authz.authorize(cart, SHOP_NODE, {"NAMESPACE": "other"})
    with pytest.raises(AuthError) as e:
        authz.authorize(cart, "bad", {})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), auth: Any = None) -> None:
        self.metadata = metadata
        self.auth = auth or {}

    def peer(self) -> str:
        return "ipv4:10.0.0.9:1234"

    def auth_context(self) -> Any:
        return self.auth

    def invocation_metadata(self) -> Any:
        return self.metadata


def test_credentials_from_a_call() -> None:
    c = credentials(
        FakeContext(
            (("authorization", "Bearer s3cret"), ("clusterid", "remote")),
            {"x509_pem_cert": [b"..."], "peer_uri": [b"spiffe://td/ns/a/sa/b"]},
        )
    )
    assert c.bearer_token == "s3cret" and c.cluster_id == "remote"
    assert c.peer_uris == ("spiffe://td/ns/a/sa/b",)
    assert "s3cret" not in repr(c)
    # URIs only from a certificate the handshake verified.
    assert credentials(FakeContext(auth={"peer_uri": [b"spiffe://x"]})).peer_uris == ()
    assert credentials(FakeContext((("authorization", "Basic abc"),))).bearer_token is None


class FakeReviewer:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.calls: list[str | None] = []

    async def review(self, token: str, cluster_id: str | None) -> tuple[str | None, str]:
        self.calls.append(cluster_id)
        user = self.users.get(token)
        return (user, "") if user else (None, "[invalid bearer token]")


async def test_authenticators_in_order_denials_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    reviewer = FakeReviewer({"good": "system:serviceaccount:shop:cart", "admin": "kube-admin"})
    auth = StreamAuth(
        [
            ClientCertAuthenticator(),
            BearerTokenAuthenticator(reviewer, lambda u: identity_from_username(u, TD)),
        ],
        IstioAuthorizer(),
        registry,
    )
    cert = {"x509_pem_cert": [b"."], "peer_uri": [b"spiffe://cluster.local/ns/a/sa/b"]}
    # The certificate comes first: its identity, and no token review.
    caller = await auth.authenticate(FakeContext((("authorization", "Bearer good"),), cert), "t")
    assert caller == Caller(("spiffe://cluster.local/ns/a/sa/b",), "client certificate")
    assert reviewer.calls == []
    caller = await auth.authenticate(
        FakeContext((("authorization", "Bearer good"), ("clusterid", "c2"))), "t"
    )
    assert caller is not None and caller.identities == ("spiffe://cluster.local/ns/shop/sa/cart",)
    assert reviewer.calls == ["c2"]

    caplog.set_level(logging.INFO)
    for md, reason in [
        ((("authorization", "Bearer wrong-secret-token"),), "invalid_token"),
        ((("authorization", "Bearer admin"),), "not_service_account"),
        ((), "no_credentials"),
    ]:
        with pytest.raises(AuthError) as e:
            await auth.authenticate(FakeContext(md), "t")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.reason == reason
        assert registry.get_sample_value("xdsd_auth_denied_total", {"reason": reason}) == 1
    with pytest.raises(AuthError):
        auth.authorize(caller, "sidecar~1.1.1.1~x.other~other.svc.cluster.local", {}, "peer")
    assert registry.get_sample_value("xdsd_auth_denied_total", {"reason": "unauthorized"}) == 1
    assert "wrong-secret-token" not in caplog.text
    assert "denied" in caplog.text
    # Auth off: nobody is asked, nothing is refused.
    off = StreamAuth([], IstioAuthorizer(), CollectorRegistry())
    assert await off.authenticate(FakeContext(), "t") is None
    off.authorize(None, SHOP_NODE, {}, "peer")


def test_token_bucket() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.4  # 0.8 tokens
    assert not bucket.take()
    now[0] += 0.1  # 1.0
    assert bucket.take() and not bucket.take()
    now[0] += 100  # never more than the burst
    assert bucket.available == 3
    now[0] -= 50  # a clock going back gives nothing
    assert bucket.available == 3
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


async def test_token_review_against_the_api_server() -> None:
    async with KubeApiServer() as api:
        api.add_token("shop-token", username="system:serviceaccount:shop:cart")
        api.add_token("aud-token", username="system:serviceaccount:shop:cart", audiences=["x"])
        api.add_token("user-token", username="alice", groups=["system:authenticated"])
        kc = api.kubeconfig()
        reviewer = KubeTokenReviewer(lambda c: (c == "config", kc), "config")
        try:
            assert await reviewer.review("shop-token", None) == (
                "system:serviceaccount:shop:cart",
                "",
            )
            assert await reviewer.review("shop-token", "config") == (
                "system:serviceaccount:shop:cart",
                "",
            )
            user, why = await reviewer.review("nope", None)
            assert user is None and "invalid bearer token" in why and "nope" not in why
            user, why = await reviewer.review("aud-token", None)
            assert user is None and "aud-token" not in why
            user, why = await reviewer.review("user-token", None)
            assert user is None and "serviceaccounts" in why
            user, why = await reviewer.review("shop-token", "elsewhere")
            assert user is None and "unknown cluster" in why
            # The API server refusing xdsd's own credentials.
            api.set_token("rotated")
            reviewer2 = KubeTokenReviewer(lambda c: (True, kc), "config")
            user, why = await reviewer2.review("shop-token", None)
            assert user is None and "401" in why
            await reviewer2.aclose()
        finally:
            await reviewer.aclose()
        assert api.count("tokenreview") >= 5


# -- the TLS server --------------------------------------------------------------------------


@dataclass
class Secure:
    api: KubeApiServer
    certs: Path
    server: XdsServer
    provider: FakeProvider
    registry: CollectorRegistry
    ca: CertificateAuthority

    def channel(self, port: int, client: tuple[bytes, bytes] | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            (self.certs / "root-cert.pem").read_bytes(),
            client[1] if client else None,
            client[0] if client else None,
        )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            creds,
            options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")],
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[Secure]:
    certs = ensure_dev_certs(tmp_path / "certs")
    ca = CertificateAuthority.from_files(certs.root_cert, certs.root_key)
    async with KubeApiServer() as api:
        api.add_token("shop-token", username="system:serviceaccount:shop:cart")
        api.add_token("other-token", username="system:serviceaccount:other:cart")
        kc = api.kubeconfig()
        reviewer = KubeTokenReviewer(lambda c: (c == "Kubernetes", kc), "Kubernetes")
        registry = CollectorRegistry()
        auth = StreamAuth(
            [
                ClientCertAuthenticator(),
                BearerTokenAuthenticator(reviewer, lambda u: identity_from_username(u, TD)),
            ],
            IstioAuthorizer(),
            registry,
        )
        provider = FakeProvider()
        provider.ready.set()
        provider.sets[CLUSTER] = clusters("a")
        services = XdsServices(provider, XdsMetrics(registry), auth=auth)
        ca_service = CertificateService(ca, auth, registry)
        settings = GrpcSettings(
            port=-1,
            tls_port=0,
            mtls_port=0,
            tls_cert_file=certs.server_cert,
            tls_key_file=certs.server_key,
            client_ca_file=certs.root_cert,
            shutdown_grace_s=0.1,
        )
        try:
            async with XdsServer(services, settings, ca_service.handlers()) as server:
                yield Secure(api, certs.directory, server, provider, registry, ca)
        finally:
            await reviewer.aclose()


def ads_request(node_id: str = SHOP_NODE, **metadata: str) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    req.node.id = node_id
    for k, v in metadata.items():
        req.node.metadata[k] = v
    return req


async def first_response(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], req: Any = None
) -> Any:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        metadata=metadata
    )
    try:
        await call.write(req or ads_request())
        return await asyncio.wait_for(call.read(), 10)
    finally:
        call.cancel()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def status_of(coro: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    return e.value.code()  # type: ignore[no-any-return]


async def test_xds_over_tls_with_a_kubernetes_token(secure: Secure) -> None:
    async with secure.channel(secure.server.tls_port) as ch:
        resp = await first_response(ch, bearer("shop-token"))
        assert resp.type_url == CLUSTER and len(resp.resources) == 1
        # The SA named in the metadata must be the token's.
        resp = await first_response(ch, bearer("shop-token"), ads_request(SERVICE_ACCOUNT="cart"))
        assert resp.type_url == CLUSTER
        assert (
            await status_of(
                first_response(ch, bearer("shop-token"), ads_request(SERVICE_ACCOUNT="payments"))
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # A token of another namespace: authenticated, not authorized.
        assert (
            await status_of(first_response(ch, bearer("other-token")))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # Unknown, expired (removed from the API server) or absent: unauthenticated.
        secure.api.add_token("expiring", username="system:serviceaccount:shop:cart")
        assert (await first_response(ch, bearer("expiring"))).type_url == CLUSTER
        secure.api.remove_token("expiring")
        for md in (bearer("expiring"), bearer("made-up"), ()):
            assert await status_of(first_response(ch, md)) == grpc.StatusCode.UNAUTHENTICATED
        # A cluster xdsd does not know.
        assert (
            await status_of(first_response(ch, (*bearer("shop-token"), ("clusterid", "nowhere"))))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    assert secure.metric("xdsd_auth_denied_total", reason="unauthorized") == 2
    assert secure.metric("xdsd_auth_denied_total", reason="invalid_token") == 3
    assert secure.metric("xdsd_auth_denied_total", reason="no_credentials") == 1
    assert secure.provider.watches and all(
        w.proxy_id == "cart-1.shop" for w in secure.provider.watches
    )


async def test_plaintext_client_on_the_tls_port_is_refused(secure: Secure) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure.server.tls_port}") as ch:
        code = await status_of(first_response(ch, bearer("shop-token")))
    assert code == grpc.StatusCode.UNAVAILABLE
    # And a client that does not trust xdsd's CA does not connect either.
    other = grpc.ssl_channel_credentials(TestCA("not xdsd").cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{secure.server.tls_port}", other) as ch:
        code = await status_of(first_response(ch, bearer("shop-token")))
    assert code == grpc.StatusCode.UNAVAILABLE


async def create_certificate(
    channel: grpc.aio.Channel, csr: str, metadata: tuple[tuple[str, str], ...], ttl: int = 0
) -> Any:
    m = proto.messages()
    method = channel.unary_unary(
        f"/{proto.SERVICE}/{proto.METHOD}",
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=m.response.FromString,
    )
    req = m.request(csr=csr, validity_duration=ttl)
    req.metadata["ClusterID"] = "Kubernetes"
    return await method(req, metadata=metadata, timeout=10)


async def test_ca_signs_for_the_token_identity_only(secure: Secure) -> None:
    other = "spiffe://cluster.local/ns/istio-system/sa/istiod"
    csr, key = make_csr(other, cn="istiod")
    async with secure.channel(secure.server.tls_port) as ch:
        resp = await create_certificate(ch, csr, bearer("shop-token"), ttl=3600)
        chain = tuple(resp.cert_chain)
        assert verified_uris(chain, secure.ca.root_pem) == [
            "spiffe://cluster.local/ns/shop/sa/cart"
        ]
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert 3600 <= life.total_seconds() <= 3600 + 180
        assert (
            await status_of(create_certificate(ch, csr, bearer("made-up")))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            await status_of(create_certificate(ch, "garbage", bearer("shop-token")))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    assert secure.metric("citadel_server_success_cert_issuance_count_total") == 1

    # The issued certificate authenticates the workload on the mTLS port: xDS and renewal.
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client = ("".join(chain[:-1]).encode(), key_pem)
    async with secure.channel(secure.server.mtls_port, client) as ch:
        assert (await first_response(ch, ())).type_url == CLUSTER
        assert (
            await status_of(
                first_response(
                    ch, (), ads_request("sidecar~1.2.3.4~x.other~other.svc.cluster.local")
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        renewed = await create_certificate(ch, make_csr()[0], ())
        assert verified_uris(tuple(renewed.cert_chain), secure.ca.root_pem) == [
            "spiffe://cluster.local/ns/shop/sa/cart"
        ]
    # No client certificate on the mTLS port: no connection.
    async with secure.channel(secure.server.mtls_port) as ch:
        assert (
            await status_of(first_response(ch, bearer("shop-token"))) == grpc.StatusCode.UNAVAILABLE
        )


async def test_new_streams_limited_per_second() -> None:
    now = [0.0]
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[CLUSTER] = clusters("a")
    registry = CollectorRegistry()
    services = XdsServices(
        provider,
        XdsMetrics(registry),
        ServerSettings(admission_max_wait_s=0),  # no waiting: over the rate is refused
        new_streams=TokenBucket(1, 2, clock=lambda: now[0]),
    )
    async with (
        XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        assert (await first_response(ch, ())).type_url == CLUSTER
        assert (await first_response(ch, ())).type_url == CLUSTER
        assert await status_of(first_response(ch, ())) == grpc.StatusCode.RESOURCE_EXHAUSTED
        now[0] += 1
        assert (await first_response(ch, ())).type_url == CLUSTER
    assert (
        registry.get_sample_value(
            "xdsd_xds_refused_streams_total", {"reason": "resource_exhausted"}
        )
        == 1
    )


def test_token_reservations_queue_in_arrival_order() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert bucket.reserve(1.0) == 0 and bucket.reserve(1.0) == 0
    assert bucket.reserve(1.0) == pytest.approx(0.1)
    assert bucket.reserve(1.0) == pytest.approx(0.2)
    assert bucket.reserve(0.25) is None  # 0.3 s away: over the accepted wait, not booked
    now[0] += 0.2
    assert bucket.reserve(1.0) == pytest.approx(0.1)


async def test_new_streams_over_the_rate_wait_their_turn() -> None:
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[CLUSTER] = clusters("a")
    registry = CollectorRegistry()
    services = XdsServices(
        provider, XdsMetrics(registry), new_streams=TokenBucket(rate=50, burst=1)
    )
    async with (
        XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        answers = await asyncio.gather(*(first_response(ch, ()) for _ in range(5)))
    assert all(a.type_url == CLUSTER for a in answers)  # none refused
    waited = registry.get_sample_value("xdsd_xds_admission_wait_seconds_count")
    assert waited is not None and waited >= 3


async def test_max_connection_age_makes_clients_reconnect() -> None:
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[CLUSTER] = clusters("a")
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()))
    settings = GrpcSettings(
        port=0, max_connection_age_s=0.5, max_connection_age_grace_s=0.2, shutdown_grace_s=0.1
    )
    async with (
        XdsServer(services, settings) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
        await call.write(ads_request())
        assert (await asyncio.wait_for(call.read(), 5)).type_url == CLUSTER
        # After age + grace the connection is closed: the stream ends, the proxy reconnects.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), 5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await first_response(ch, ())).type_url == CLUSTER


def test_settings_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no xDS port"):
        GrpcSettings(port=-1)
    with pytest.raises(ValueError, match="certificate"):
        GrpcSettings(port=-1, tls_port=15012)
    with pytest.raises(ValueError, match="client CA"):
        GrpcSettings(port=-1, mtls_port=0, tls_cert_file=tmp_path, tls_key_file=tmp_path)


async def test_server_certificate_files_are_reloaded(tmp_path: Path) -> None:
    first = ensure_dev_certs(tmp_path / "a")
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[CLUSTER] = clusters("a")
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.server_cert.read_bytes())
    key.write_bytes(first.server_key.read_bytes())
    settings = GrpcSettings(
        port=-1, tls_port=0, tls_cert_file=cert, tls_key_file=key, shutdown_grace_s=0.1
    )

    def channel(root: Path) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{server.tls_port}",
            grpc.ssl_channel_credentials(root.read_bytes()),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )

    async with XdsServer(services, settings) as server:
        async with channel(first.root_cert) as ch:
            assert (await first_response(ch, ())).type_url == CLUSTER
        # Rotation (e.g. a renewed Secret): new files, new connections get the new cert.
        second = ensure_dev_certs(tmp_path / "b")
        cert.write_bytes(second.server_cert.read_bytes())
        key.write_bytes(second.server_key.read_bytes())
        async with channel(second.root_cert) as ch:
            assert (await first_response(ch, ())).type_url == CLUSTER
        async with channel(first.root_cert) as ch:
            assert await status_of(first_response(ch, ())) == grpc.StatusCode.UNAVAILABLE


async def test_graceful_shutdown_ends_streams_after_the_grace() -> None:
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[CLUSTER] = clusters("a")
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()))
    server = await XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.5)).__aenter__()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
        await call.write(ads_request())
        assert (await asyncio.wait_for(call.read(), 5)).type_url == CLUSTER
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.ensure_future(server.__aexit__(None, None, None))
        # GOAWAY: no new streams on this server; the open one ends once the grace is over.
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.read(), 5)
        await stopping
        assert 0.3 <= loop.time() - started < 3
        assert services.connections == {}
