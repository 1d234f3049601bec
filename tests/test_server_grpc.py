"""The xDS gRPC services over a real loopback channel, with a fake config provider.

These check what the pure protocol tables cannot: the readiness gate, stream
identity, push wake-ups, unknown types, per-type services and error statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from xdsd.cache.resources import CLUSTER, ENDPOINT, Resource, ResourceSet
from xdsd.server.ads import NodeRejected, ServerSettings, XdsServices
from xdsd.server.auth import Caller
from xdsd.server.grpc_server import GrpcSettings, XdsServer
from xdsd.server.metrics import XdsMetrics

NODE_ID = "sidecar~10.0.0.1~a.default~default.svc.cluster.local"


def clusters(*names: str) -> ResourceSet:
    return ResourceSet.of(
        CLUSTER,
        [Resource.from_message(n, CLUSTER, cluster_pb2.Cluster(name=n)) for n in names],
    )


def cla(name: str, port: int = 80) -> Resource:
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = msg.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "10.1.0.1"
    ep.address.socket_address.port_value = port
    return Resource.from_message(name, ENDPOINT, msg)


class FakeWatch:
    def __init__(self, provider: FakeProvider, node_id: str) -> None:
        self.provider = provider
        self.proxy_id = node_id.split("~")[2] if node_id.count("~") == 3 else node_id
        self.closed = False

    def resources(self, type_url: str) -> ResourceSet:
        return self.provider.sets.get(type_url, ResourceSet.of(type_url, ()))

    def query_types(self) -> frozenset[str]:
        return frozenset()

    def query(self, type_url: str, names: tuple[str, ...], caller: Caller | None) -> list[Resource]:
        return []

    def close(self) -> None:
        self.closed = True


class FakeProvider:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.sets: dict[str, ResourceSet] = {}
        self.watches: list[FakeWatch] = []

    async def wait_ready(self) -> None:
        await self.ready.wait()

    def open(self, node_id: str, metadata: Mapping[str, Any], peer: str, context: Any) -> FakeWatch:
        if not node_id.startswith("sidecar~"):
            raise NodeRejected(grpc.StatusCode.INVALID_ARGUMENT, f"bad node id {node_id!r}")
        w = FakeWatch(self, node_id)
        self.watches.append(w)
        return w


class Harness:
    def __init__(self, provider: FakeProvider, services: XdsServices, channel: grpc.aio.Channel):
        self.provider = provider
        self.services = services
        self.channel = channel
        self.ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    def metric(self, name: str, **labels: str) -> float:
        value = self.services.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    provider = FakeProvider()
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()))
    async with (
        XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Harness(provider, services, channel)


def sotw(
    type_url: str,
    names: tuple[str, ...] = (),
    nonce: str = "",
    node: bool = True,
    version: str = "",
    error: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if node:
        req.node.id = NODE_ID
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


async def read(call: Any, timeout: float = 5) -> discovery_pb2.DiscoveryResponse:
    resp = await asyncio.wait_for(call.read(), timeout)
    assert resp is not grpc.aio.EOF
    return resp  # type: ignore[no-any-return]


async def test_no_answer_before_ready_then_full_world(harness: Harness) -> None:
    harness.provider.sets[CLUSTER] = clusters("a", "b")
    call = harness.ads.StreamAggregatedResources()
    await call.write(sotw(CLUSTER))
    # The readiness gate: nothing comes back while the first load is not done.
    pending = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done
    harness.provider.ready.set()
    resp = await asyncio.wait_for(pending, 5)
    assert resp.type_url == CLUSTER
    assert sorted(cluster_pb2.Cluster.FromString(r.value).name for r in resp.resources) == [
        "a",
        "b",
    ]
    assert resp.nonce and resp.version_info
    assert resp.control_plane.identifier == "xdsd"
    call.cancel()


async def test_push_ack_nack_and_eds_after_cds(harness: Harness) -> None:
    p = harness.provider
    p.ready.set()
    p.sets[CLUSTER] = clusters("a")
    p.sets[ENDPOINT] = ResourceSet.of(ENDPOINT, [cla("a")])
    call = harness.ads.StreamAggregatedResources()
    await call.write(sotw(CLUSTER))
    cds = await read(call)
    await call.write(sotw(ENDPOINT, ("a",), node=False))
    eds = await read(call)
    assert eds.type_url == ENDPOINT and len(eds.resources) == 1
    await call.write(sotw(CLUSTER, nonce=cds.nonce, version=cds.version_info, node=False))
    await call.write(sotw(ENDPOINT, ("a",), nonce=eds.nonce, version=eds.version_info, node=False))

    # A cluster change is pushed, and the unchanged endpoints follow it.
    p.sets[CLUSTER] = clusters("a", "b")
    assert harness.services.notify() == 1
    cds2 = await read(call)
    assert cds2.type_url == CLUSTER and len(cds2.resources) == 2
    eds2 = await read(call)
    assert eds2.type_url == ENDPOINT and [r.value for r in eds2.resources] == [
        r.value for r in eds.resources
    ]

    # The proxy rejects the clusters: recorded, counted, not resent.
    await call.write(
        sotw(CLUSTER, nonce=cds2.nonce, version=cds.version_info, node=False, error="bad cluster b")
    )
    await call.write(sotw(ENDPOINT, ("a",), nonce=eds2.nonce, node=False))

    async def nacked() -> bool:
        return harness.metric("pilot_total_xds_rejects_total", type="cds") == 1

    for _ in range(100):
        if await nacked():
            break
        await asyncio.sleep(0.02)
    assert await nacked()
    conn = next(iter(harness.services.connections.values()))
    nack = conn.states[CLUSTER].nack
    assert nack is not None and nack.message == "bad cluster b"
    harness.services.notify()
    # Nothing new to send: the next thing on the stream is the answer to a new change.
    p.sets[CLUSTER] = clusters("a")
    harness.services.notify()
    cds3 = await read(call)
    assert len(cds3.resources) == 1
    call.cancel()


async def test_unknown_type_gets_an_empty_answer_and_the_stream_lives_on(harness: Harness) -> None:
    harness.provider.ready.set()
    harness.provider.sets[CLUSTER] = clusters("a")
    call = harness.ads.StreamAggregatedResources()
    unknown = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    await call.write(sotw(unknown, ("ecds-filter",)))
    resp = await read(call)
    assert resp.type_url == unknown and len(resp.resources) == 0
    await call.write(sotw(CLUSTER, node=False))
    assert (await read(call)).type_url == CLUSTER
    call.cancel()


async def test_stale_nonce_is_counted_and_ignored(harness: Harness) -> None:
    harness.provider.ready.set()
    harness.provider.sets[CLUSTER] = clusters("a")
    call = harness.ads.StreamAggregatedResources()
    await call.write(sotw(CLUSTER))
    first = await read(call)
    await call.write(sotw(CLUSTER, nonce="not-a-nonce-we-sent", node=False))
    await call.write(sotw(CLUSTER, nonce=first.nonce, version=first.version_info, node=False))
    for _ in range(100):
        conn = next(iter(harness.services.connections.values()))
        if conn.states[CLUSTER].acked:
            break
        await asyncio.sleep(0.02)
    assert conn.states[CLUSTER].acked
    assert harness.metric("pilot_xds_expired_nonce_total", type="cds") == 1
    call.cancel()


async def test_delta_stream_sends_removals(harness: Harness) -> None:
    harness.provider.ready.set()
    harness.provider.sets[CLUSTER] = clusters("a", "b")
    call = harness.ads.DeltaAggregatedResources()
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)
    req.node.id = NODE_ID
    await call.write(req)
    first = await asyncio.wait_for(call.read(), 5)
    assert sorted(r.name for r in first.resources) == ["a", "b"]
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce)
    )
    harness.provider.sets[CLUSTER] = clusters("a")
    harness.services.notify()
    second = await asyncio.wait_for(call.read(), 5)
    assert list(second.removed_resources) == ["b"] and len(second.resources) == 0
    call.cancel()


async def test_per_type_service_infers_the_type(harness: Harness) -> None:
    harness.provider.ready.set()
    harness.provider.sets[CLUSTER] = clusters("a")
    cds = cds_pb2_grpc.ClusterDiscoveryServiceStub(harness.channel)
    call = cds.StreamClusters()
    req = discovery_pb2.DiscoveryRequest()
    req.node.id = NODE_ID
    await call.write(req)
    resp = await read(call)
    assert resp.type_url == CLUSTER and len(resp.resources) == 1
    call.cancel()


async def test_bad_node_is_refused_with_invalid_argument(harness: Harness) -> None:
    harness.provider.ready.set()
    for node_id in ("", "router-without-tildes"):
        call = harness.ads.StreamAggregatedResources()
        req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        req.node.id = node_id
        await call.write(req)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert harness.services.connections == {}


async def test_disconnect_closes_the_watch_and_updates_the_gauge(harness: Harness) -> None:
    harness.provider.ready.set()
    call = harness.ads.StreamAggregatedResources()
    await call.write(sotw(CLUSTER))
    await read(call)
    assert harness.metric("pilot_xds", version="unknown") == 1
    call.cancel()
    for _ in range(200):
        if not harness.services.connections:
            break
        await asyncio.sleep(0.01)
    assert harness.services.connections == {}
    assert harness.provider.watches[0].closed
    assert harness.metric("pilot_xds", version="unknown") == 0


def big_cla(name: str, marker: int, endpoints: int = 20_000) -> Resource:
    """An assignment of ~0.5 MiB whose first address carries `marker`."""
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lle = msg.endpoints.add()
    for i in range(endpoints):
        ep = lle.lb_endpoints.add().endpoint
        ep.address.socket_address.address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        ep.address.socket_address.port_value = marker if i == 0 else 80
    return Resource.from_message(name, ENDPOINT, msg)


async def test_a_stalled_proxy_does_not_delay_others() -> None:
    """Isolation: a proxy that stops reading has one response in flight and gives its
    send slot back after the slow-send time; the other proxy gets every push meanwhile,
    though there is a single slot."""
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[ENDPOINT] = ResourceSet.of(ENDPOINT, [big_cla("a", 1)])
    settings = ServerSettings(push_concurrency=1, slow_send_s=0.2)
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()), settings)
    # No BDP probing: the stalled client's receive window stays small.
    options = [("grpc.http2.bdp_probe", 0)]
    async with (
        XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as stalled_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as healthy_ch,
    ):
        stalled = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            stalled_ch
        ).StreamAggregatedResources()
        await stalled.write(sotw(ENDPOINT, ("a",)))
        await read(stalled)  # then it never reads again
        healthy = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            healthy_ch
        ).StreamAggregatedResources()
        await healthy.write(sotw(ENDPOINT, ("a",)))
        first = await read(healthy)
        nonce, version = first.nonce, first.version_info
        marker = 1
        for marker in range(2, 40):
            provider.sets[ENDPOINT] = ResourceSet.of(ENDPOINT, [big_cla("a", marker)])
            services.notify()
            got = await read(healthy, timeout=5)  # never waits for the stalled stream
            cla_msg = endpoint_pb2.ClusterLoadAssignment.FromString(got.resources[0].value)
            port = cla_msg.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
            assert port == marker
            nonce, version = got.nonce, got.version_info
            await healthy.write(sotw(ENDPOINT, ("a",), nonce=nonce, version=version, node=False))
        # The stalled stream has one write in flight (it outlasted the slow-send time and
        # gave its slot back) and one merged push waiting, whatever the number of pushes.
        assert harness_metric(services, "xdsd_xds_slow_sends_total") == 1
        conn = next(c for c in services.connections.values() if c.pushes < marker - 2)
        assert conn.push_queued and conn.inbox.qsize() == 1
        stalled.cancel()
        healthy.cancel()


async def test_small_responses_do_not_wait_for_a_send_slot() -> None:
    """The slots bound the bytes of big responses in flight; an endpoint change of a
    few hundred bytes goes out while every slot is taken (here: held by the test)."""
    provider = FakeProvider()
    provider.ready.set()
    provider.sets[ENDPOINT] = ResourceSet.of(ENDPOINT, [cla("a", 81)])
    settings = ServerSettings(push_concurrency=1)
    services = XdsServices(provider, XdsMetrics(CollectorRegistry()), settings)
    async with (
        XdsServer(services, GrpcSettings(port=0, shutdown_grace_s=0.1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        await services._send_slots.acquire()  # the one slot, taken
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(sotw(ENDPOINT, ("a",)))
        first = await read(call)
        provider.sets[ENDPOINT] = ResourceSet.of(ENDPOINT, [cla("a", 82)])
        services.notify()
        await call.write(
            sotw(ENDPOINT, ("a",), nonce=first.nonce, version=first.version_info, node=False)
        )
        got = await read(call, timeout=5)
        port = endpoint_pb2.ClusterLoadAssignment.FromString(got.resources[0].value)
        assert port.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 82
        assert harness_metric(services, "xdsd_xds_send_wait_seconds_count") == 0
        services._send_slots.release()
        call.cancel()


def harness_metric(services: XdsServices, name: str) -> float:
    return services.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_concurrent_streams", 0, "max concurrent streams"),
        ("max_pending_streams", 0, "max pending streams"),
    ],
)
def test_stream_limits_must_be_positive(field: str, value: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GrpcSettings(port=0, **{field: value})  # type: ignore[arg-type]


async def test_a_stream_does_not_hold_its_last_response_while_it_waits(harness: Harness) -> None:
    """A response can be megabytes and thousands of streams wait between pushes: once
    written, nothing on the stream's side keeps it (it did, in two locals)."""
    import gc
    import tracemalloc

    big = cluster_pb2.Cluster(name="big", alt_stat_name="x" * (2 << 20))
    harness.provider.sets[CLUSTER] = ResourceSet.of(
        CLUSTER, [Resource.from_message("big", CLUSTER, big)]
    )
    harness.provider.ready.set()
    tracemalloc.start()
    try:
        call = harness.ads.StreamAggregatedResources()
        await call.write(sotw(CLUSTER))
        resp = await asyncio.wait_for(call.read(), 5)
        await call.write(sotw(CLUSTER, nonce=resp.nonce, version=resp.version_info, node=False))
        conn = next(iter(harness.services.connections.values()))
        for _ in range(500):  # the ACK handled: the stream waits for its next push
            if conn.states[CLUSTER].acked_nonce == resp.nonce:
                break
            await asyncio.sleep(0.01)
        assert conn.states[CLUSTER].acked_nonce == resp.nonce
        del resp
        gc.collect()
        held = [
            stat
            for stat in tracemalloc.take_snapshot().statistics("lineno")
            if stat.size >= 1 << 20 and stat.traceback[0].filename.endswith("cache/wire.py")
        ]
    finally:
        tracemalloc.stop()
    assert held == []
    call.cancel()
