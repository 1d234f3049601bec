"""The xDS protocol for one stream and one type, as pure functions.

    on_sotw_request(state, request)   -> (state, Decision)
    on_delta_request(state, request)  -> (state, Decision)
    plan_sotw(state, resources, ...)  -> (state, SotwReply | None)
    plan_delta(state, resources, ...) -> (state, DeltaReply | None)

No sockets, no clocks: the stream handler feeds requests and the current
resources in and sends whatever comes out. The rules follow Envoy's xDS
protocol documentation and istiod's `ShouldRespond`:

* a request with ``error_detail`` answering the last nonce is a NACK: record
  it, do not resend that version (only new content is sent afterwards);
* an empty nonce is a new subscription or a reconnect: respond in full;
* a nonce that is not the last one sent is stale: ignore it (SotW requests
  carry the full state, so the next one repeats anything it said);
* the last nonce with the same names is an ACK; with other names, respond with
  only the newly subscribed resources (all of them for wildcard types).

Delta subscription changes are applied even when the nonce is stale: they are
increments, and dropping one would lose it for good.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from xdsd.cache.resources import WILDCARD_TYPES, Resource, ResourceSet

WILDCARD = "*"
_NO_VERSIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Nack:
    nonce: str
    version: str  # the version the proxy rejected
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class SotwRequest:
    type_url: str
    version_info: str = ""
    names: tuple[str, ...] = ()
    nonce: str = ""
    error: tuple[int, str] | None = None  # (grpc code, message) from error_detail
    # `names` without "*", when the caller has it already (the same set object as the
    # last request's when the names are the same: an ACK compares by identity).
    name_set: frozenset[str] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DeltaRequest:
    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    # A factory: mappingproxy is unhashable before Python 3.12, so dataclasses
    # refuses it as a plain default ("mutable default").
    initial_versions: Mapping[str, str] = field(default_factory=lambda: _NO_VERSIONS)
    nonce: str = ""
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class WatchState:
    """What one stream knows about one type."""

    type_url: str
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    # name -> version the proxy was sent (Delta: the versions the proxy holds).
    sent: Mapping[str, str] = field(default_factory=lambda: _NO_VERSIONS)
    nonce: str = ""  # last nonce sent
    version: str = ""  # version_info of the last response sent
    acked_nonce: str = ""
    acked_version: str = ""
    nack: Nack | None = None  # the last NACK, kept until a later ACK
    nacks: int = 0
    # Names to send on the next plan even if unchanged (CDS update -> EDS resend).
    resend: frozenset[str] = frozenset()
    resend_all: bool = False
    responded: bool = False
    # SotW: a request on this stream named resources ("*" included); from then
    # on no names means none, not the legacy wildcard.
    named: bool = False

    @property
    def acked(self) -> bool:
        return bool(self.nonce) and self.acked_nonce == self.nonce

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.names


class Verdict(enum.Enum):
    NEW = "new"  # first request or reconnect: respond in full
    SUBSCRIBE = "subscribe"  # names changed: respond with what is new
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # nonce is not the last one sent: ignored
    UNSUBSCRIBE = "unsubscribe"  # names only went away: nothing to send


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    # Names that must be sent even when unchanged; None means every subscribed name.
    force: frozenset[str] | None = frozenset()

    @property
    def respond(self) -> bool:
        return self.verdict in (Verdict.NEW, Verdict.SUBSCRIBE)


@dataclass(frozen=True, slots=True)
class SotwReply:
    version: str
    resources: tuple[Resource, ...]


@dataclass(frozen=True, slots=True)
class DeltaReply:
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]


def _wildcard_from_names(type_url: str, names: tuple[str, ...] | frozenset[str]) -> bool:
    # Legacy wildcard: no names on a type that is wildcard by nature (CDS, LDS).
    return WILDCARD in names or (not names and type_url in WILDCARD_TYPES)


def on_sotw_request(state: WatchState | None, req: SotwRequest) -> tuple[WatchState, Decision]:
    names = req.name_set
    if names is None:
        names = frozenset(n for n in req.names if n != WILDCARD)
    if state is not None and state.named and not req.names:
        wildcard = False  # legacy wildcard only until the stream names something
    else:
        wildcard = _wildcard_from_names(req.type_url, req.names)
    named = bool(req.names) or (state is not None and state.named)
    if state is None or not req.nonce:
        # New subscription, or the proxy reconnected: forget what was sent.
        base = state or WatchState(req.type_url)
        new = replace(
            base,
            wildcard=wildcard,
            names=names,
            named=named,
            sent=_NO_VERSIONS,
            acked_version=req.version_info,
            resend=frozenset(),
            resend_all=False,
        )
        return new, Decision(Verdict.NEW, None)
    if req.nonce != state.nonce:
        return state, Decision(Verdict.STALE)
    if req.error is not None:
        code, message = req.error
        nack = Nack(req.nonce, state.version, code, message)
        return replace(state, nack=nack, nacks=state.nacks + 1), Decision(Verdict.NACK)
    acked = replace(
        state, acked_nonce=req.nonce, acked_version=req.version_info, nack=None, named=named
    )
    if wildcard == state.wildcard and (names is state.names or names == state.names):
        return acked, Decision(Verdict.ACK)
    added = names - state.names
    kept_sent = {n: v for n, v in state.sent.items() if wildcard or n in names}
    changed = replace(acked, wildcard=wildcard, names=names, sent=MappingProxyType(kept_sent))
    if wildcard and not state.wildcard:
        return changed, Decision(Verdict.SUBSCRIBE, None)
    if added:
        return changed, Decision(Verdict.SUBSCRIBE, added)
    return changed, Decision(Verdict.UNSUBSCRIBE)


def on_delta_request(state: WatchState | None, req: DeltaRequest) -> tuple[WatchState, Decision]:
    if state is None:
        wildcard = _wildcard_from_names(req.type_url, req.subscribe)
        names = frozenset(n for n in req.subscribe if n != WILDCARD) - set(req.unsubscribe)
        if WILDCARD in req.unsubscribe:
            wildcard = False
        # On reconnect the proxy says what it holds; send only what differs.
        state = WatchState(
            req.type_url,
            wildcard=wildcard,
            names=names,
            sent=MappingProxyType(dict(req.initial_versions)),
        )
        return state, Decision(Verdict.NEW, None)

    decision = Decision(Verdict.ACK)
    if req.nonce:
        if req.nonce != state.nonce:
            decision = Decision(Verdict.STALE)
        elif req.error is not None:
            code, message = req.error
            nack = Nack(req.nonce, state.version, code, message)
            state = replace(state, nack=nack, nacks=state.nacks + 1)
            decision = Decision(Verdict.NACK)
        else:
            state = replace(state, acked_nonce=req.nonce, acked_version=state.version, nack=None)

    if not req.subscribe and not req.unsubscribe:
        return state, decision

    wildcard = state.wildcard
    subscribed = set(state.names)
    sent = dict(state.sent)
    added: set[str] = set()
    dropped: set[str] = set()
    for name in req.unsubscribe:
        if name == WILDCARD:
            wildcard = False
        elif name in subscribed:
            subscribed.discard(name)
            dropped.add(name)
            sent.pop(name, None)  # the proxy forgets what it unsubscribed from
    for name in req.subscribe:
        if name == WILDCARD:
            if not wildcard:
                wildcard = True
                added.add(WILDCARD)
        else:
            # Even if already subscribed: the proxy may have forgotten it, and
            # the protocol says the server must still send it.
            subscribed.add(name)
            added.add(name)
    if not wildcard:
        # Leaving wildcard: the proxy keeps only explicitly named resources.
        sent = {n: v for n, v in sent.items() if n in subscribed}
    else:
        # A name dropped while wildcard may or may not be in the wildcard: the
        # proxy waits to be told (sent again, or in removed_resources).
        added |= dropped - subscribed
    state = replace(
        state, wildcard=wildcard, names=frozenset(subscribed), sent=MappingProxyType(sent)
    )
    if WILDCARD in added:
        return state, Decision(Verdict.SUBSCRIBE, None)
    if added:
        return state, Decision(Verdict.SUBSCRIBE, frozenset(added))
    if decision.verdict in (Verdict.STALE, Verdict.NACK):
        return state, decision
    return state, Decision(Verdict.UNSUBSCRIBE)


def mark_resend(state: WatchState, names: frozenset[str] | None = None) -> WatchState:
    """Force the next plan to send these names (None: everything subscribed)."""
    if names is None:
        return replace(state, resend_all=True)
    return replace(state, resend=state.resend | names)


def _forced(state: WatchState, force: frozenset[str] | None) -> tuple[bool, frozenset[str]]:
    force_all = force is None or state.resend_all
    return force_all, (force or frozenset()) | state.resend


def plan_sotw(
    state: WatchState,
    resources: ResourceSet,
    *,
    nonce: str,
    force: frozenset[str] | None = frozenset(),
    only: frozenset[str] | None = None,
) -> tuple[WatchState, SotwReply | None]:
    """What to send now, given the current resources; None when nothing changed.

    `only`: the names that can differ from what the proxy holds (the stream was
    in sync with a set these resources were patched from); None: any name.
    """
    force_all, forced = _forced(state, force)
    if state.wildcard and state.type_url in WILDCARD_TYPES:
        # SotW for CDS/LDS: every response carries the full set.
        if not force_all and not forced and resources.version == state.version:
            return state, None
        new = replace(
            state,
            sent=resources.versions,  # the proxy now holds exactly this set
            nonce=nonce,
            version=resources.version,
            resend=frozenset(),
            resend_all=False,
            responded=True,
        )
        return new, SotwReply(resources.version, tuple(resources))
    elif state.type_url in WILDCARD_TYPES:
        # Named CDS/LDS subscriptions too: a subscribed resource missing from a
        # response is deleted by the proxy, so send all of them on any change.
        chosen = tuple(r for n in sorted(state.names) if (r := resources.get(n)) is not None)
        current = {r.name: r.version for r in chosen}
        if not force_all and not forced and current == dict(state.sent):
            return _cleared(state), None
        state = replace(state, sent=MappingProxyType(current))  # forget deleted ones
        first = False
    else:
        candidates: Iterable[str] = resources.items.keys() if state.wildcard else state.names
        if only is not None and not force_all:
            candidates = [n for n in only | forced if n in candidates]
        chosen_list: list[Resource] = []
        for name in sorted(candidates):
            res = resources.get(name)
            if res is None:
                continue
            if force_all or name in forced or state.sent.get(name) != res.version:
                chosen_list.append(res)
        chosen = tuple(chosen_list)
        # The first answer to a subscription is sent even when empty, so the
        # proxy's initialisation does not wait for a timeout.
        first = force_all and not state.responded
        if not chosen and not first:
            return _cleared(state), None
    held = _held_after(state.sent, chosen, resources)
    if held is None:
        sent = dict(state.sent)
        for res in chosen:
            sent[res.name] = res.version
        held = _shared(sent, resources)
    new = replace(
        state,
        sent=held,
        nonce=nonce,
        version=resources.version,
        resend=frozenset(),
        resend_all=False,
        responded=True,
    )
    return new, SotwReply(resources.version, chosen)


def plan_delta(
    state: WatchState,
    resources: ResourceSet,
    *,
    nonce: str,
    force: frozenset[str] | None = frozenset(),
    only: frozenset[str] | None = None,
) -> tuple[WatchState, DeltaReply | None]:
    """What to send now (see plan_sotw for `only`)."""
    force_all, forced = _forced(state, force)
    narrow = only is not None and not force_all
    if narrow:
        assert only is not None
        wanted = only | forced
        if state.wildcard:
            candidates = sorted(wanted)
        else:
            candidates = sorted(n for n in wanted if n in state.names)
    elif state.wildcard:
        candidates = sorted(resources.items.keys() | state.names | forced)
    else:
        candidates = sorted(state.names)
    chosen: list[Resource] = []
    removed: list[str] = []
    # Candidates are distinct, so each name's entry is read before it is changed:
    # read the proxy's map as it was and apply the changes once, at the end.
    prior = state.sent
    for name in candidates:
        res = resources.get(name)
        if res is None:
            # Tell the proxy a resource it holds is gone, and answer a new
            # subscription (the first request too) to a missing name so its
            # initialisation can finish.
            if force_all or name in prior or name in forced:
                removed.append(name)
            continue
        if state.resend_all or name in forced or prior.get(name) != res.version:
            chosen.append(res)
    if state.wildcard and not narrow:
        # (Narrow: a candidate it held that is gone was removed above.)
        gone = prior.keys() - resources.items.keys() - set(removed)
        removed.extend(sorted(gone - state.names))
    first = force_all and not state.responded
    if not chosen and not removed and not first:
        return _cleared(state), None
    held = None if removed else _held_after(prior, chosen, resources)
    if held is None:
        sent = dict(prior)
        for name in removed:
            sent.pop(name, None)
        for res in chosen:
            sent[res.name] = res.version
        held = _shared(sent, resources)
    new = replace(
        state,
        sent=held,
        nonce=nonce,
        version=resources.version,
        resend=frozenset(),
        resend_all=False,
        responded=True,
    )
    return new, DeltaReply(tuple(chosen), tuple(sorted(removed)))


def _held_after(
    prior: Mapping[str, str], chosen: Sequence[Resource], resources: ResourceSet
) -> Mapping[str, str] | None:
    """The set's shared name -> version map, when a proxy that held exactly the set's
    base holds exactly the set once it has `chosen`: checked on the changed names
    only, so a push to a stream in sync costs no copy of a map (None: not so)."""
    base = resources.base
    if base is None or prior is not base.__dict__.get("versions"):
        return None
    picked = {r.name for r in chosen}
    items = resources.items
    for name in resources.changed:
        res = items.get(name)
        if res is None or (name not in picked and prior.get(name) != res.version):
            return None
    return resources.versions


def _shared(sent: dict[str, str], resources: ResourceSet) -> Mapping[str, str]:
    """The set's own name -> version map when the proxy holds exactly the set: one map
    for all the streams of a group instead of one copy each."""
    if len(sent) == len(resources.items) and sent == resources.versions:
        return resources.versions
    return MappingProxyType(sent)


def _cleared(state: WatchState) -> WatchState:
    if state.resend or state.resend_all:
        return replace(state, resend=frozenset(), resend_all=False)
    return state
