"""Fetches the JWKS that RequestAuthentications name, for inlining (istiod's JwksResolver).

istiod fetches each `jwksUri` itself (PILOT_JWT_ENABLE_REMOTE_JWKS=istiod, the
default) and inlines the key set into Envoy's jwt_authn provider, so proxies
need no route to the identity provider. xdsd does the same, as a source:

- `want(wanted)` tells it what the current RequestAuthentications name (the
  app calls it after each config change): a jwksUri, or for a rule with
  neither jwks nor jwksUri the issuer's OpenID discovery document (its
  `jwks_uri` is then fetched). Only those URLs are fetched; a URL no longer
  named is forgotten (its store object removed).
- `changes()` yields `ConfigChange`s of synthetic objects (`xdsd.model.jwks`),
  one per URL: the last good key set and the last problem. They go into the
  config store, so a new or changed key set is pushed like any config change
  and `--workers` ships it as any store change; a refresh that finds the same
  keys and no problem yields nothing (no push).
- Each fetch: GET, no redirects (only what the config names is fetched), the
  rule's `timeout` (5 s by default), at most `max_bytes`, 2xx only, the body
  must be a JWKS. Link-local and cloud metadata addresses are refused (as
  istiod), and `blocked_cidrs`. Every `refresh_interval` (istiod's default 20 min) each URL is
  fetched again; after a failure it is retried after `retry_min` seconds,
  doubling up to `refresh_interval`, and the last good key set stays served.
- A failure is logged, counted (`pilot_jwks_resolver_network_fetch_fail_total`,
  Istio's name; `xdsd_jwks_failing` URLs now) and recorded on the object, which
  the snapshot build turns into a warning on the RequestAuthentication.

The clock is injected: tests call `step()` after moving it, or run `changes()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry, Counter, Gauge

from xdsd.model.istio.requestauthentication import RequestAuthentication
from xdsd.model.jwks import JWKS_KIND, JWKS_SOURCE_PREFIX, fetched_object, jwks_problems
from xdsd.model.parse import ParseResult
from xdsd.model.store import ConfigChange, ConfigStore, FileContent
from xdsd.model.types import ConfigObject

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Cloud metadata endpoints outside link-local ranges (istiod blocks these too).
_METADATA = (ipaddress.ip_network("100.100.100.200/32"), ipaddress.ip_network("fd00:ec2::/32"))
_LL_MCAST = ipaddress.ip_network("ff02::/16")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Want:
    """One URL to fetch: `discovery` for an issuer's OpenID configuration."""

    discovery: bool = False
    timeout: float = 5.0


@dataclass(frozen=True)
class JwksSettings:
    refresh_interval: float = 20 * 60.0  # istiod: PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
    retry_min: float = 1.0  # first retry after a failure; doubles up to refresh_interval
    max_bytes: int = 1 << 20
    concurrency: int = 8
    # Refuse link-local / cloud metadata addresses (off only for tests of that rule).
    block_link_local: bool = True
    # Also refused (istiod's BLOCKED_CIDRS_IN_JWKS_URIS; `--jwks-blocked-cidrs`).
    blocked_cidrs: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if self.refresh_interval <= 0 or self.retry_min <= 0 or self.max_bytes <= 0:
            raise ValueError("jwks: refresh interval, retry and size limit must be positive")


