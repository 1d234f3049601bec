"""A stream that held exactly a set and is sent that set's changes shares the set's own
name -> version map (no copy per stream); whenever it would then hold something else,
it gets a map of its own that says exactly what it holds."""

from __future__ import annotations

from xdsd.cache.resources import ENDPOINT, Resource, ResourceSet
from xdsd.server.protocol import (
    DeltaRequest,
    SotwRequest,
    WatchState,
    on_delta_request,
    on_sotw_request,
    plan_delta,
    plan_sotw,
)


def res(name: str, content: str) -> Resource:
    return Resource.from_bytes(name, ENDPOINT, content.encode())


def in_sync_sotw(names: tuple[str, ...], s: ResourceSet) -> WatchState:
    state, _ = on_sotw_request(None, SotwRequest(ENDPOINT, names=names))
    state, _ = plan_sotw(state, s, nonce="n1", force=None)
    assert state.sent is s.versions
    return state


def test_sotw_changes_of_held_names_share_the_new_sets_map() -> None:
    s1 = ResourceSet.of(ENDPOINT, [res("a", "1"), res("b", "1")])
    state = in_sync_sotw(("a", "b"), s1)
    s2 = s1.patched([res("a", "2")])
    state, reply = plan_sotw(state, s2, nonce="n2", only=s2.changed)
    assert reply is not None and [r.name for r in reply.resources] == ["a"]
    assert state.sent is s2.versions


def test_sotw_a_new_name_not_subscribed_is_not_held() -> None:
    s1 = ResourceSet.of(ENDPOINT, [res("a", "1"), res("b", "1")])
    state = in_sync_sotw(("a", "b"), s1)
    s2 = s1.patched([res("a", "2"), res("c", "1")])
    state, reply = plan_sotw(state, s2, nonce="n2", only=s2.changed)
    assert reply is not None and [r.name for r in reply.resources] == ["a"]
    assert dict(state.sent) == {"a": s2.versions["a"], "b": s2.versions["b"]}


def test_sotw_a_removed_name_stays_held() -> None:
    # SotW EDS: a proxy keeps an assignment the response does not mention.
    s1 = ResourceSet.of(ENDPOINT, [res("a", "1"), res("b", "1")])
    state = in_sync_sotw(("a", "b"), s1)
    s2 = s1.patched([res("a", "2")], removed=["b"])
    state, _ = plan_sotw(state, s2, nonce="n2", only=s2.changed)
    assert dict(state.sent) == {"a": s2.versions["a"], "b": s1.versions["b"]}


def test_delta_changes_share_the_map_and_removals_do_not() -> None:
    s1 = ResourceSet.of(ENDPOINT, [res("a", "1"), res("b", "1")])
    state, _ = on_delta_request(None, DeltaRequest(ENDPOINT, subscribe=("a", "b")))
    state, _ = plan_delta(state, s1, nonce="n1", force=None)
    assert state.sent is s1.versions
    s2 = s1.patched([res("a", "2")])
    state, reply = plan_delta(state, s2, nonce="n2", only=s2.changed)
    assert reply is not None and [r.name for r in reply.resources] == ["a"]
    assert state.sent is s2.versions
    s3 = s2.patched([res("c", "1")], removed=["b"])
    state, reply = plan_delta(state, s3, nonce="n3", only=s3.changed)
    assert reply is not None and reply.removed == ("b",) and not reply.resources
    assert dict(state.sent) == {"a": s2.versions["a"]}
