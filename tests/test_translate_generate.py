"""The public API: generators by type URL, sorted output, determinism, group keys."""

from __future__ import annotations

import random

from tests.envoy_static import sample_mesh, sidecar, snapshot, workload
from xdsd.cache import resources as cache_types
from xdsd.model.proxy import InterceptionMode
from xdsd.translate.generate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    GENERATORS,
    LISTENER_TYPE,
    ROUTE_TYPE,
    eds_cluster_names,
    generate_all,
    group_key,
    proxy_context,
)


def serialized(snap, proxy) -> dict[str, list[tuple[str, bytes]]]:  # type: ignore[no-untyped-def]
    return {
        t: [(n, m.SerializeToString(deterministic=True)) for n, m in items]
        for t, items in generate_all(snap, proxy).items()
    }


def test_type_urls_are_the_cache_ones() -> None:
    assert CLUSTER_TYPE == cache_types.CLUSTER
    assert ENDPOINT_TYPE == cache_types.ENDPOINT
    assert LISTENER_TYPE == cache_types.LISTENER
    assert ROUTE_TYPE == cache_types.ROUTE
    assert set(GENERATORS) >= {CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    assert GENERATORS[cache_types.SECRET](proxy_context(sample_mesh(), sidecar())) == []


def test_output_sorted_by_name_and_names_unique() -> None:
    for items in generate_all(sample_mesh(), sidecar()).values():
        names = [n for n, _ in items]
        assert names == sorted(names)
        assert len(names) == len(set(names))


def test_resource_names_match_message_names() -> None:
    res = generate_all(sample_mesh(), sidecar())
    for t in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        for name, msg in res[t]:
            assert msg.name == name  # type: ignore[attr-defined]
    for name, msg in res[ENDPOINT_TYPE]:
        assert msg.cluster_name == name  # type: ignore[attr-defined]


def test_every_referenced_cluster_and_route_exists() -> None:
    """Routes and TCP proxies only point at generated clusters; HCMs at generated routes."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    for mode in (InterceptionMode.REDIRECT, InterceptionMode.NONE):
        res = generate_all(sample_mesh(), sidecar(mode=mode))
        clusters = {n for n, _ in res[CLUSTER_TYPE]}
        routes = dict(res[ROUTE_TYPE])
        used_routes = set()
        targets = set()
        for _, rc in routes.items():
            for vh in rc.virtual_hosts:  # type: ignore[attr-defined]
                targets.update(r.route.cluster for r in vh.routes if r.HasField("route"))
        for _, ls in res[LISTENER_TYPE]:
            chains = list(ls.filter_chains)  # type: ignore[attr-defined]
            if ls.HasField("default_filter_chain"):  # type: ignore[attr-defined]
                chains.append(ls.default_filter_chain)  # type: ignore[attr-defined]
            for ch in chains:
                for f in ch.filters:
                    if f.typed_config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR):
                        tp = tcp_proxy_pb2.TcpProxy()
                        f.typed_config.Unpack(tp)
                        targets.add(tp.cluster)
                    else:
                        h = hcm_pb2.HttpConnectionManager()
                        f.typed_config.Unpack(h)
                        if h.HasField("rds"):
                            used_routes.add(h.rds.route_config_name)
                        for vh in h.route_config.virtual_hosts:
                            targets.update(r.route.cluster for r in vh.routes)
        assert targets <= clusters, targets - clusters
        assert used_routes == set(routes), (mode, used_routes ^ set(routes))
        assert set(eds_cluster_names(proxy_context(sample_mesh(), sidecar(mode=mode)))) == {
            n for n, _ in res[ENDPOINT_TYPE]
        }


def test_deterministic_across_runs_and_input_order() -> None:
    snap = sample_mesh()
    first = serialized(snap, sidecar())
    assert serialized(snap, sidecar()) == first
    # The same mesh with services and workloads listed in another order.
    shuffled = list(snap.services)
    random.Random(7).shuffle(shuffled)
    again = snapshot(
        shuffled,
        [
            (s, port, eps)
            for s in snap.services
            for (key, port), eps in snap.endpoints.items()
            if key == (s.hostname, s.namespace)
        ],
        list(reversed(snap.workloads)),
    )
    assert serialized(again, sidecar()) == first


def test_equal_group_keys_give_identical_bytes() -> None:
    snap = sample_mesh()
    extra = workload(
        "reviews-v1-def", "default", "10.1.0.8", {"app": "reviews"}, **{"http-app": 9081}
    )
    snap = snapshot(
        list(snap.services),
        [
            (s, port, eps)
            for s in snap.services
            for (key, port), eps in snap.endpoints.items()
            if key == (s.hostname, s.namespace)
        ],
        [*snap.workloads, extra],
    )
    a, b = sidecar("10.1.0.5", pod="reviews-v1-abc"), sidecar("10.1.0.8", pod="reviews-v1-def")
    ka, kb = group_key(proxy_context(snap, a)), group_key(proxy_context(snap, b))
    assert ka == kb and hash(ka) == hash(kb)
    assert serialized(snap, a) == serialized(snap, b)


def test_group_keys_differ_when_output_differs() -> None:
    snap = sample_mesh()
    keys = {
        group_key(proxy_context(snap, p))
        for p in (
            sidecar(),  # reviews pod: inbound ports
            sidecar("10.9.9.9"),  # no workload: no inbound
            sidecar(mode=InterceptionMode.NONE),
            sidecar("10.2.0.7", "other"),
            sidecar("fd00::5"),
        )
    }
    assert len(keys) == 5
    assert serialized(snap, sidecar()) != serialized(snap, sidecar("10.9.9.9"))
