"""The TokenReview cache: one review per token until it expires (or max_ttl), shared by
concurrent callers, bounded; refusals always reviewed again. Clocks are injected."""

from __future__ import annotations

import asyncio
import base64
import json

from prometheus_client import CollectorRegistry

from xdsd.server.token_cache import CachedTokenReviewer, token_expiry


def jwt(**claims: object) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(dict(claims))}.sig"


class FakeReviewer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    async def review(self, token: str, cluster_id: str | None) -> tuple[str | None, str]:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if "bad" in token:
            return None, "not authenticated"
        return "system:serviceaccount:shop:cart", ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cached(inner: FakeReviewer, clock: Clock, **kw: float) -> CachedTokenReviewer:
    return CachedTokenReviewer(inner, CollectorRegistry(), clock=clock, wall=clock, **kw)  # type: ignore[arg-type]


async def test_hits_until_expiry_or_max_ttl() -> None:
    inner, clock = FakeReviewer(), Clock()
    cache = cached(inner, clock, max_ttl=300)
    short = jwt(exp=clock.now + 60)
    for _ in range(3):
        assert await cache.review(short, "c1") == ("system:serviceaccount:shop:cart", "")
    assert inner.calls == [short]
    clock.now += 61  # the token expired: reviewed again (and refused by a real server)
    await cache.review(short, "c1")
    assert len(inner.calls) == 2
    long = jwt(exp=clock.now + 43_200)  # a 12 h token is trusted for max_ttl only
    await cache.review(long, "c1")
    clock.now += 299
    await cache.review(long, "c1")
    assert len(inner.calls) == 3
    clock.now += 2
    await cache.review(long, "c1")
    assert len(inner.calls) == 4
    # Another cluster is another review.
    await cache.review(long, "c2")
    assert len(inner.calls) == 5


async def test_refusals_and_expired_tokens_are_not_cached() -> None:
    inner, clock = FakeReviewer(), Clock()
    cache = cached(inner, clock)
    for _ in range(2):
        assert (await cache.review("bad-token", None))[0] is None
    assert len(inner.calls) == 2
    stale = jwt(exp=clock.now - 1)
    await cache.review(stale, None)
    await cache.review(stale, None)
    assert len(inner.calls) == 4 and len(cache) == 0


async def test_concurrent_reviews_of_one_token_share_one_call() -> None:
    inner, clock = FakeReviewer(), Clock()
    inner.gate = asyncio.Event()
    cache = cached(inner, clock)
    token = jwt(exp=clock.now + 600)
    calls = [asyncio.create_task(cache.review(token, "c1")) for _ in range(50)]
    await asyncio.sleep(0)  # let them all start (no wait on time: one loop turn)
    inner.gate.set()
    results = await asyncio.gather(*calls)
    assert {r[0] for r in results} == {"system:serviceaccount:shop:cart"}
    assert len(inner.calls) == 1


async def test_bounded() -> None:
    inner, clock = FakeReviewer(), Clock()
    cache = cached(inner, clock, max_entries=3)
    tokens = [jwt(n=i, exp=clock.now + 600) for i in range(5)]
    for t in tokens:
        await cache.review(t, None)
    assert len(cache) == 3
    await cache.review(tokens[0], None)  # evicted: reviewed again
    assert len(inner.calls) == 6


def test_token_expiry_reads_exp_only_when_it_is_a_number() -> None:
    assert token_expiry(jwt(exp=12.5)) == 12.5
    assert token_expiry(jwt(exp="soon")) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.c") is None
