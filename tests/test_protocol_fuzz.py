"""Property tests: random request/push sequences never break the protocol state machine.

Every sequence is a list of steps on one stream and one type: SotW or Delta
requests with random (often malformed) nonces, names, errors and initial
versions, interleaved with resource changes and forced resends. After each
step the invariants below must hold. Random bytes fed to the request
decoders either fail to parse or become requests the state machine accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdsd.cache import wire
from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, WILDCARD_TYPES, Resource, ResourceSet
from xdsd.server import protocol as p
from xdsd.server.ads import _delta_request, _sotw_request, changed_since

UNKNOWN = "type.googleapis.com/example.Unknown"
TYPES = [CLUSTER, LISTENER, ENDPOINT, UNKNOWN]

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NAME_POOL = ["a", "b", "c", "*", "", "ü/ñ", "日本"]
names_st = st.lists(st.one_of(st.sampled_from(NAME_POOL), st.text(max_size=3)), max_size=4).map(
    tuple
)
resources_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "ü/ñ", ""]), st.sampled_from(["1", "2", "3"]), max_size=5
)
# LAST/PREV are resolved to the stream's last / an earlier nonce when the step runs.
nonce_st = st.one_of(
    st.just("LAST"),
    st.just("LAST"),
    st.sampled_from(["", "LAST", "PREV", "n0", "garbage"]),
    st.text(max_size=4),
)
error_st = st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 16), st.text(max_size=8)))
versions_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "z", "*"]),
    st.one_of(st.sampled_from(["", "old"]), st.text(max_size=3)),
    max_size=3,
)


@dataclass(frozen=True)
class Sotw:
    names: tuple[str, ...] | None  # None: the names of the previous request (an ACK)
    nonce: str
    version: str
    error: tuple[int, str] | None


@dataclass(frozen=True)
class Delta:
    subscribe: tuple[str, ...]
    unsubscribe: tuple[str, ...]
    initial: Mapping[str, str]
    nonce: str
    error: tuple[int, str] | None


@dataclass(frozen=True)
class Push:
    resources: Mapping[str, str]


@dataclass(frozen=True)
class Resend:
    names: frozenset[str] | None


Action = Sotw | Delta | Push | Resend

sotw_st = st.builds(
    Sotw, st.one_of(st.none(), st.none(), names_st), nonce_st, st.text(max_size=3), error_st
)
few_names_st = st.one_of(st.just(()), st.just(()), names_st)
delta_st = st.builds(Delta, few_names_st, few_names_st, versions_st, nonce_st, error_st)
push_st = st.builds(Push, resources_st)
resend_st = st.builds(
    Resend, st.one_of(st.none(), st.frozensets(st.sampled_from(["a", "b", "x"]), max_size=2))
)


def rset(type_url: str, contents: Mapping[str, str]) -> ResourceSet:
    if type_url == UNKNOWN:
        return ResourceSet(UNKNOWN)
    return ResourceSet.of(
        type_url, (Resource.from_bytes(n, type_url, c.encode()) for n, c in contents.items())
    )


class Stream:
    """Drives one stream's state and checks invariants after every step."""

    def __init__(self, type_url: str, delta: bool) -> None:
        self.type_url = type_url
        self.delta = delta
        self.state: p.WatchState | None = None
        self.resources = rset(type_url, {})
        self.nonces: list[str] = []
        self.initial_names: set[str] = set()
        self.last_names: tuple[str, ...] = ()
        # As the stream handler: the set last planned against, and interned resources
        # so that a push patches the previous set (ResourceSet.base / changed).
        self.planned: ResourceSet | None = None
        self.interned: dict[tuple[str, str], Resource] = {}

    def push(self, contents: Mapping[str, str]) -> ResourceSet:
        if self.type_url == UNKNOWN:
            return ResourceSet(UNKNOWN)
        new = []
        for name, content in contents.items():
            res = self.interned.get((name, content))
            if res is None:
                res = self.interned[(name, content)] = Resource.from_bytes(
                    name, self.type_url, content.encode()
                )
            new.append(res)
        gone = [n for n in self.resources.items if n not in contents]
        return self.resources.patched(new, gone)

    def resolve(self, token: str) -> str:
        if token == "LAST":
            return self.nonces[-1] if self.nonces else ""
        if token == "PREV":
            return self.nonces[-2] if len(self.nonces) > 1 else "n0"
        return token

    def step(self, action: Action) -> None:
        force: frozenset[str] | None = frozenset()
        if isinstance(action, Push):
            self.resources = self.push(action.resources)
            if self.state is None:
                return
        elif isinstance(action, Resend):
            if self.state is None:
                return
            self.state = p.mark_resend(self.state, action.names)
        elif isinstance(action, Sotw) and not self.delta:
            if action.names is not None:
                self.last_names = action.names
            req = p.SotwRequest(
                self.type_url,
                version_info=action.version,
                names=self.last_names,
                nonce=self.resolve(action.nonce),
                error=action.error,
            )
            before = self.state
            self.state, decision = p.on_sotw_request(before, req)
            self.check_decision(before, req.nonce, req.error, decision)
            if not decision.respond:
                self.check_idempotent()
                return
            force = decision.force
        elif isinstance(action, Delta) and self.delta:
            req_d = p.DeltaRequest(
                self.type_url,
                subscribe=action.subscribe,
                unsubscribe=action.unsubscribe,
                initial_versions=action.initial,
                nonce=self.resolve(action.nonce),
                error=action.error,
            )
            before = self.state
            if before is None:
                self.initial_names = set(action.initial)
            self.state, decision = p.on_delta_request(before, req_d)
            self.check_decision(before, req_d.nonce, req_d.error, decision)
            self.check_delta_subscription(before, req_d)
            if not decision.respond:
                self.check_idempotent()
                return
            force = decision.force
        else:
            return
        self.plan(force)
        self.check_idempotent()

    def plan(self, force: frozenset[str] | None) -> None:
        assert self.state is not None
        before = self.state
        nonce = f"n{len(self.nonces) + 1}"
        self.check_narrow(before, force, nonce)
        self.planned = self.resources
        dreply: p.DeltaReply | None = None
        sreply: p.SotwReply | None = None
        if self.delta:
            self.state, dreply = p.plan_delta(before, self.resources, nonce=nonce, force=force)
            replied = dreply is not None
            if dreply is not None:
                self.check_delta_reply(dreply)
        else:
            self.state, sreply = p.plan_sotw(before, self.resources, nonce=nonce, force=force)
            replied = sreply is not None
            if sreply is not None:
                self.check_sotw_reply(sreply)
        if self.delta and dreply is not None:
            # What the proxy holds now: what it held, minus removals, plus what was sent
            # (whether the map was copied or is the set's own shared one).
            held = {k: v for k, v in before.sent.items() if k not in dreply.removed}
            held.update((r.name, r.version) for r in dreply.resources)
            assert dict(self.state.sent) == held
        elif not self.delta and sreply is not None and self.type_url not in WILDCARD_TYPES:
            held = dict(before.sent)
            held.update((r.name, r.version) for r in sreply.resources)
            assert dict(self.state.sent) == held
        if replied:
            self.nonces.append(nonce)
            assert self.state.nonce == nonce and self.state.responded
            assert self.state.version == self.resources.version
        else:
            assert self.state.nonce == before.nonce
        assert not self.state.resend and not self.state.resend_all

    def check_narrow(self, before: p.WatchState, force: frozenset[str] | None, nonce: str) -> None:
        """Planning only the names changed since the set last planned against gives
        exactly what planning every name gives (the stream handler's shortcut)."""
        last = self.planned
        if last is None or force or force is None or before.resend or before.resend_all:
            return
        plan = p.plan_delta if self.delta else p.plan_sotw
        full_state, full = plan(before, self.resources, nonce=nonce, force=force)
        if self.resources is last:
            assert full is None  # the handler sends nothing without planning
            return
        only = changed_since(self.resources, last)
        if only is None:
            return
        narrow_state, narrow = plan(before, self.resources, nonce=nonce, force=force, only=only)
        assert narrow == full
        assert dict(narrow_state.sent) == dict(full_state.sent)
        assert narrow_state.nonce == full_state.nonce
        assert narrow_state.version == full_state.version

    def check_decision(
        self,
        before: p.WatchState | None,
        nonce: str,
        error: tuple[int, str] | None,
        decision: p.Decision,
    ) -> None:
        state = self.state
        assert state is not None and state.type_url == self.type_url
        recorded = before is not None and state.nacks != before.nacks
        if decision.verdict is p.Verdict.NACK:
            assert recorded
        if recorded:
            # Delta: a NACK that also changes the subscription answers the change.
            assert decision.verdict is p.Verdict.NACK or (
                self.delta and decision.verdict is p.Verdict.SUBSCRIBE
            )
            assert before is not None and error is not None and nonce == before.nonce != ""
            assert state.nack == p.Nack(nonce, before.version, *error)
            assert state.nacks == before.nacks + 1
        if decision.verdict is p.Verdict.STALE:
            assert before is not None and nonce and nonce != before.nonce
            if not self.delta:
                assert state is before
        if decision.verdict is p.Verdict.ACK and nonce:
            assert state.acked and state.nack is None
        if decision.verdict is p.Verdict.NEW:
            assert before is None or (not self.delta and not nonce)
            assert decision.force is None

    def check_delta_subscription(self, before: p.WatchState | None, req: p.DeltaRequest) -> None:
        state = self.state
        assert state is not None
        assert p.WILDCARD not in state.names
        if before is not None:
            # Subscription changes apply whatever the nonce (stale, NACK, ...).
            expect = (set(before.names) - set(req.unsubscribe)) | (
                set(req.subscribe) - {p.WILDCARD}
            )
            assert state.names == expect
            if p.WILDCARD in req.subscribe:
                assert state.wildcard
            elif p.WILDCARD in req.unsubscribe:
                assert not state.wildcard
            else:
                assert state.wildcard == before.wildcard

    def check_sotw_reply(self, reply: p.SotwReply) -> None:
        state = self.state
        assert state is not None
        names = [r.name for r in reply.resources]
        assert len(names) == len(set(names))
        assert reply.version == self.resources.version
        for res in reply.resources:
            assert self.resources.get(res.name) is res
            assert state.subscribed(res.name)
            assert state.sent[res.name] == res.version
        if self.type_url in WILDCARD_TYPES:
            # CDS/LDS: every subscribed resource, every time.
            expected = {n for n in self.resources.items if state.wildcard or n in state.names}
            assert set(names) == expected

    def check_delta_reply(self, reply: p.DeltaReply) -> None:
        state = self.state
        assert state is not None
        names = [r.name for r in reply.resources]
        assert len(names) == len(set(names)) and len(reply.removed) == len(set(reply.removed))
        assert not set(names) & set(reply.removed)
        for res in reply.resources:
            assert self.resources.get(res.name) is res
            assert state.subscribed(res.name)
            assert state.sent[res.name] == res.version
        for name in reply.removed:
            assert self.resources.get(name) is None and name not in state.sent
        if state.wildcard:
            assert set(state.sent) <= set(self.resources.items)
        else:
            assert set(state.sent) <= state.names | self.initial_names

    def check_idempotent(self) -> None:
        """Nothing changed since the last plan: planning again sends nothing."""
        assert self.state is not None
        reply: p.DeltaReply | p.SotwReply | None
        if self.delta:
            again, reply = p.plan_delta(self.state, self.resources, nonce="probe")
        else:
            again, reply = p.plan_sotw(self.state, self.resources, nonce="probe")
        assert reply is None, f"{self.state} resent {reply}"
        assert again.nonce == self.state.nonce


