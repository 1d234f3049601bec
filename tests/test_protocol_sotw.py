"""State-of-the-world xDS protocol: tables of request/push steps and what must be sent.

Each scenario is a list of steps run against one `WatchState`: a request goes
through `on_sotw_request` (and, when the verdict says so, `plan_sotw` with the
decision's `force`), a push through `plan_sotw` alone. Nonces are "n1", "n2",
... numbering the replies actually sent, so a request can answer "n2".
Resources are written as {name: content}; changing the content changes the
resource version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, ResourceSet
from xdsd.server.protocol import (
    SotwReply,
    SotwRequest,
    Verdict,
    WatchState,
    mark_resend,
    on_sotw_request,
    plan_sotw,
)

UNKNOWN = "type.googleapis.com/example.Unknown"
NO_REPLY = None


def rset(type_url: str, contents: Mapping[str, str]) -> ResourceSet:
    return ResourceSet.of(
        type_url, (Resource.from_bytes(n, type_url, c.encode()) for n, c in contents.items())
    )


@dataclass(frozen=True)
class Step:
    """A request (`request` set), a push, or a forced resend (`resend` set)."""

    sent: tuple[str, ...] | None  # names in the reply, sorted; None: no reply
    request: SotwRequest | None = None
    verdict: Verdict | None = None
    resources: Mapping[str, str] | None = None  # replaces the resources before the step
    resend: frozenset[str] | bool | None = False  # False: no mark_resend


@dataclass
class Run:
    type_url: str
    resources: ResourceSet
    state: WatchState | None = None
    replies: list[SotwReply] = field(default_factory=list)

    @property
    def watch(self) -> WatchState:
        assert self.state is not None
        return self.state


def req(
    *names: str,
    nonce: str = "",
    version: str = "",
    error: tuple[int, str] | None = None,
    verdict: Verdict,
    sent: tuple[str, ...] | None = NO_REPLY,
) -> Step:
    return Step(
        sent=sent,
        request=SotwRequest("", version_info=version, names=names, nonce=nonce, error=error),
        verdict=verdict,
    )


def ack(
    nonce: str, *names: str, verdict: Verdict = Verdict.ACK, sent: tuple[str, ...] | None = NO_REPLY
) -> Step:
    return req(*names, nonce=nonce, verdict=verdict, sent=sent)


def nack(nonce: str, *names: str) -> Step:
    return req(*names, nonce=nonce, error=(3, "rejected"), verdict=Verdict.NACK)


def push(resources: Mapping[str, str] | None = None, *, sent: tuple[str, ...] | None) -> Step:
    return Step(sent=sent, resources=resources)


def resend(names: frozenset[str] | None = None, *, sent: tuple[str, ...] | None) -> Step:
    return Step(sent=sent, resend=names)


def run(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> Run:
    r = Run(type_url, rset(type_url, initial) if type_url != UNKNOWN else ResourceSet(UNKNOWN))
    for i, step in enumerate(steps):
        if step.resources is not None:
            r.resources = rset(type_url, step.resources)
        force: frozenset[str] | None = frozenset()
        if step.request is not None:
            request = SotwRequest(
                type_url,
                version_info=step.request.version_info,
                names=step.request.names,
                nonce=step.request.nonce,
                error=step.request.error,
            )
            r.state, decision = on_sotw_request(r.state, request)
            assert decision.verdict is step.verdict, f"step {i}: {decision.verdict}"
            if not decision.respond:
                assert step.sent is None, f"step {i}: expected a reply, verdict {decision.verdict}"
                continue
            force = decision.force
        elif step.resend is not False:
            assert step.resend is None or isinstance(step.resend, frozenset)
            r.state = mark_resend(r.watch, step.resend)
        nonce = f"n{len(r.replies) + 1}"
        r.state, reply = plan_sotw(r.watch, r.resources, nonce=nonce, force=force)
        if step.sent is None:
            assert reply is None, f"step {i}: unexpected reply {[x.name for x in reply.resources]}"
            continue
        assert reply is not None, f"step {i}: expected {step.sent}, got no reply"
        assert tuple(sorted(x.name for x in reply.resources)) == step.sent, f"step {i}"
        assert len({x.name for x in reply.resources}) == len(reply.resources), "duplicate names"
        assert reply.version == r.resources.version
        assert r.watch.nonce == nonce and r.watch.version == reply.version
        for res in reply.resources:
            assert r.resources.get(res.name) is res
        r.replies.append(reply)
    return r


AB = {"a": "1", "b": "1"}
ABC = {"a": "1", "b": "1", "c": "1"}
NEW, ACK, NACK, STALE = Verdict.NEW, Verdict.ACK, Verdict.NACK, Verdict.STALE
SUB, UNSUB = Verdict.SUBSCRIBE, Verdict.UNSUBSCRIBE

# Types sent by name (EDS/RDS): only named resources, only what changed.
NAMED_SCENARIOS: dict[str, tuple[Mapping[str, str], list[Step]]] = {
    "first-request-sends-named-only": (ABC, [req("a", "b", verdict=NEW, sent=("a", "b"))]),
    "ack-sends-nothing": (
        AB,
        [req("a", "b", verdict=NEW, sent=("a", "b")), ack("n1", "a", "b"), push(sent=None)],
    ),
    "push-sends-only-changed": (
        ABC,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            push({"a": "1", "b": "2", "c": "2"}, sent=("b",)),
        ],
    ),
    "unsubscribed-change-not-sent": (
        ABC,
        [req("a", verdict=NEW, sent=("a",)), push({"a": "1", "b": "1", "c": "9"}, sent=None)],
    ),
    "nack-not-resent-until-content-changes": (
        AB,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            push({"a": "2", "b": "1"}, sent=("a",)),
            nack("n2", "a", "b"),
            push(sent=None),
            push({"a": "2", "b": "1"}, sent=None),
            push({"a": "3", "b": "1"}, sent=("a",)),
            ack("n3", "a", "b"),
        ],
    ),
    "stale-nonce-ignored-even-with-new-names": (
        ABC,
        [
            req("a", verdict=NEW, sent=("a",)),
            push({"a": "2", "b": "1", "c": "1"}, sent=("a",)),
            ack("n1", "a", "b", verdict=STALE),
            req("a", nonce="n1", error=(3, "old"), verdict=STALE),  # a stale NACK too
        ],
    ),
    "subscribe-sends-only-new-names": (
        ABC,
        [
            req("a", verdict=NEW, sent=("a",)),
            ack("n1", "a", "b", "c", verdict=SUB, sent=("b", "c")),
            ack("n2", "a", "b", "c"),
        ],
    ),
    "unsubscribe-sends-nothing": (
        ABC,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", verdict=UNSUB),
            push({"a": "1", "b": "2", "c": "1"}, sent=None),
        ],
    ),
    "resubscribe-resends-unchanged": (
        AB,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", verdict=UNSUB),
            ack("n1", "a", "b", verdict=SUB, sent=("b",)),
        ],
    ),
    "swap-names-sends-the-new-one": (
        AB,
        [req("a", verdict=NEW, sent=("a",)), ack("n1", "b", verdict=SUB, sent=("b",))],
    ),
    "first-response-sent-even-if-empty": (AB, [req("missing", verdict=NEW, sent=())]),
    "missing-resource-sent-when-it-appears": (
        AB,
        [
            req("x", verdict=NEW, sent=()),
            ack("n1", "x"),
            push(AB, sent=None),
            push({"x": "1"}, sent=("x",)),
        ],
    ),
    "subscribing-to-missing-name-sends-nothing": (
        AB,
        [req("a", verdict=NEW, sent=("a",)), ack("n1", "a", "x", verdict=SUB, sent=None)],
    ),
    "empty-nonce-on-open-stream-resends-all": (
        AB,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            req("a", "b", version="n1-version", verdict=NEW, sent=("a", "b")),
        ],
    ),
    "mark-resend-all-sends-unchanged": (
        AB,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            resend(None, sent=("a", "b")),
            ack("n2", "a", "b"),
            push(sent=None),
        ],
    ),
    "mark-resend-named": (
        ABC,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            resend(frozenset({"b", "c"}), sent=("b",)),
        ],
    ),
    "mark-resend-with-nothing-present-is-cleared": (
        AB,
        [
            req("x", verdict=NEW, sent=()),
            resend(None, sent=None),
            push(sent=None),
        ],
    ),
    "unicode-and-empty-names": (
        {"ü/ñ": "1", "": "1"},
        [req("ü/ñ", "", verdict=NEW, sent=("", "ü/ñ"))],
    ),
}


@pytest.mark.parametrize("type_url", [ENDPOINT, ROUTE], ids=["eds", "rds"])
@pytest.mark.parametrize(
    ("initial", "steps"), list(NAMED_SCENARIOS.values()), ids=list(NAMED_SCENARIOS)
)
def test_named_types(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> None:
    run(type_url, initial, steps)


# CDS/LDS: every response carries every subscribed resource (absence = deletion).
FULL_SET_SCENARIOS: dict[str, tuple[Mapping[str, str], list[Step]]] = {
    "legacy-wildcard-sends-all": (ABC, [req(verdict=NEW, sent=("a", "b", "c"))]),
    "explicit-wildcard-sends-all": (ABC, [req("*", verdict=NEW, sent=("a", "b", "c"))]),
    "change-resends-full-set": (
        ABC,
        [
            req(verdict=NEW, sent=("a", "b", "c")),
            ack("n1"),
            push({"a": "1", "b": "2", "c": "1"}, sent=("a", "b", "c")),
        ],
    ),
    "deletion-sends-set-without-it": (
        ABC,
        [req(verdict=NEW, sent=("a", "b", "c")), ack("n1"), push(AB, sent=("a", "b"))],
    ),
    "delete-everything-sends-empty": (
        AB,
        [req(verdict=NEW, sent=("a", "b")), ack("n1"), push({}, sent=())],
    ),
    "same-content-sends-nothing": (
        AB,
        [req(verdict=NEW, sent=("a", "b")), ack("n1"), push(dict(AB), sent=None)],
    ),
    "first-response-sent-even-if-empty": ({}, [req(verdict=NEW, sent=())]),
    "nack-not-resent-until-content-changes": (
        AB,
        [
            req(verdict=NEW, sent=("a", "b")),
            ack("n1"),
            push({"a": "2", "b": "1"}, sent=("a", "b")),
            nack("n2"),
            push(sent=None),
            push({"a": "2", "b": "1"}, sent=None),
            push({"a": "3", "b": "1"}, sent=("a", "b")),
            ack("n3"),
        ],
    ),
    "stale-nonce-ignored": (
        AB,
        [
            req(verdict=NEW, sent=("a", "b")),
            push({"a": "2", "b": "1"}, sent=("a", "b")),
            ack("n1", verdict=STALE),
            req(nonce="n1", error=(3, "old"), verdict=STALE),
            ack("n2"),
        ],
    ),
    "wildcard-plus-name-stays-wildcard": (
        ABC,
        [
            req(verdict=NEW, sent=("a", "b", "c")),
            ack("n1", "*", "a", verdict=SUB, sent=("a", "b", "c")),
        ],
    ),
    # Non-wildcard subscriptions (gRPC clients) still get their full subscribed set.
    "named-subscription-sends-named-only": (ABC, [req("a", "b", verdict=NEW, sent=("a", "b"))]),
    "named-subscription-change-resends-all-named": (
        ABC,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            push({"a": "1", "b": "2", "c": "1"}, sent=("a", "b")),
            ack("n2", "a", "b"),
            push({"a": "1", "b": "2", "c": "2"}, sent=None),
        ],
    ),
    "named-subscription-deletion-sends-the-rest": (
        ABC,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            ack("n1", "a", "b"),
            push({"b": "1", "c": "1"}, sent=("b",)),
        ],
    ),
    "named-subscription-add-name-sends-full-set": (
        ABC,
        [req("a", verdict=NEW, sent=("a",)), ack("n1", "a", "b", verdict=SUB, sent=("a", "b"))],
    ),
    "named-subscription-nack-not-resent": (
        AB,
        [
            req("a", "b", verdict=NEW, sent=("a", "b")),
            push({"a": "2", "b": "1"}, sent=("a", "b")),
            nack("n2", "a", "b"),
            push(sent=None),
        ],
    ),
    "leaving-wildcard-for-names": (
        ABC,
        [
            req(verdict=NEW, sent=("a", "b", "c")),
            ack("n1", "*", "a", verdict=SUB, sent=("a", "b", "c")),
            ack("n2", "a", verdict=UNSUB),
            push({"a": "1", "b": "1", "c": "2"}, sent=None),
            push({"a": "2", "b": "1", "c": "2"}, sent=("a",)),
        ],
    ),
    # Legacy wildcard is only the meaning of "no names" until names were given.
    "empty-names-after-names-unsubscribes-all": (
        ABC,
        [
            req("a", verdict=NEW, sent=("a",)),
            ack("n1", verdict=UNSUB),
            push({"a": "2", "b": "2", "c": "2"}, sent=None),
        ],
    ),
    "empty-names-after-explicit-wildcard-unsubscribes-all": (
        AB,
        [
            req("*", verdict=NEW, sent=("a", "b")),
            ack("n1", verdict=UNSUB),
            push({"a": "2", "b": "2"}, sent=None),
        ],
    ),
    "empty-names-again-stays-legacy-wildcard": (
        AB,
        [req(verdict=NEW, sent=("a", "b")), ack("n1"), push({"a": "2", "b": "1"}, sent=("a", "b"))],
    ),
    "mark-resend-sends-full-set": (
        AB,
        [req(verdict=NEW, sent=("a", "b")), ack("n1"), resend(None, sent=("a", "b"))],
    ),
}


@pytest.mark.parametrize("type_url", [CLUSTER, LISTENER], ids=["cds", "lds"])
@pytest.mark.parametrize(
    ("initial", "steps"), list(FULL_SET_SCENARIOS.values()), ids=list(FULL_SET_SCENARIOS)
)
def test_full_set_types(type_url: str, initial: Mapping[str, str], steps: list[Step]) -> None:
    run(type_url, initial, steps)


@pytest.mark.parametrize(
    ("names", "sent"),
    [((), ()), (("anything",), ()), (("*",), ())],
    ids=["no-names", "named", "wildcard"],
)
def test_unknown_type_answered_with_empty_response(
    names: tuple[str, ...], sent: tuple[str, ...]
) -> None:
    r = run(UNKNOWN, {}, [req(*names, verdict=NEW, sent=sent), ack("n1", *names)])
    assert r.replies[0].version == ""
    assert r.watch.acked


def test_nack_is_recorded_with_code_message_and_version() -> None:
    r = run(ENDPOINT, AB, [req("a", verdict=NEW, sent=("a",)), push({"a": "2"}, sent=("a",))])
    rejected = r.replies[1].version
    state, decision = on_sotw_request(
        r.watch,
        SotwRequest(
            ENDPOINT,
            version_info=r.replies[0].version,
            names=("a",),
            nonce="n2",
            error=(13, "bad endpoint"),
        ),
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
    # A second NACK of the same nonce counts again and keeps the latest message.
    state, _ = on_sotw_request(
        state, SotwRequest(ENDPOINT, names=("a",), nonce="n2", error=(13, "again"))
    )
    assert state.nacks == 2 and state.nack is not None and state.nack.message == "again"
    # A later ACK clears the NACK but keeps the counter.
    state, reply = plan_sotw(state, rset(ENDPOINT, {"a": "3"}), nonce="n3")
    assert reply is not None
    state, decision = on_sotw_request(
        state, SotwRequest(ENDPOINT, version_info=reply.version, names=("a",), nonce="n3")
    )
    assert decision.verdict is ACK
    assert state.nack is None and state.nacks == 2
    assert state.acked and state.acked_version == reply.version and state.acked_nonce == "n3"


def test_stale_request_leaves_state_untouched() -> None:
    r = run(ENDPOINT, AB, [req("a", verdict=NEW, sent=("a",)), push({"a": "2"}, sent=("a",))])
    before = r.watch
    after, decision = on_sotw_request(
        before, SotwRequest(ENDPOINT, names=("b",), nonce="n1", error=(1, "x"))
    )
    assert decision.verdict is STALE and after is before


@pytest.mark.parametrize("type_url", [CLUSTER, ENDPOINT], ids=["cds", "eds"])
def test_reconnect_with_version_info_responds_in_full(type_url: str) -> None:
    names = () if type_url == CLUSTER else ("a", "b")
    first = run(type_url, AB, [req(*names, verdict=NEW, sent=("a", "b")), ack("n1", *names)])
    # A new stream: no state, the proxy says which version it has.
    version = first.replies[0].version
    state, decision = on_sotw_request(
        None, SotwRequest(type_url, version_info=version, names=names)
    )
    assert decision.verdict is NEW and decision.force is None
    assert state.acked_version == version and not state.sent
    state, reply = plan_sotw(state, rset(type_url, AB), nonce="x1", force=decision.force)
    assert reply is not None and {x.name for x in reply.resources} == {"a", "b"}
    assert reply.version == version  # same content, same version


def test_resend_flags_are_cleared_by_a_plan() -> None:
    r = run(ENDPOINT, AB, [req("a", "b", verdict=NEW, sent=("a", "b")), ack("n1", "a", "b")])
    state = mark_resend(mark_resend(r.watch, frozenset({"a"})), frozenset({"b"}))
    assert state.resend == {"a", "b"}
    state, reply = plan_sotw(state, r.resources, nonce="n2")
    assert reply is not None and [x.name for x in reply.resources] == ["a", "b"]
    assert not state.resend and not state.resend_all
    assert plan_sotw(state, r.resources, nonce="n3")[1] is None