def parse_cidrs(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8,192.168.1.0/24` (ValueError names a bad entry)."""
    out: list[Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not a CIDR range") from None
    return tuple(out)


class FetchError(Exception):
    pass


def wanted_by(objs: Iterable[ConfigObject]) -> dict[str, Want]:
    """What the RequestAuthentications `objs` need fetched (shortest timeout wins)."""
    out: dict[str, Want] = {}
    for obj in objs:
        typed = obj.typed
        if not isinstance(typed, RequestAuthentication):
            continue
        for rule in typed.rules:
            key = rule.fetch_key
            if not key:
                continue
            want = Want(discovery=not rule.jwks_uri, timeout=rule.timeout_ns / 1e9)
            have = out.get(key)
            if have is None or want.timeout < have.timeout:
                out[key] = want
    return out


def _blocked(ip: str, cidrs: tuple[Network, ...] = ()) -> str | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if addr.is_link_local or (addr.is_multicast and addr.version == 6 and addr in _LL_MCAST):
        return f"address {ip} is link-local"
    if any(addr.version == n.version and addr in n for n in _METADATA):
        return f"address {ip} is a cloud metadata address"
    for n in cidrs:
        if addr.version == n.version and addr in n:
            return f"address {ip} is in blocked range {n}"
    return None


class _GuardedResolver(AbstractResolver):
    """The default resolver, refusing names that resolve to a blocked address."""

    def __init__(self, cidrs: tuple[Network, ...]) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._cidrs = cidrs

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            problem = _blocked(r["host"], self._cidrs)
            if problem is not None:
                # strerror is what aiohttp's connector error shows
                raise OSError(errno.EHOSTUNREACH, f"{host}: {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class _Entry:
    want: Want
    jwks: str = ""  # last good key set
    error: str = ""  # last problem ("" after a good fetch)
    via: str = ""  # discovery: the jwks_uri it named
    due: float = 0.0
    failures: int = 0
    published: tuple[str, str, str] | None = None  # what the store has


@dataclass
class _Metrics:
    ok: Counter
    fail: Counter
    failing: Gauge

    @classmethod
    def make(cls, registry: CollectorRegistry | None) -> _Metrics:
        r = registry or CollectorRegistry()
        return cls(
            Counter(
                "pilot_jwks_resolver_network_fetch_success",
                "Total number of successful network fetches by the JWKS resolver.",
                registry=r,
            ),
            Counter(
                "pilot_jwks_resolver_network_fetch_fail",
                "Total number of failed network fetches by the JWKS resolver.",
                registry=r,
            ),
            Gauge(
                "xdsd_jwks_failing",
                "JWKS URLs named by RequestAuthentications whose last fetch failed.",
                registry=r,
            ),
        )


class JwksResolver:
    def __init__(
        self,
        settings: JwksSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings or JwksSettings()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._gone: set[str] = set()
        self._wake = asyncio.Event()
        self._metrics = _Metrics.make(registry)
        self._session: aiohttp.ClientSession | None = None

    # -- what to fetch ------------------------------------------------------------------

    def want(self, wanted: Mapping[str, Want]) -> None:
        """The URLs the config names now; new ones are fetched at once."""
        changed = False
        for key in list(self._entries):
            if key not in wanted:
                entry = self._entries.pop(key)
                if entry.published is not None:
                    self._gone.add(key)
                changed = True
        for key, want in wanted.items():
            have = self._entries.get(key)
            if have is None:
                self._entries[key] = _Entry(want, due=self._clock())
                self._gone.discard(key)
                changed = True
            elif have.want != want:
                have.want = want
        if changed:
            self._set_failing()
            self._wake.set()

    def status(self) -> list[dict[str, Any]]:
        """Each URL's state, for debug output."""
        now = self._clock()
        return [
            {
                "url": key,
                "state": "failing" if e.error else ("ok" if e.jwks else "pending"),
                "error": e.error,
                "via": e.via,
                "next_fetch_in": round(max(0.0, e.due - now), 3),
            }
            for key, e in sorted(self._entries.items())
        ]

    # -- the loop ------------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[ConfigChange]:
        """Fetch what is due, yield what changed, wait for the next due time or `want`."""
        try:
            while True:
                self._wake.clear()
                change = await self.step()
                if change is not None:
                    yield change
                if self._gone or self._wake.is_set():
                    continue  # `want` was called meanwhile
                wait = self.next_due()
                if wait is None:
                    await self._wake.wait()
                elif wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            await self.aclose()

    def next_due(self) -> float | None:
        """Seconds until the next fetch is due (None: nothing to fetch)."""
        if not self._entries:
            return None
        return max(0.0, min(e.due for e in self._entries.values()) - self._clock())

    async def step(self) -> ConfigChange | None:
        """Fetch every URL due now (concurrently); the store change, if anything changed."""
        now = self._clock()
        due = [k for k, e in self._entries.items() if e.due <= now]
        if due:
            sem = asyncio.Semaphore(self.settings.concurrency)

            async def one(key: str) -> None:
                async with sem:
                    await self._refresh(key)

            await asyncio.gather(*(one(k) for k in due))
        self._set_failing()
        return self._change()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _set_failing(self) -> None:
        self._metrics.failing.set(sum(1 for e in self._entries.values() if e.error))

    def _change(self) -> ConfigChange | None:
        files: list[FileContent] = []
        for key in sorted(self._gone):
            files.append(FileContent(JWKS_SOURCE_PREFIX + key, None))
        self._gone.clear()
        for key, e in sorted(self._entries.items()):
            state = (e.jwks, e.error, e.via)
            if e.published == state or (not e.jwks and not e.error):
                continue  # unchanged, or not fetched yet
            e.published = state
            obj = fetched_object(key, jwks=e.jwks, error=e.error, via=e.via)
            files.append(FileContent(obj.ref.source, ParseResult((obj,))))
        if not files:
            return None
        return ConfigChange(tuple(files), frozenset({JWKS_KIND}))

    async def _refresh(self, key: str) -> None:
        entry = self._entries[key]
        want = entry.want
        try:
            via = ""
            if want.discovery:
                via = _jwks_uri_of(await self._get(key, want.timeout))
                body = await self._get(via, want.timeout)
            else:
                body = await self._get(key, want.timeout)
            text = body.decode("utf-8")
            errors, _ = jwks_problems(text)
            if errors:
                raise FetchError(f"not a valid JWKS: {errors[0]}")
        except Exception as e:  # any failure is this URL's problem, recorded on it
            if self._entries.get(key) is not entry:
                return  # forgotten meanwhile
            entry.failures += 1
            entry.error = _describe(e)
            delay = min(
                self.settings.refresh_interval,
                self.settings.retry_min * 2 ** (entry.failures - 1),
            )
            entry.due = self._clock() + delay
            log.warning(
                "JWKS %s could not be fetched: %s (%s; next try in %.0fs)",
                key,
                entry.error,
                "serving the key set fetched before" if entry.jwks else "its tokens are rejected",
                delay,
            )
            return
        if self._entries.get(key) is not entry:
            return
        if entry.jwks and entry.jwks != text:
            log.info("JWKS %s changed", key)
        elif not entry.jwks or entry.error:
            log.info("JWKS %s fetched", key)
        entry.jwks, entry.error, entry.via, entry.failures = text, "", via, 0
        entry.due = self._clock() + self.settings.refresh_interval

    async def _get(self, url: str, timeout: float) -> bytes:
        """One GET, counted as a success or a failure."""
        try:
            body = await self._get_once(url, timeout)
        except Exception:
            self._metrics.fail.inc()
            raise
        self._metrics.ok.inc()
        return body

    async def _get_once(self, url: str, timeout: float) -> bytes:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise FetchError(f"{url!r} is not an http(s) URL")
        if self.settings.block_link_local:
            problem = _blocked(u.hostname, self.settings.blocked_cidrs)
            if problem is not None:
                raise FetchError(problem)
        session = self._client()
        limit = self.settings.max_bytes
        async with session.get(
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Accept": "application/json"},
        ) as resp:
            if not 200 <= resp.status < 300:
                head = (await resp.content.read(100)).decode("utf-8", "replace")
                raise FetchError(f"status {resp.status}, message {head!r}")
            if resp.content_length is not None and resp.content_length > limit:
                raise FetchError(f"body of {resp.content_length} bytes is over {limit}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"body is over {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver: AbstractResolver = (
                _GuardedResolver(self.settings.blocked_cidrs)
                if self.settings.block_link_local
                else aiohttp.DefaultResolver()
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, force_close=True),
                trust_env=False,
            )
        return self._session


async def fetch_once(store: ConfigStore, settings: JwksSettings | None = None) -> None:
    """One round for a one-shot command (`xdsd validate/translate --fetch-jwks`): fetch
    what the store's RequestAuthentications name and put the results into the store."""
    resolver = JwksResolver(settings)
    try:
        objs = store.objects("RequestAuthentication")
        resolver.want(wanted_by(o for o in objs if isinstance(o, ConfigObject)))
        change = await resolver.step()
        if change is not None:
            store.apply(change)
    finally:
        await resolver.aclose()


def _jwks_uri_of(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise FetchError(f"OpenID configuration is not JSON: {e}") from None
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise FetchError("OpenID configuration has no jwks_uri")
    return uri


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, UnicodeDecodeError):
        return "the body is not UTF-8"
    text = str(e) or type(e).__name__
    return text if isinstance(e, FetchError) else f"{type(e).__name__}: {text}"