@FUZZ
@given(
    st.sampled_from(TYPES),
    resources_st,
    st.lists(st.one_of(sotw_st, push_st, resend_st), min_size=5, max_size=30),
)
def test_sotw_random_sequences(
    type_url: str, initial: dict[str, str], actions: list[Action]
) -> None:
    stream = Stream(type_url, delta=False)
    stream.resources = rset(type_url, initial)
    for action in actions:
        stream.step(action)


@FUZZ
@given(
    st.sampled_from(TYPES),
    resources_st,
    st.lists(st.one_of(delta_st, push_st, resend_st), min_size=5, max_size=30),
)
def test_delta_random_sequences(
    type_url: str, initial: dict[str, str], actions: list[Action]
) -> None:
    stream = Stream(type_url, delta=True)
    stream.resources = rset(type_url, initial)
    for action in actions:
        stream.step(action)


@FUZZ
@given(st.sampled_from([CLUSTER, LISTENER]), resources_st, resources_st, names_st)
def test_nack_of_full_set_type_is_not_resent(
    type_url: str, first: dict[str, str], second: dict[str, str], names: tuple[str, ...]
) -> None:
    state, decision = p.on_sotw_request(None, p.SotwRequest(type_url, names=names))
    state, reply = p.plan_sotw(state, rset(type_url, first), nonce="n1", force=decision.force)
    assert reply is not None
    state, reply = p.plan_sotw(state, rset(type_url, second), nonce="n2")
    if reply is None:
        return
    state, decision = p.on_sotw_request(
        state, p.SotwRequest(type_url, names=names, nonce="n2", error=(3, "no"))
    )
    assert decision.verdict is p.Verdict.NACK
    assert p.plan_sotw(state, rset(type_url, second), nonce="n3")[1] is None
    assert p.plan_sotw(state, rset(type_url, dict(second)), nonce="n3")[1] is None


