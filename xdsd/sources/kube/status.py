"""Writes xdsd's validation result into Istio config objects' `status` (`serve --write-status`).

Usage::

    writer = StatusWriter(lambda: clusters.config_source())
    task = asyncio.create_task(writer.run())
    writer.update(snapshot.errors, served_labels)   # after each snapshot / errors change

- For every Istio config object the config cluster's `ClusterSource` delivered,
  the status is computed by `xdsd.model.status.object_status` from the problems
  naming that object ("Kind ns/name") and compared with the `status` on the
  object (only the keys xdsd owns). Only when they differ, a JSON merge patch
  of the `status` subresource is sent (other status keys are kept).
- Debounced: `update()` only records and wakes; the writer waits `delay`
  seconds, so a burst of changes gives one pass.
- No write loop: a status write changes neither spec nor generation, so the
  store sees an equal object (no push); the next pass computes the same status,
  which is now on the object: no write. Until the watch delivers our own write,
  the object still shows the status before it: a write just made is not repeated.
- An object deleted meanwhile (404) is skipped; other API errors are logged
  and retried on the next pass (after `retry` seconds).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from xdsd.model.objects import object_label
from xdsd.model.status import managed_part, object_status, status_patch
from xdsd.model.types import ConfigError
from xdsd.sources.kube.client import ResourceType

log = logging.getLogger(__name__)

_Key = tuple[str, str, str]  # kind, namespace, name


class StatusSource(Protocol):
    """What the writer needs of a `ClusterSource`."""

    @property
    def api_client(self) -> ApiClient | None: ...

    def istio_objects(self) -> list[tuple[ResourceType, Mapping[str, Any]]]: ...


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(
        self,
        source: Callable[[], object],
        *,
        delay: float = 0.5,
        retry: float = 5.0,
        clock: Callable[[], str] = _now,
        request_timeout: float = 30.0,
    ) -> None:
        """`source()` returns the config cluster's current source (it may be replaced)."""
        self._source = source
        self._delay = delay
        self._retry = retry
        self._clock = clock
        self._timeout = request_timeout
        self._errors: tuple[ConfigError, ...] = ()
        self._served: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        # key -> (managed status on the object when we wrote, what we wrote)
        self._written: dict[_Key, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.writes = 0  # status patches sent (successful)
        self.failures = 0

    def update(self, errors: Iterable[ConfigError], served: Iterable[str]) -> None:
        """The current problems and the labels ("Kind ns/name") of served objects."""
        self._errors = tuple(errors)
        self._served = frozenset(served)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._delay)
            self._wake.clear()
            try:
                failed = await self.write_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status writer failed; retrying")
                failed = True
            if failed:
                await asyncio.sleep(self._retry)
                self._wake.set()

    async def write_once(self) -> bool:
        """One pass over every object; True if a write failed (to retry)."""
        source = self._source()
        api = getattr(source, "api_client", None)
        objects = getattr(source, "istio_objects", None)
        if api is None or objects is None:
            return False
        by_object: dict[str, list[ConfigError]] = {}
        for e in self._errors:
            if e.object:
                by_object.setdefault(e.object, []).append(e)
        custom = CustomObjectsApi(api)
        failed = False
        seen: set[_Key] = set()
        for rtype, obj in objects():
            meta = obj.get("metadata") or {}
            ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
            key = (rtype.kind, ns, name)
            seen.add(key)
            label = object_label(key)
            current = obj.get("status") if isinstance(obj.get("status"), Mapping) else None
            new = object_status(
                by_object.get(label, ()),
                generation=int(meta.get("generation") or 0),
                served=label in self._served,
                now=self._clock(),
                previous=current,
            )
            on_object = managed_part(current)
            if new == on_object:
                self._written.pop(key, None)
                continue
            last = self._written.get(key)
            if last is not None and last == (on_object, new):
                continue  # our write is not delivered yet
            try:
                # (the bundled stubs lack _content_type; the client takes it)
                await custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                    rtype.group,
                    rtype.version,
                    ns,
                    rtype.plural,
                    name,
                    status_patch(new),
                    field_manager="xdsd",
                    _content_type="application/merge-patch+json",
                    _request_timeout=self._timeout,
                )
            except ApiException as e:
                if e.status == 404:
                    continue
                self.failures += 1
                failed = True
                log.warning("status of %s: HTTP %s %s", label, e.status, e.reason)
                continue
            self._written[key] = (on_object, new)
            self.writes += 1
        for key in set(self._written) - seen:
            del self._written[key]
        return failed
