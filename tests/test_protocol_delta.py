"""Delta (incremental) xDS protocol: tables of request/push steps and what must be sent.

Each scenario is a list of steps run against one `WatchState`: a request goes
through `on_delta_request` (and, when the verdict says so, `plan_delta` with
the decision's `force`), a push through `plan_delta` alone. Nonces are "n1",
"n2", ... numbering the replies actually sent. Resources are written as
{name: content}; changing the content changes the resource version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, Resource, ResourceSet, content_hash
from xdsd.server.protocol import (
    DeltaReply,
    DeltaRequest,
    Verdict,
    WatchState,
    mark_resend,
    on_delta_request,
    plan_delta,
)

UNKNOWN = "type.googleapis.com/example.Unknown"
NEW, ACK, NACK, STALE = Verdict.NEW, Verdict.ACK, Verdict.NACK, Verdict.STALE
SUB, UNSUB = Verdict.SUBSCRIBE, Verdict.UNSUBSCRIBE


def rset(type_url: str, contents: Mapping[str, str]) -> ResourceSet:
    return ResourceSet.of(
        type_url, (Resource.from_bytes(n, type_url, c.encode()) for n, c in contents.items())
    )


def v(content: str) -> str:
    """The version a resource with this content has."""
    return content_hash(content.encode())


@dataclass(frozen=True)
class Out:
    """An expected reply: sent resource names and removed names (both sorted)."""

    sent: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    out: Out | None  # None: no reply
    request: DeltaRequest | None = None
    verdict: Verdict | None = None
    resources: Mapping[str, str] | None = None  # replaces the resources before the step
    resend: frozenset[str] | bool | None = False  # False: no mark_resend


@dataclass
class Run:
    type_url: str
    resources: ResourceSet
    state: WatchState | None = None
    replies: list[DeltaReply] = field(default_factory=list)

    @property
    def watch(self) -> WatchState:
        assert self.state is not None
        return self.state


def req(
    *subscribe: str,
    unsub: tuple[str, ...] = (),
    nonce: str = "",
    initial: Mapping[str, str] | None = None,
    error: tuple[int, str] | None = None,
    verdict: Verdict,
    out: Out | None = None,
) -> Step:
    request = DeltaRequest(
        "",
        subscribe=subscribe,
        unsubscribe=unsub,
        initial_versions=dict(initial or {}),
        nonce=nonce,
        error=error,
    )
    return Step(out=out, request=request, verdict=verdict)


def ack(nonce: str, verdict: Verdict = ACK) -> Step:
    return req(nonce=nonce, verdict=verdict)


def nack(nonce: str) -> Step:
    return req(nonce=nonce, error=(3, "rejected"), verdict=NACK)


def push(resources: Mapping[str, str] | None = None, *, out: Out | None) -> Step:
    return Step(out=out, resources=resources)


def resend(names: frozenset[str] | None = None, *, out: Out | None) -> Step:
    return Step(out=out, resend=names)


def sent(*names: str) -> Out:
    return Out(sent=names)


def removed(*names: str) -> Out:
    return Out(removed=names)


def run(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> Run:
    r = Run(type_url, rset(type_url, initial) if type_url != UNKNOWN else ResourceSet(UNKNOWN))
    for i, step in enumerate(steps):
        if step.resources is not None:
            r.resources = rset(type_url, step.resources)
        force: frozenset[str] | None = frozenset()
        if step.request is not None:
            q = step.request
            request = DeltaRequest(
                type_url, q.subscribe, q.unsubscribe, q.initial_versions, q.nonce, q.error
            )
            r.state, decision = on_delta_request(r.state, request)
            assert decision.verdict is step.verdict, f"step {i}: {decision.verdict}"
            if not decision.respond:
                assert step.out is None, f"step {i}: expected a reply, verdict {decision.verdict}"
                continue
            force = decision.force
        elif step.resend is not False:
            assert step.resend is None or isinstance(step.resend, frozenset)
            r.state = mark_resend(r.watch, step.resend)
        nonce = f"n{len(r.replies) + 1}"
        r.state, reply = plan_delta(r.watch, r.resources, nonce=nonce, force=force)
        if step.out is None:
            assert reply is None, f"step {i}: unexpected reply {reply}"
            continue
        assert reply is not None, f"step {i}: expected {step.out}, got no reply"
        got = Out(tuple(sorted(x.name for x in reply.resources)), tuple(sorted(reply.removed)))
        assert got == step.out, f"step {i}"
        assert not set(got.sent) & set(got.removed)
        assert r.watch.nonce == nonce
        for res in reply.resources:
            assert r.resources.get(res.name) is res
            assert r.watch.sent[res.name] == res.version
        for name in reply.removed:
            assert name not in r.watch.sent
        r.replies.append(reply)
    return r


AB = {"a": "1", "b": "1"}
ABC = {"a": "1", "b": "1", "c": "1"}

# Wildcard subscriptions (CDS/LDS as Envoy uses them).
WILDCARD_SCENARIOS: dict[str, tuple[Mapping[str, str], list[Step]]] = {
    "legacy-wildcard-sends-all": (ABC, [req(verdict=NEW, out=sent("a", "b", "c"))]),
    "explicit-wildcard-sends-all": (ABC, [req("*", verdict=NEW, out=sent("a", "b", "c"))]),
    "first-response-sent-even-if-empty": ({}, [req(verdict=NEW, out=Out())]),
    "ack-sends-nothing": (AB, [req(verdict=NEW, out=sent("a", "b")), ack("n1"), push(out=None)]),
    "push-sends-only-changed-and-new": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            ack("n1"),
            push({"a": "1", "b": "2", "c": "1"}, out=sent("b", "c")),
        ],
    ),
    "deletion-sends-removed": (
        ABC,
        [
            req(verdict=NEW, out=sent("a", "b", "c")),
            ack("n1"),
            push({"b": "1"}, out=removed("a", "c")),
        ],
    ),
    "change-and-deletion-in-one-reply": (
        AB,
        [req(verdict=NEW, out=sent("a", "b")), push({"b": "2"}, out=Out(("b",), ("a",)))],
    ),
    "nack-not-resent-until-content-changes": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            ack("n1"),
            push({"a": "2", "b": "1"}, out=sent("a")),
            nack("n2"),
            push(out=None),
            push({"a": "2", "b": "1"}, out=None),
            push({"a": "3", "b": "1"}, out=sent("a")),
            ack("n3"),
        ],
    ),
    "stale-nonce-without-changes-ignored": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            push({"a": "2", "b": "1"}, out=sent("a")),
            ack("n1", verdict=STALE),
            req(nonce="n1", error=(3, "old"), verdict=STALE),
            push(out=None),
        ],
    ),
    "reconnect-sends-only-what-differs": (
        ABC,
        [
            req(
                initial={"a": v("1"), "b": "old", "z": v("1")},
                verdict=NEW,
                out=Out(("b", "c"), ("z",)),
            )
        ],
    ),
    "reconnect-all-unchanged-sends-empty-first-reply": (
        AB,
        [req(initial={"a": v("1"), "b": v("1")}, verdict=NEW, out=Out()), push(out=None)],
    ),
    "reconnect-with-explicit-wildcard": (
        AB,
        [req("*", initial={"a": v("1"), "gone": "x"}, verdict=NEW, out=Out(("b",), ("gone",)))],
    ),
    "named-on-top-of-wildcard-is-sent-again": (
        AB,
        [req(verdict=NEW, out=sent("a", "b")), req("a", verdict=SUB, out=sent("a"))],
    ),
    "named-missing-on-top-of-wildcard-reported-removed": (
        AB,
        [req(verdict=NEW, out=sent("a", "b")), req("x", verdict=SUB, out=removed("x"))],
    ),
    "unsubscribe-wildcard-keeps-named-only": (
        ABC,
        [
            req(verdict=NEW, out=sent("a", "b", "c")),
            req("a", verdict=SUB, out=sent("a")),
            req(unsub=("*",), verdict=UNSUB),
            push({"a": "1", "b": "2", "c": "2", "d": "1"}, out=None),
            push({"a": "2", "b": "2"}, out=sent("a")),
        ],
    ),
    "unsubscribe-everything-then-nothing-is-sent": (
        AB,
        [
            req("*", "a", verdict=NEW, out=sent("a", "b")),
            req(unsub=("*", "a"), verdict=UNSUB),
            push({"a": "2", "b": "2", "c": "1"}, out=None),
        ],
    ),
    "resubscribe-wildcard-sends-all-again": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            req(unsub=("*",), verdict=UNSUB),
            req("*", verdict=SUB, out=sent("a", "b")),
        ],
    ),
    # The client cannot know whether an explicitly named resource is also in the
    # wildcard: the server must answer an unsubscription of it (xDS protocol,
    # "Unsubscribing from Resources").
    "unsubscribe-named-under-wildcard-is-answered": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            req("a", verdict=SUB, out=sent("a")),
            req(unsub=("a",), verdict=SUB, out=sent("a")),
        ],
    ),
    "unsubscribe-missing-named-under-wildcard-is-answered": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            req("x", verdict=SUB, out=removed("x")),
            req(unsub=("x",), verdict=SUB, out=removed("x")),
        ],
    ),
    "phantom-unsubscribe-under-wildcard-ignored": (
        AB,
        [req(verdict=NEW, out=sent("a", "b")), req(unsub=("zzz",), verdict=UNSUB), push(out=None)],
    ),
    # "a" came with the wildcard, never by name: the proxy still holds it.
    "phantom-unsubscribe-of-held-resource-keeps-tracking-it": (
        AB,
        [
            req(verdict=NEW, out=sent("a", "b")),
            req(unsub=("a",), verdict=UNSUB),
            push(out=None),
            push({"b": "1"}, out=removed("a")),
        ],
    ),
    "mark-resend-sends-everything": (
        AB,
        [req(verdict=NEW, out=sent("a", "b")), ack("n1"), resend(None, out=sent("a", "b"))],
    ),
}


@pytest.mark.parametrize("type_url", [CLUSTER, LISTENER], ids=["cds", "lds"])
@pytest.mark.parametrize(
    ("initial", "steps"), list(WILDCARD_SCENARIOS.values()), ids=list(WILDCARD_SCENARIOS)
)
def test_wildcard(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> None:
    run(type_url, initial, steps)


# Named subscriptions (EDS/RDS, or on-demand CDS).
NAMED_SCENARIOS: dict[str, tuple[Mapping[str, str], list[Step]]] = {
    "first-request-sends-named-only": (ABC, [req("a", "b", verdict=NEW, out=sent("a", "b"))]),
    "first-request-for-missing-name-reports-removed": (
        AB,
        [req("x", verdict=NEW, out=removed("x")), push(out=None)],
    ),
    "first-request-without-names-sends-empty-reply": (AB, [req(verdict=NEW, out=Out())]),
    "push-sends-only-changed": (
        ABC,
        [
            req("a", "b", verdict=NEW, out=sent("a", "b")),
            ack("n1"),
            push({"a": "1", "b": "2", "c": "2"}, out=sent("b")),
        ],
    ),
    "deletion-sends-removed": (
        AB,
        [req("a", "b", verdict=NEW, out=sent("a", "b")), push({"b": "1"}, out=removed("a"))],
    ),
    "missing-resource-sent-when-it-appears": (
        AB,
        [req("x", verdict=NEW, out=removed("x")), push({"x": "1"}, out=sent("x"))],
    ),
    "subscribe-sends-new-names": (
        ABC,
        [
            req("a", verdict=NEW, out=sent("a")),
            ack("n1"),
            req("b", "c", verdict=SUB, out=sent("b", "c")),
        ],
    ),
    "subscribe-with-stale-nonce-still-applies": (
        ABC,
        [
            req("a", verdict=NEW, out=sent("a")),
            push({"a": "2", "b": "1", "c": "1"}, out=sent("a")),
            req("b", nonce="n1", verdict=SUB, out=sent("b")),
        ],
    ),
    "subscribe-with-nack-still-applies": (
        AB,
        [
            req("a", verdict=NEW, out=sent("a")),
            req("b", nonce="n1", error=(3, "bad a"), verdict=SUB, out=sent("b")),
        ],
    ),
    "unsubscribe-with-stale-nonce-still-applies": (
        AB,
        [
            req("a", "b", verdict=NEW, out=sent("a", "b")),
            push({"a": "2", "b": "1"}, out=sent("a")),
            req(unsub=("b",), nonce="n1", verdict=STALE),
            push({"a": "2", "b": "2"}, out=None),
        ],
    ),
    "unsubscribe-sends-nothing-now-or-later": (
        AB,
        [
            req("a", "b", verdict=NEW, out=sent("a", "b")),
            req(unsub=("b",), verdict=UNSUB),
            push({"a": "1", "b": "2"}, out=None),
            push({"a": "1"}, out=None),
        ],
    ),
    # "the server must still provide those resources" (Subscribing to Resources).
    "resubscribe-already-subscribed-resends": (
        AB,
        [req("a", verdict=NEW, out=sent("a")), ack("n1"), req("a", verdict=SUB, out=sent("a"))],
    ),
    "resubscribe-after-unsubscribe-resends": (
        AB,
        [
            req("a", verdict=NEW, out=sent("a")),
            req(unsub=("a",), verdict=UNSUB),
            req("a", verdict=SUB, out=sent("a")),
        ],
    ),
    "subscribe-and-unsubscribe-in-one-request": (
        AB,
        [req("a", verdict=NEW, out=sent("a")), req("b", unsub=("a",), verdict=SUB, out=sent("b"))],
    ),
    "phantom-unsubscribe-ignored": (
        AB,
        [req("a", verdict=NEW, out=sent("a")), req(unsub=("zzz",), verdict=UNSUB)],
    ),
    "reconnect-unchanged-not-resent-changed-resent-missing-removed": (
        ABC,
        [
            req(
                "a",
                "b",
                "x",
                initial={"a": v("1"), "b": "stale", "x": "old"},
                verdict=NEW,
                out=Out(("b",), ("x",)),
            ),
            push(out=None),
        ],
    ),
    "nack-not-resent-until-content-changes": (
        AB,
        [
            req("a", verdict=NEW, out=sent("a")),
            push({"a": "2", "b": "1"}, out=sent("a")),
            nack("n2"),
            push(out=None),
            push({"a": "2", "b": "9"}, out=None),
            push({"a": "3", "b": "9"}, out=sent("a")),
            ack("n3"),
        ],
    ),
    "mark-resend-all": (
        ABC,
        [
            req("a", "b", verdict=NEW, out=sent("a", "b")),
            ack("n1"),
            resend(None, out=sent("a", "b")),
            push(out=None),
        ],
    ),
    "mark-resend-named-includes-missing": (
        AB,
        [
            req("a", "x", verdict=NEW, out=Out(("a",), ("x",))),
            resend(frozenset({"a", "x"}), out=Out(("a",), ("x",))),
        ],
    ),
    "unicode-names": (
        {"ü/ñ": "1", "日本": "1"},
        [req("ü/ñ", "日本", verdict=NEW, out=sent("ü/ñ", "日本"))],
    ),
}


@pytest.mark.parametrize("type_url", [ENDPOINT, CLUSTER], ids=["eds", "cds-on-demand"])
@pytest.mark.parametrize(
    ("initial", "steps"), list(NAMED_SCENARIOS.values()), ids=list(NAMED_SCENARIOS)
)
def test_named(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> None:
    if type_url == CLUSTER and steps[0].request is not None and not steps[0].request.subscribe:
        pytest.skip("no names on CDS is the legacy wildcard")
    run(type_url, initial, steps)


@pytest.mark.parametrize(
    "subscribe", [(), ("anything",), ("*",)], ids=["no-names", "named", "wildcard"]
)
def test_unknown_type_answered_without_error(subscribe: tuple[str, ...]) -> None:
    r = Run(UNKNOWN, ResourceSet(UNKNOWN))
    state, decision = on_delta_request(None, DeltaRequest(UNKNOWN, subscribe=subscribe))
    assert decision.respond
    state, reply = plan_delta(state, r.resources, nonce="n1", force=decision.force)
    assert reply is not None and not reply.resources
    assert reply.removed == tuple(n for n in subscribe if n != "*")
    state, decision = on_delta_request(state, DeltaRequest(UNKNOWN, nonce="n1"))
    assert decision.verdict is ACK and state.acked


def test_nack_recorded_and_cleared_by_ack() -> None:
    r = run(ENDPOINT, AB, [req("a", verdict=NEW, out=sent("a")), push({"a": "2"}, out=sent("a"))])
    rejected = r.watch.version
    state, decision = on_delta_request(
        r.watch, DeltaRequest(ENDPOINT, nonce="n2", error=(13, "bad endpoint"))
    )
    assert decision.verdict is NACK and not decision.respond
    assert state.nack is not None
    assert (state.nack.nonce, state.nack.version, state.nack.code, state.nack.message) == (
        "n2",
        rejected,
        13,
        "bad endpoint",
    )
    assert state.nacks == 1 and not state.acked
    state, reply = plan_delta(state, rset(ENDPOINT, {"a": "3"}), nonce="n3")
    assert reply is not None
    state, decision = on_delta_request(state, DeltaRequest(ENDPOINT, nonce="n3"))
    assert decision.verdict is ACK
    assert state.nack is None and state.nacks == 1 and state.acked and state.acked_nonce == "n3"


def test_stale_nack_is_not_recorded() -> None:
    r = run(ENDPOINT, AB, [req("a", verdict=NEW, out=sent("a")), push({"a": "2"}, out=sent("a"))])
    state, decision = on_delta_request(r.watch, DeltaRequest(ENDPOINT, nonce="n1", error=(3, "x")))
    assert decision.verdict is STALE and state.nack is None and state.nacks == 0


def test_reconnect_state_holds_initial_versions() -> None:
    initial = {"a": v("1"), "b": "old"}
    state, decision = on_delta_request(
        None, DeltaRequest(CLUSTER, subscribe=("*",), initial_versions=initial)
    )
    assert decision.verdict is NEW and decision.force is None
    assert state.wildcard and dict(state.sent) == initial
    state, reply = plan_delta(state, rset(CLUSTER, AB), nonce="n1", force=decision.force)
    assert reply is not None and [x.name for x in reply.resources] == ["b"]
    assert dict(state.sent) == {"a": v("1"), "b": v("1")}
