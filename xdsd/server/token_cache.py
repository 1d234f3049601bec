"""A bounded cache in front of a TokenReviewer.

A reconnect storm (a restarted gateway, connections reaching their maximum age)
brings every proxy back at once, each with its CA call and its xDS stream; a
TokenReview per call would make it a TokenReview storm against the API servers.
A token the cluster authenticated is taken as authenticated again, without a
review, until the token expires (its `exp` claim, read without verifying: the
review already vouched for the token) or at most `max_ttl` seconds, so a token
revoked before it expires is refused again within `max_ttl`. Concurrent
reviews of one token share one call. Refusals are not cached.

Keys are SHA-256 digests of (cluster, token): tokens are never kept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from xdsd.server.auth import TokenReviewer

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_TTL_S = 300.0


def token_expiry(token: str) -> float | None:
    """The JWT's `exp` (Unix seconds), or None when the token has none we can read."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


class CachedTokenReviewer:
    def __init__(
        self,
        inner: TokenReviewer,
        registry: CollectorRegistry,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_ttl: float = DEFAULT_MAX_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._clock = clock
        self._wall = wall
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[tuple[str | None, str]]] = {}
        self.m_lookups = Counter(
            "xdsd_token_review_cache",
            "Token reviews answered from the cache (hit) or by the API server (miss)",
            ["result"],
            registry=registry,
        )

    def _key(self, token: str, cluster_id: str | None) -> bytes:
        return hashlib.sha256(f"{cluster_id or ''}\0{token}".encode()).digest()

    def __len__(self) -> int:
        return len(self._entries)

    async def review(self, token: str, cluster_id: str | None) -> tuple[str | None, str]:
        key = self._key(token, cluster_id)
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None:
            if hit[1] > now:
                self._entries.move_to_end(key)
                self.m_lookups.labels("hit").inc()
                return hit[0], ""
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None:
            self.m_lookups.labels("hit").inc()
            return await asyncio.shield(pending)
        self.m_lookups.labels("miss").inc()
        future: asyncio.Future[tuple[str | None, str]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._inner.review(token, cluster_id)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters get it, nobody else must
            raise
        else:
            future.set_result(result)
        finally:
            del self._inflight[key]
        user, _reason = result
        if user is not None:
            self._remember(key, user, token)
        return result

    def _remember(self, key: bytes, user: str, token: str) -> None:
        ttl = self._max_ttl
        exp = token_expiry(token)
        if exp is not None:
            ttl = min(ttl, exp - self._wall())
        if ttl <= 0:
            return
        self._entries[key] = (user, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()