# -- decoding random bytes ----------------------------------------------------------


def field_entries() -> st.SearchStrategy[bytes]:
    """Length-delimited fields with plausible numbers and random payloads."""
    return st.lists(
        st.tuples(st.integers(1, 8), st.binary(max_size=24)).map(
            lambda t: wire.field_bytes(t[0], t[1])
        ),
        max_size=6,
    ).map(b"".join)


def adapt(data: bytes, delta: bool) -> None:
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    try:
        msg = cls.FromString(data)
    except DecodeError:
        return
    type_url = msg.type_url or ENDPOINT
    if delta:
        dreq = _delta_request(type_url, msg)
        state, decision = p.on_delta_request(None, dreq)
        p.plan_delta(state, rset(ENDPOINT, {"a": "1"}), nonce="n1", force=decision.force)
    else:
        sreq = _sotw_request(type_url, msg)
        assert sreq.names == tuple(msg.resource_names)
        state, decision = p.on_sotw_request(None, sreq)
        state, _ = p.plan_sotw(state, rset(ENDPOINT, {"a": "1"}), nonce="n1", force=decision.force)
        p.on_sotw_request(state, sreq)


@FUZZ
@given(st.one_of(st.binary(max_size=200), field_entries()), st.booleans())
def test_random_bytes_decode_or_adapt(data: bytes, delta: bool) -> None:
    adapt(data, delta)


@FUZZ
@given(
    st.text(max_size=6),
    names_st,
    st.text(max_size=6),
    error_st,
    st.integers(0, 200),
    st.binary(min_size=1, max_size=2),
)
def test_mutated_requests_decode_or_adapt(
    version: str,
    names: tuple[str, ...],
    nonce: str,
    error: tuple[int, str] | None,
    where: int,
    patch: bytes,
) -> None:
    sotw = discovery_pb2.DiscoveryRequest(
        version_info=version, resource_names=names, type_url=CLUSTER, response_nonce=nonce
    )
    sotw.node.id = "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"
    delta = discovery_pb2.DeltaDiscoveryRequest(
        resource_names_subscribe=names,
        resource_names_unsubscribe=names[:1],
        initial_resource_versions={n: version for n in names},
        type_url=CLUSTER,
        response_nonce=nonce,
    )
    if error is not None:
        for msg in (sotw, delta):
            msg.error_detail.code, msg.error_detail.message = error
    for msg, is_delta in ((sotw, False), (delta, True)):
        data = msg.SerializeToString()
        adapt(data, is_delta)  # the intact message
        i = where % (len(data) + 1)
        adapt(data[:i] + patch + data[i + len(patch) :], is_delta)  # overwritten bytes
        adapt(data[:i], is_delta)  # truncated
