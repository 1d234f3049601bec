"""A Kubernetes API server stand-in for tests: real HTTP (aiohttp) on loopback.

It speaks enough of the Kubernetes API for the real kubernetes-asyncio client,
unmodified: list (``kind: XList``, ``metadata.resourceVersion``, limit/continue,
resourceVersionMatch), watch (chunked JSON lines, ADDED/MODIFIED/DELETED,
BOOKMARK with allowWatchBookmarks, sendInitialEvents, timeoutSeconds), 410 Gone
for expired resourceVersions, label and field selectors, get/create/replace/
patch/delete, core ``/api/v1`` and ``/apis/GROUP/VERSION`` paths (namespaced and
cluster-wide), Istio CRDs served under every version of their group (one
storage per group/resource, as a CRD with several served versions), bearer
token authentication (401) and TokenReview.

Semantics follow https://kubernetes.io/docs/reference/using-api/api-concepts/:

- one global, monotonically increasing resourceVersion (a decimal string);
  every write that changes an object bumps it, a no-op write does not;
- every object carries metadata.resourceVersion, uid, creationTimestamp and
  generation (bumped when anything but metadata and status changes);
- list items of built-in kinds have no kind/apiVersion (as the real API
  server), CRD list items do; watch event objects always do;
- a watch from resourceVersion X sends the events after X; absent or "0" sends
  synthetic ADDED events for the current state first; a watch from an expired
  version gets one ERROR event (Status, code 410, reason Expired) and ends;
  a list at an expired version is an HTTP 410 Status;
- with a label selector, an object that stops matching is sent as DELETED (its
  previous content at the event's resourceVersion) and one that starts
  matching as ADDED, as the watch cache does;
- a DELETED event carries the object's last state at the deletion's version.

Admission: ``add_mutating_webhook(MutatingWebhook(url, ca_file=...))`` makes a
create of a Pod over HTTP call that webhook as the real API server does (an
``admission.k8s.io/v1`` AdmissionReview POSTed over HTTPS; the response's uid
checked; a JSONPatch applied; ``allowed: false`` -> 400 with the webhook's
message; an unreachable webhook or a bad answer -> 500 under failurePolicy
Fail, ignored under Ignore). No selectors, no reinvocation, Pods only.

Not modelled: strategic merge patches merge lists by key (they are JSON merge
patches here), graceful deletion/finalizers, namespace cascades, validating admission.

Fault controls: ``drop_watches(graceful=False)`` (streams cut mid-stream, or
ended cleanly), ``await pause()``/``await resume()`` (the listener and every
connection are really closed: connection refused; in-process writes go on),
``await restart(keep_state=True, graceful=True)`` on the same port,
``expire_before(rv)``/``compact()`` (410 for older versions),
``fail_next_watches(n, status=410)`` (an ERROR event), ``fail_next_lists(n,
status=500)``, ``send_bookmarks()``, a settable ``bookmark_interval``.
Inspection: ``watches(resource)``, ``await wait_watches(n, resource)``,
``requests`` / ``count(verb, resource)``, ``resource_version``.

Usage::

    async with KubeApiServer(token="t") as api:
        api.apply({"apiVersion": "v1", "kind": "Service", ...})
        config = api.kubeconfig(cluster_name="c1")
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from aiohttp import web

JsonObj = dict[str, Any]

__all__ = [
    "DEFAULT_RESOURCES",
    "FieldSelector",
    "KubeApiServer",
    "LabelSelector",
    "MutatingWebhook",
    "RequestRecord",
    "ResourceType",
    "SelectorError",
    "TokenInfo",
]

ISTIO_NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
ISTIO_SECURITY_VERSIONS = ("v1", "v1beta1")


@dataclass(frozen=True)
class ResourceType:
    """One API resource: ``/api/v1/pods`` or ``/apis/GROUP/VERSION/PLURAL``.

    ``versions`` are the served versions; the first is the storage version.
    An object is stored once per (group, plural) and served under every
    version with its apiVersion rewritten.
    """

    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def builtin(self) -> bool:
        """A built-in kind (its list items carry no kind/apiVersion), not a CRD."""
        return self.group == "" or "." not in self.group or self.group.endswith(".k8s.io")

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    @property
    def resource(self) -> str:
        """``plural`` or ``plural.group`` as in Kubernetes error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _core(plural: str, kind: str, namespaced: bool = True) -> ResourceType:
    return ResourceType("", ("v1",), plural, kind, namespaced)


def _istio(group: str, versions: tuple[str, ...], plural: str, kind: str) -> ResourceType:
    return ResourceType(group, versions, plural, kind, True)


DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    _core("pods", "Pod"),
    _core("services", "Service"),
    _core("endpoints", "Endpoints"),
    _core("secrets", "Secret"),
    _core("configmaps", "ConfigMap"),
    _core("serviceaccounts", "ServiceAccount"),
    _core("namespaces", "Namespace", namespaced=False),
    _core("nodes", "Node", namespaced=False),
    ResourceType("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice"),
    *(
        _istio("networking.istio.io", ISTIO_NETWORKING_VERSIONS, plural, kind)
        for plural, kind in (
            ("virtualservices", "VirtualService"),
            ("destinationrules", "DestinationRule"),
            ("gateways", "Gateway"),
            ("serviceentries", "ServiceEntry"),
            ("sidecars", "Sidecar"),
            ("workloadentries", "WorkloadEntry"),
            ("workloadgroups", "WorkloadGroup"),
        )
    ),
    _istio("networking.istio.io", ("v1alpha3",), "envoyfilters", "EnvoyFilter"),
    _istio("networking.istio.io", ("v1beta1",), "proxyconfigs", "ProxyConfig"),
    *(
        _istio("security.istio.io", ISTIO_SECURITY_VERSIONS, plural, kind)
        for plural, kind in (
            ("peerauthentications", "PeerAuthentication"),
            ("authorizationpolicies", "AuthorizationPolicy"),
            ("requestauthentications", "RequestAuthentication"),
        )
    ),
    _istio("telemetry.istio.io", ("v1", "v1alpha1"), "telemetries", "Telemetry"),
    _istio("extensions.istio.io", ("v1alpha1",), "wasmplugins", "WasmPlugin"),
)

# --------------------------------------------------------------------------- selectors


class SelectorError(ValueError):
    """A label or field selector that does not parse."""


_LABEL_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"({_LABEL_KEY})\s+(in|notin)\s*\(([^()]*)\)")
_EQ_RE = re.compile(rf"({_LABEL_KEY})\s*(==|=|!=|>|<)\s*({_LABEL_VALUE})")
_EXISTS_RE = re.compile(rf"(!?)\s*({_LABEL_KEY})")
_VALUE_RE = re.compile(_LABEL_VALUE)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError(f"unbalanced parenthesis in {text!r}")
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class _LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op == "=":
            return present and value in self.values
        if self.op == "!=":
            return not present or value not in self.values
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        # ">" and "<": integer comparison, a non-integer label never matches
        if not present or value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        (want,) = self.values
        return have > int(want) if self.op == ">" else have < int(want)


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector``: =, ==, !=, in, notin, exists, !key, >, <."""

    requirements: tuple[_LabelRequirement, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        reqs: list[_LabelRequirement] = []
        for raw in _split_top_level(text):
            part = raw.strip()
            if not part:
                raise SelectorError(f"empty requirement in {text!r}")
            if m := _SET_RE.fullmatch(part):
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                for v in values:
                    if not _VALUE_RE.fullmatch(v):
                        raise SelectorError(f"invalid label value {v!r}")
                reqs.append(_LabelRequirement(m.group(1), m.group(2), values))
            elif m := _EQ_RE.fullmatch(part):
                op = "=" if m.group(2) == "==" else m.group(2)
                if op in (">", "<"):
                    try:
                        int(m.group(3))
                    except ValueError:
                        raise SelectorError(f"{part!r}: {op} needs an integer") from None
                reqs.append(_LabelRequirement(m.group(1), op, frozenset({m.group(3)})))
            elif m := _EXISTS_RE.fullmatch(part):
                reqs.append(_LabelRequirement(m.group(2), "!" if m.group(1) else "exists"))
            else:
                raise SelectorError(f"unable to parse requirement: {part!r}")
        return cls(tuple(reqs), text)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed ``fieldSelector``: ``path=value``, ``path==value``, ``path!=value``.

    metadata.name and metadata.namespace work for every kind (as in
    Kubernetes); other dotted paths (spec.nodeName, status.phase, type) are
    looked up generically.
    """

    requirements: tuple[tuple[str, bool, str], ...] = ()  # (path, equal, value)
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        reqs: list[tuple[str, bool, str]] = []
        for raw in text.split(","):
            part = raw.strip()
            m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", part)
            if m is None:
                raise SelectorError(f"invalid field selector: {part!r}")
            reqs.append((m.group(1), m.group(2) != "!=", m.group(3).strip()))
        return cls(tuple(reqs), text)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(
            (_field_value(obj, path) == value) == eq for path, eq, value in self.requirements
        )


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: JsonObj = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test, copy, move."""
    doc = copy.deepcopy(doc)

    def resolve(parts: list[str]) -> tuple[Any, str]:
        if not parts:
            raise ValueError("the whole document cannot be patched")
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        return parent, parts[-1]

    def get(path: str) -> Any:
        cur = doc
        for p in _pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def remove(path: str) -> Any:
        parent, last = resolve(_pointer(path))
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)

    def add(path: str, value: Any) -> None:
        parent, last = resolve(_pointer(path))
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            else:
                parent.insert(int(last), value)
        else:
            parent[last] = value

    for op in ops:
        kind = op.get("op")
        path = str(op.get("path", ""))
        try:
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ValueError(f"test failed at {path}")
            elif kind == "copy":
                add(path, copy.deepcopy(get(str(op["from"]))))
            elif kind == "move":
                add(path, remove(str(op["from"])))
            else:
                raise ValueError(f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"JSON patch {kind} {path}: {exc!r}") from None
    return doc


@dataclass(frozen=True)
class MutatingWebhook:
    """A webhook called on Pod CREATE (see the module docstring)."""

    url: str
    ca_file: str | None = None  # trusted for the webhook's serving certificate
    name: str = "sidecar-injector.istio.io"
    failure_policy: Literal["Fail", "Ignore"] = "Fail"
    timeout: float = 10.0


# --------------------------------------------------------------------------- helpers


def _status(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> JsonObj:
    status: JsonObj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = dict(details)
    return status


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """Raised inside the server; becomes a Status response."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = _status(code, reason or _REASONS.get(code, "Unknown"), message, details)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _content(obj: Mapping[str, Any]) -> JsonObj:
    """What generation tracks: everything but metadata, status and type meta."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _comparable(obj: Mapping[str, Any]) -> JsonObj:
    meta = {k: v for k, v in _meta(obj).items() if k not in ("resourceVersion", "managedFields")}
    return {**{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}, "metadata": meta}


def _with_rv(obj: Mapping[str, Any], rv: int) -> JsonObj:
    return {**obj, "metadata": {**_meta(obj), "resourceVersion": str(rv)}}


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["ns"]), str(data["name"]))
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, f"invalid continue token {token!r}") from None


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "ns": key[0], "name": key[1]}).encode()
    return base64.urlsafe_b64encode(raw).decode()


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class _Event:
    rv: int
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    rtype: ResourceType
    obj: JsonObj  # after the change; for DELETED the last state at the deletion's rv
    prev: JsonObj | None  # before the change (None for ADDED)


@dataclass(frozen=True)
class TokenInfo:
    """What TokenReview answers for a known token."""

    username: str
    uid: str
    groups: tuple[str, ...]
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (see ``KubeApiServer.requests``)."""

    method: str
    path: str
    query: Mapping[str, str]
    # list, watch, get, create, update, patch, delete, tokenreview; "unauthorized"
    # (401, before routing) and "error" (no such resource). Discovery is not logged.
    verb: str
    resource: str  # the plural ("" when unknown)
    status: int  # the HTTP status (a watch: 200 when it starts, even for an ERROR event)


_ROUTE = web.RequestKey("kube_route", tuple[str, str])  # (verb, plural) for the log
_DROP = "drop"  # close the stream abruptly
_END = "end"  # end the stream cleanly


@dataclass(eq=False)
class _Watch:
    rtype: ResourceType
    version: str
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def passes(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and _meta(obj).get("namespace") != self.namespace:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)

    def translate(self, ev: _Event) -> tuple[str, JsonObj] | None:
        """The event this watcher sees for a change, if any (watch cache rules)."""
        if ev.rtype.key != self.rtype.key:
            return None
        if ev.type in ("ADDED", "DELETED"):
            return (ev.type, ev.obj) if self.passes(ev.obj) else None
        now, before = self.passes(ev.obj), self.passes(ev.prev)
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        if before and ev.prev is not None:
            return ("DELETED", _with_rv(ev.prev, ev.rv))
        return None


@dataclass(frozen=True)
class WatchInfo:
    """An open watch, for tests to wait on (``KubeApiServer.watches()``)."""

    resource: str
    group: str
    version: str
    namespace: str | None
    label_selector: str
    field_selector: str
    bookmarks: bool


# --------------------------------------------------------------------------- server


class KubeApiServer:
    """A Kubernetes API server on 127.0.0.1 (see the module docstring).

    token: the bearer token every request but /healthz, /version needs
    (None: no authentication). bookmark_interval: seconds between BOOKMARK
    events on watches that allow them. max_history: watch history kept; older
    versions expire (410) as when etcd compacts.
    """

    def __init__(
        self,
        *,
        token: str | None = "test-token",
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 2.0,
        max_history: int = 10_000,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        api_audiences: Sequence[str] = ("https://kubernetes.default.svc.cluster.local",),
        list_items_type_meta: bool = False,
        first_resource_version: int = 1,
    ) -> None:
        self.host = host
        self._port = port
        self._tokens: set[str] = {token} if token is not None else set()
        self._auth = token is not None
        self._token = token
        self._bookmark_interval = bookmark_interval
        self.max_history = max_history
        self.api_audiences = tuple(api_audiences)
        self.list_items_type_meta = list_items_type_meta
        self._types: dict[tuple[str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], JsonObj]] = {}
        for rt in resources:
            self.register(rt)
        if first_resource_version < 1:
            raise ValueError("first_resource_version must be at least 1")
        self._rv = first_resource_version
        self._oldest_valid = first_resource_version  # a watch/list from rv < this: 410
        self._history: deque[_Event] = deque()
        self._watches: set[_Watch] = set()
        self._review_tokens: dict[str, TokenInfo] = {}
        # (namespace, service account, audiences) of each TokenRequest answered.
        self.issued_tokens: list[tuple[str, str, tuple[str, ...]]] = []
        self._fail_watches: list[int] = []
        self._fail_lists: list[int] = []
        self._runner: web.AppRunner | None = None
        self._closed = False
        self.requests: list[RequestRecord] = []
        self.mutating_webhooks: list[MutatingWebhook] = []
        self.admission_reviews: list[JsonObj] = []  # every AdmissionReview sent, in order

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the server has not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while listening (False before start, while paused, after aclose)."""
        return self._runner is not None

    async def start(self) -> None:
        """Listen (on the same port as before after a pause/restart)."""
        if self._closed:
            raise RuntimeError("the server is closed")
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            handler_cancellation=True,  # a client going away ends its watch handler
            access_log=None,
            shutdown_timeout=1.0,  # watch streams are ended by _stop_listening first
        )
        await runner.setup()
        try:
            sock = await self._bind()
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _bind(self) -> socket.socket:
        deadline = time.monotonic() + 5.0
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self._port))
            except OSError:
                sock.close()
                if self._port == 0 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            sock.listen(128)
            sock.setblocking(False)
            self._port = int(sock.getsockname()[1])
            return sock

    async def _stop_listening(self, *, graceful: bool = False) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.drop_watches(graceful=graceful)
        if self._watches:  # let the watch handlers end their streams
            waiters = [asyncio.ensure_future(w.closed.wait()) for w in self._watches]
            _, pending = await asyncio.wait(waiters, timeout=1.0)
            for waiter in pending:
                waiter.cancel()
        await runner.cleanup()

    async def pause(self) -> None:
        """Become unreachable: close the listener and cut every connection.

        Watch streams are cut mid-stream; connections are refused until
        ``resume()``. The state stays, and ``apply``/``delete`` keep working
        in-process meanwhile (the changes are in the history for watches
        resuming afterwards).
        """
        await self._stop_listening()

    async def resume(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def restart(self, *, keep_state: bool = True, graceful: bool = True) -> None:
        """Stop and listen again on the same port.

        graceful: watch streams end cleanly first (as an API server shutting
        down), else they are cut. keep_state=False loses every object (as a
        fresh etcd): the version counter moves on and all earlier versions
        expire, so a client resuming a watch gets 410 and relists an empty
        cluster.
        """
        await self._stop_listening(graceful=graceful)
        if not keep_state:
            self.reset()
        await self.start()

    async def aclose(self) -> None:
        await self._stop_listening()
        self._closed = True

    def reset(self) -> None:
        """Forget every object (no events); every earlier version expires."""
        for store in self._objects.values():
            store.clear()
        self._rv += 1
        self.expire_before(self._rv)

    # ------------------------------------------------------------------ configuration

    def register(self, rtype: ResourceType) -> None:
        """Serve a resource (a CRD); versions of an already known one are added."""
        known = self._types.get(rtype.key)
        if known is not None:
            versions = known.versions + tuple(v for v in rtype.versions if v not in known.versions)
            if known.kind != rtype.kind or known.namespaced != rtype.namespaced:
                raise ValueError(f"{rtype.resource} is already registered as {known}")
            rtype = ResourceType(known.group, versions, known.plural, known.kind, known.namespaced)
        self._types[rtype.key] = rtype
        self._objects.setdefault(rtype.key, {})

    @property
    def bookmark_interval(self) -> float:
        """Seconds between periodic BOOKMARK events (settable; open watches follow)."""
        return self._bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self._bookmark_interval = seconds
        for w in self._watches:
            w.queue.put_nowait(("wake", None))

    @property
    def resource_types(self) -> list[ResourceType]:
        return list(self._types.values())

    @property
    def token(self) -> str | None:
        """The bearer token kubeconfig() hands out."""
        return self._token

    def set_token(self, token: str, *, keep_old: bool = False) -> None:
        """Rotate the API bearer token (the old one stops working unless keep_old)."""
        if not keep_old:
            self._tokens.clear()
        self._tokens.add(token)
        self._token = token
        self._auth = True

    def add_token(
        self,
        token: str,
        username: str = "system:serviceaccount:default:default",
        audiences: Sequence[str] = ("istio-ca",),
        uid: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> TokenInfo:
        """Make TokenReview authenticate ``token`` for ``audiences``."""
        if groups is None:
            groups = ["system:authenticated"]
            parts = username.split(":")
            if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}", *groups]
        info = TokenInfo(username, uid or str(uuid.uuid4()), tuple(groups), tuple(audiences))
        self._review_tokens[token] = info
        return info

    def remove_token(self, token: str) -> None:
        self._review_tokens.pop(token, None)

    # ------------------------------------------------------------------ kubeconfig

    def kubeconfig(
        self,
        cluster_name: str = "test",
        namespace: str | None = None,
        token: str | None = None,
    ) -> JsonObj:
        """A kubeconfig dict for this server (for load_kube_config_from_dict)."""
        user: JsonObj = {}
        tok = token if token is not None else self._token
        if tok is not None:
            user["token"] = tok
        context: JsonObj = {"cluster": cluster_name, "user": f"{cluster_name}-user"}
        if namespace is not None:
            context["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster_name, "cluster": {"server": self.url}}],
            "users": [{"name": f"{cluster_name}-user", "user": user}],
            "contexts": [{"name": cluster_name, "context": context}],
            "current-context": cluster_name,
            "preferences": {},
        }

    def kubeconfig_yaml(
        self, cluster_name: str = "test", namespace: str | None = None, token: str | None = None
    ) -> str:
        return yaml.safe_dump(self.kubeconfig(cluster_name, namespace, token), sort_keys=False)

    def remote_secret(
        self,
        cluster_name: str,
        *,
        namespace: str = "istio-system",
        name: str | None = None,
        token: str | None = None,
    ) -> JsonObj:
        """An Istio remote secret for this server, as ``istioctl create-remote-secret``.

        Label istio/multiCluster=true, data key = cluster name, value = kubeconfig.
        """
        kc = self.kubeconfig_yaml(cluster_name, token=token)
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name or f"istio-remote-secret-{cluster_name}",
                "namespace": namespace,
                "labels": {"istio/multiCluster": "true"},
                "annotations": {"networking.istio.io/cluster": cluster_name},
            },
            "type": "Opaque",
            "data": {cluster_name: base64.b64encode(kc.encode()).decode()},
        }

    # ------------------------------------------------------------------ in-process API

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        return str(self._rv)

    def lookup(self, kind_or_plural: str, api_version: str | None = None) -> ResourceType:
        """The resource for a kind ("Service") or plural ("services")."""
        group: str | None = None
        if api_version is not None:
            group = api_version.rpartition("/")[0]
        found = [
            rt
            for rt in self._types.values()
            if kind_or_plural in (rt.kind, rt.plural) and (group is None or rt.group == group)
        ]
        if api_version is not None:
            version = api_version.rpartition("/")[2]
            found = [rt for rt in found if version in rt.versions]
        if not found:
            raise KeyError(f"unknown resource {kind_or_plural!r} ({api_version or 'any group'})")
        if len(found) > 1:
            raise KeyError(f"{kind_or_plural!r} is ambiguous: pass api_version")
        return found[0]

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        kind = obj.get("kind")
        api_version = obj.get("apiVersion")
        if not isinstance(kind, str) or not isinstance(api_version, str):
            raise ValueError("the object needs apiVersion and kind")
        return self.lookup(kind, api_version)

    def apply(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create or replace an object; returns the stored copy.

        A namespaced object without a namespace goes to "default". Writing an
        identical object is a no-op (no new version, no event).
        """
        rtype = self._type_of(obj)
        body = copy.deepcopy(dict(obj))
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        stored, _ = self._write(rtype, body, "upsert")
        return copy.deepcopy(stored)

    def create(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create an object (ApiError 409 if it exists)."""
        rtype = self._type_of(obj)
        stored, _ = self._write(rtype, copy.deepcopy(dict(obj)), "create")
        return copy.deepcopy(stored)

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        api_version: str | None = None,
    ) -> JsonObj:
        """Apply a JSON merge patch to an object (KeyError if it does not exist)."""
        rtype = self.lookup(kind, api_version)
        current = self._objects[rtype.key].get(self._key(rtype, namespace, name))
        if current is None:
            raise KeyError(f"{rtype.resource} {namespace}/{name} not found")
        body = merge_patch(copy.deepcopy(current), patch)  # stored objects are never mutated
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        body["metadata"].update(name=name, namespace=namespace)
        stored, _ = self._write(rtype, body, "update")
        return copy.deepcopy(stored)

    def delete(
        self, kind: str, namespace: str | None, name: str, *, api_version: str | None = None
    ) -> JsonObj | None:
        """Delete an object; returns its last state, or None if it did not exist."""
        rtype = self.lookup(kind, api_version)
        try:
            return copy.deepcopy(self._remove(rtype, namespace, name))
        except ApiError:
            return None

    def get(
        self, kind: str, namespace: str | None, name: str, *, api_version: str | None = None
    ) -> JsonObj | None:
        rtype = self.lookup(kind, api_version)
        obj = self._objects[rtype.key].get(self._key(rtype, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(
        self, kind: str, namespace: str | None = None, *, api_version: str | None = None
    ) -> list[JsonObj]:
        """Every stored object of a kind (in a namespace), sorted by namespace/name."""
        rtype = self.lookup(kind, api_version)
        store = self._objects[rtype.key]
        return [
            copy.deepcopy(store[k]) for k in sorted(store) if namespace is None or k[0] == namespace
        ]

    # ------------------------------------------------------------------ faults

    def drop_watches(self, *, graceful: bool = False) -> int:
        """Close every open watch stream; returns how many.

        Abruptly by default (the connection is closed mid-stream: the client
        sees a payload error); graceful=True ends the chunked stream cleanly,
        as a server-side timeout does.
        """
        for w in self._watches:
            w.queue.put_nowait((_END if graceful else _DROP, None))
        return len(self._watches)

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK now on every watch that allows them; returns how many."""
        count = 0
        for w in self._watches:
            if w.bookmarks:
                w.queue.put_nowait(("bookmark", self._rv))
                count += 1
        return count

    def fail_next_watches(self, n: int = 1, status: int = 410) -> None:
        """The next n watch requests get one ERROR event (Status code ``status``)."""
        self._fail_watches.extend([status] * n)

    def fail_next_lists(self, n: int = 1, status: int = 500) -> None:
        """The next n list requests get an HTTP error Status ``status``."""
        self._fail_lists.extend([status] * n)

    def expire_before(self, rv: int | str) -> None:
        """Versions older than rv expire: watches/lists from them get 410."""
        self._oldest_valid = max(self._oldest_valid, int(rv))
        while self._history and self._history[0].rv <= self._oldest_valid:
            self._history.popleft()

    def compact(self) -> None:
        """Expire every version older than the current one."""
        self.expire_before(self._rv)

    @property
    def oldest_valid_version(self) -> str:
        return str(self._oldest_valid)

    # ------------------------------------------------------------------ inspection

    def watches(self, resource: str | None = None) -> list[WatchInfo]:
        """Open watches (of a plural or kind)."""
        return [
            WatchInfo(
                w.rtype.plural,
                w.rtype.group,
                w.version,
                w.namespace,
                w.labels.text,
                w.fields.text,
                w.bookmarks,
            )
            for w in self._watches
            if resource is None or resource in (w.rtype.plural, w.rtype.kind)
        ]

    async def wait_watches(
        self, count: int = 1, resource: str | None = None, *, timeout: float = 5.0
    ) -> None:
        """Wait until at least ``count`` watches (of ``resource``) are open."""
        deadline = time.monotonic() + timeout
        while len(self.watches(resource)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.watches(resource))} watches of {resource or 'anything'} "
                    f"open, wanted {count}"
                )
            await asyncio.sleep(0.01)

    def count(self, verb: str, resource: str | None = None) -> int:
        """How many requests of a verb (list, watch, ...) for a plural were served."""
        return sum(
            1
            for r in self.requests
            if r.verb == verb and (resource is None or r.resource == resource)
        )

    # ------------------------------------------------------------------ storage

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "") if rtype.namespaced else "", name)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _write(
        self,
        rtype: ResourceType,
        body: JsonObj,
        mode: Literal["create", "update", "upsert"],
        *,
        status_only: bool = False,
    ) -> tuple[JsonObj, bool]:
        """Store ``body`` (owned by the callee); returns (stored, created)."""
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        name = meta.get("name")
        if not name and mode != "update" and meta.get("generateName"):
            name = meta["name"] = str(meta["generateName"]) + secrets.token_hex(3)[:5]
        if not isinstance(name, str) or not name:
            raise ApiError(422, "metadata.name: Required value: name or generateName is required")
        if rtype.namespaced:
            namespace = meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = ""
        key = (namespace, name)
        store = self._objects[rtype.key]
        old = store.get(key)
        body["apiVersion"] = rtype.api_version()
        body["kind"] = rtype.kind
        if old is None:
            if mode == "update":
                raise self._not_found(rtype, name)
            meta.pop("deletionTimestamp", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            rv = self._next_rv()
            meta["resourceVersion"] = str(rv)
            store[key] = body
            self._record(_Event(rv, "ADDED", rtype, body, None))
            return body, True
        if mode == "create":
            raise ApiError(
                409,
                f'{rtype.resource} "{name}" already exists',
                "AlreadyExists",
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )
        expected = meta.get("resourceVersion")
        old_meta = _meta(old)
        if expected and str(expected) != old_meta.get("resourceVersion"):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {rtype.resource} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                "Conflict",
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )
        if status_only:
            body = {**old, "status": body.get("status")}
            if body["status"] is None:
                del body["status"]
            body["metadata"] = meta = dict(old_meta)
        meta["uid"] = old_meta.get("uid")
        meta["creationTimestamp"] = old_meta.get("creationTimestamp")
        generation = int(old_meta.get("generation") or 1)
        if _content(body) != _content(old):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if _comparable(body) == _comparable(old):
            return old, False
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        store[key] = body
        self._record(_Event(rv, "MODIFIED", rtype, body, old))
        return body, False

    def _remove(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonObj:
        store = self._objects[rtype.key]
        key = self._key(rtype, namespace, name)
        old = store.pop(key, None)
        if old is None:
            raise self._not_found(rtype, name)
        rv = self._next_rv()
        final = _with_rv(old, rv)
        self._record(_Event(rv, "DELETED", rtype, final, old))
        return final

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            404,
            f'{rtype.resource} "{name}" not found',
            "NotFound",
            {"name": name, "group": rtype.group, "kind": rtype.plural},
        )

    def _record(self, ev: _Event) -> None:
        self._history.append(ev)
        while len(self._history) > self.max_history:
            dropped = self._history.popleft()
            self._oldest_valid = max(self._oldest_valid, dropped.rv)
        for w in self._watches:
            out = w.translate(ev)
            if out is not None:
                w.queue.put_nowait(("event", out))

    def _state_at(self, rtype: ResourceType, rv: int) -> dict[tuple[str, str], JsonObj]:
        """The objects of a resource as they were at ``rv`` (rv must not be expired)."""
        state = dict(self._objects[rtype.key])
        for ev in reversed(self._history):
            if ev.rv <= rv:
                break
            if ev.rtype.key != rtype.key:
                continue
            meta = _meta(ev.obj)
            key = (str(meta.get("namespace") or ""), str(meta.get("name")))
            if ev.prev is None:
                state.pop(key, None)
            else:
                state[key] = ev.prev
        return state

    def _expired(self, rv: int, what: str = "resource version") -> ApiError:
        return ApiError(410, f"too old {what}: {rv} ({self._oldest_valid})", "Expired")

    # ------------------------------------------------------------------ HTTP

    def _present(self, obj: Mapping[str, Any], rtype: ResourceType, version: str) -> JsonObj:
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": rtype.api_version(version), "kind": rtype.kind, **rest}

    def _authorized(self, request: web.Request) -> bool:
        if not self._auth:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self._tokens

    def _log(self, request: web.Request, verb: str, resource: str, status: int) -> None:
        self.requests.append(
            RequestRecord(request.method, request.path, dict(request.query), verb, resource, status)
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as err:
            verb, resource = request.get(_ROUTE, ("error", ""))
            self._log(request, verb, resource, err.code)
            return web.json_response(err.status, status=err.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response(
                {
                    "major": "1",
                    "minor": "30",
                    "gitVersion": "v1.30.0-xdsd-test",
                    "platform": "linux/amd64",
                }
            )
        if not self._authorized(request):
            self._log(request, "unauthorized", "", 401)
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            raise ApiError(404, "the server could not find the requested resource")
        if parts[0] == "api":
            if len(parts) == 1:
                return web.json_response(
                    {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
                )
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return web.json_response(self._group_list())
            if len(parts) == 2:
                return web.json_response(self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        if group == "authentication.k8s.io" and version == "v1" and rest == ["tokenreviews"]:
            request[_ROUTE] = ("tokenreview", "tokenreviews")
            if request.method != "POST":
                raise ApiError(405, "only POST is supported for tokenreviews")
            return await self._token_review(request)
        if not rest:
            return web.json_response(self._resource_list(group, version))
        watch_path = rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = self._find(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        rtype = self._find(group, version, rest[0])
        if rtype is None:
            raise ApiError(404, "the server could not find the requested resource")
        if namespace is not None and not rtype.namespaced:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub == "token" and rtype.key == ("", "serviceaccounts") and name is not None:
            request[_ROUTE] = ("create", "serviceaccounts/token")
            if request.method != "POST":
                raise ApiError(405, "only POST is supported for serviceaccounts/token")
            return await self._token_request(request, namespace or "", name)
        if sub is not None and sub != "status":
            raise ApiError(404, "the server could not find the requested resource")
        method = request.method
        query = request.query
        verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}
        verb = verbs.get(method, method.lower())
        if name is None and method == "GET":
            verb = "watch" if watch_path or _true(query.get("watch")) else "list"
        request[_ROUTE] = (verb, rtype.plural)
        if name is None:
            if method == "GET":
                if watch_path or _true(query.get("watch")):
                    return await self._watch(request, rtype, version, namespace)
                return self._list(request, rtype, version, namespace)
            if method == "POST":
                if rtype.namespaced and namespace is None:
                    raise ApiError(405, "POST needs a namespaced path")
                body = await self._body(request)
                self._check_body(body, rtype, namespace)
                if rtype.plural == "pods" and rtype.group == "":
                    body = await self._admit(body, namespace or "")
                stored, _ = self._write(rtype, body, "create")
                self._log(request, "create", rtype.plural, 201)
                return web.json_response(self._present(stored, rtype, version), status=201)
            raise ApiError(405, f"{method} is not supported on collections")
        if rtype.namespaced and namespace is None:
            raise ApiError(404, "the server could not find the requested resource")
        key = self._key(rtype, namespace, name)
        store = self._objects[rtype.key]
        if method == "GET":
            obj = store.get(key)
            if obj is None:
                raise self._not_found(rtype, name)
            self._log(request, "get", rtype.plural, 200)
            return web.json_response(self._present(obj, rtype, version))
        if method == "PUT":
            body = await self._body(request)
            self._check_body(body, rtype, namespace)
            if _meta(body).get("name") not in (None, name):
                raise ApiError(400, "the name of the object does not match the name on the URL")
            body["metadata"]["name"] = name
            stored, _ = self._write(rtype, body, "update", status_only=sub == "status")
            self._log(request, "update", rtype.plural, 200)
            return web.json_response(self._present(stored, rtype, version))
        if method == "PATCH":
            stored, created = await self._patch(request, rtype, namespace, name, sub)
            self._log(request, "patch", rtype.plural, 201 if created else 200)
            return web.json_response(
                self._present(stored, rtype, version), status=201 if created else 200
            )
        if method == "DELETE":
            if sub is not None:
                raise ApiError(405, "DELETE is not supported on subresources")
            final = self._remove(rtype, namespace, name)
            self._log(request, "delete", rtype.plural, 200)
            return web.json_response(self._present(final, rtype, version))
        raise ApiError(405, f"{method} is not supported")

    def _find(self, group: str, version: str, plural: str) -> ResourceType | None:
        rtype = self._types.get((group, plural))
        if rtype is None or version not in rtype.versions:
            return None
        return rtype

    def add_mutating_webhook(self, hook: MutatingWebhook) -> None:
        self.mutating_webhooks.append(hook)

    async def _admit(self, pod: JsonObj, namespace: str) -> JsonObj:
        """Pod CREATE through the mutating webhooks, as the API server calls them."""
        import ssl

        import aiohttp

        for hook in self.mutating_webhooks:
            uid = str(uuid.uuid4())
            review = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": uid,
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                    "name": pod["metadata"].get("name", ""),
                    "namespace": namespace,
                    "operation": "CREATE",
                    "userInfo": {
                        "username": "system:serviceaccount:kube-system:replicaset-controller"
                    },
                    "object": pod,
                    "oldObject": None,
                    "dryRun": False,
                    "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
                },
            }
            self.admission_reviews.append(copy.deepcopy(review))
            tls = ssl.create_default_context(cafile=hook.ca_file)
            try:
                async with (
                    aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=hook.timeout)
                    ) as session,
                    session.post(
                        hook.url,
                        data=json.dumps(review),
                        headers={"Content-Type": "application/json", "Accept": "application/json"},
                        ssl=tls,
                    ) as resp,
                ):
                    text = await resp.text()
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}: {text.strip()}")
                    response = json.loads(text)["response"]
                    if response.get("uid") != uid:
                        raise ValueError(
                            f"expected response.uid={uid!r}, got {response.get('uid')!r}"
                        )
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                if hook.failure_policy == "Ignore":
                    continue
                raise ApiError(
                    500, f'Internal error occurred: failed calling webhook "{hook.name}": {exc}'
                ) from None
            if not response.get("allowed"):
                message = (response.get("status") or {}).get("message", "")
                raise ApiError(
                    400, f'admission webhook "{hook.name}" denied the request: {message}'
                )
            if "patch" in response:
                if response.get("patchType") != "JSONPatch":
                    raise ApiError(500, f"webhook {hook.name}: patchType must be JSONPatch")
                ops = json.loads(base64.b64decode(response["patch"]))
                try:
                    pod = json_patch(pod, ops)
                except ValueError as exc:
                    raise ApiError(500, f"webhook {hook.name}: bad patch: {exc}") from None
        return pod

    async def _body(self, request: web.Request) -> JsonObj:
        try:
            raw = await request.read()
            body = yaml.safe_load(raw) if "yaml" in request.content_type else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"invalid body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be an object")
        if not isinstance(body.get("metadata"), dict):
            body["metadata"] = {}
        return body

    def _check_body(self, body: JsonObj, rtype: ResourceType, namespace: str | None) -> None:
        ns = body["metadata"].get("namespace")
        if namespace is not None:
            if ns not in (None, "", namespace):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            body["metadata"]["namespace"] = namespace
        kind = body.get("kind")
        if kind not in (None, rtype.kind):
            raise ApiError(400, f"kind {kind!r} does not match {rtype.kind}")

    async def _patch(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        sub: str | None,
    ) -> tuple[JsonObj, bool]:
        ctype = request.content_type
        try:
            raw = await request.read()
            patch = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"invalid patch: {exc}") from None
        key = self._key(rtype, namespace, name)
        current = self._objects[rtype.key].get(key)
        if ctype == "application/apply-patch+yaml":
            if not isinstance(patch, dict):
                raise ApiError(400, "an apply patch must be an object")
            base: JsonObj = copy.deepcopy(current) if current is not None else {}
            body = merge_patch(base, patch)
            meta = body.setdefault("metadata", {})
            meta["name"] = name
            if namespace is not None:
                meta["namespace"] = namespace
            meta.pop("resourceVersion", None)
            return self._write(
                rtype, body, "upsert", status_only=sub == "status" and current is not None
            )
        if current is None:
            raise self._not_found(rtype, name)
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "a JSON patch must be a list")
            try:
                body = json_patch(current, patch)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from None
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(patch, dict):
                raise ApiError(400, "a merge patch must be an object")
            body = merge_patch(copy.deepcopy(current), patch)
            if isinstance(body.get("metadata"), dict) and not _meta(patch).get("resourceVersion"):
                body["metadata"].pop("resourceVersion", None)  # no precondition
        else:
            raise ApiError(415, f"the body of the request was in an unknown format: {ctype}")
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(422, "the patch leaves no object")
        body["metadata"]["name"] = name
        if namespace is not None:
            body["metadata"]["namespace"] = namespace
        return self._write(rtype, body, "update", status_only=sub == "status")

    def _selectors(self, request: web.Request) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (
                LabelSelector.parse(request.query.get("labelSelector")),
                FieldSelector.parse(request.query.get("fieldSelector")),
            )
        except SelectorError as exc:
            raise ApiError(400, str(exc)) from None

    def _parse_rv(self, text: str) -> int:
        try:
            rv = int(text)
        except ValueError:
            raise ApiError(400, f"invalid resource version {text!r}") from None
        if rv < 0:
            raise ApiError(400, f"invalid resource version {text!r}")
        return rv

    def _list(
        self, request: web.Request, rtype: ResourceType, version: str, namespace: str | None
    ) -> web.Response:
        query = request.query
        if self._fail_lists:
            code = self._fail_lists.pop(0)
            self._log(request, "list", rtype.plural, code)
            status = _status(code, _REASONS.get(code, "Unknown"), f"injected failure {code}")
            return web.json_response(status, status=code)
        labels, fields = self._selectors(request)
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        cont = query.get("continue", "")
        start_after: tuple[str, str] | None = None
        if cont:
            list_rv, start_after = _decode_continue(cont)
            if list_rv < self._oldest_valid:
                raise ApiError(
                    410,
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                    "Expired",
                )
            state = self._state_at(rtype, list_rv)
        elif rv_text in ("", "0"):
            if match == "Exact":
                raise ApiError(400, "resourceVersionMatch Exact needs a resourceVersion")
            list_rv = self._rv
            state = self._objects[rtype.key]
        else:
            wanted = self._parse_rv(rv_text)
            if wanted < self._oldest_valid:
                raise self._expired(wanted)
            if wanted > self._rv:
                raise ApiError(
                    504, f"Too large resource version: {wanted}, current: {self._rv}", "Timeout"
                )
            if match == "Exact":
                list_rv = wanted
                state = self._state_at(rtype, wanted)
            else:
                list_rv = self._rv
                state = self._objects[rtype.key]
        keys = sorted(
            k
            for k, obj in state.items()
            if (namespace is None or k[0] == namespace)
            and labels.matches(obj)
            and fields.matches(obj)
        )
        if start_after is not None:
            keys = [k for k in keys if k > start_after]
        meta: JsonObj = {"resourceVersion": str(list_rv)}
        limit_text = query.get("limit")
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                raise ApiError(400, f"invalid limit {limit_text!r}") from None
            if 0 < limit < len(keys):
                meta["continue"] = _encode_continue(list_rv, keys[limit - 1])
                meta["remainingItemCount"] = len(keys) - limit
                keys = keys[:limit]
        type_meta = self.list_items_type_meta or not rtype.builtin
        items = [
            self._present(state[k], rtype, version)
            if type_meta
            else {k2: v for k2, v in state[k].items() if k2 not in ("apiVersion", "kind")}
            for k in keys
        ]
        self._log(request, "list", rtype.plural, 200)
        return web.json_response(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version(version),
                "metadata": meta,
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, rtype: ResourceType, version: str, namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        labels, fields = self._selectors(request)
        bookmarks = _true(query.get("allowWatchBookmarks"))
        timeout: float | None = None
        if query.get("timeoutSeconds"):
            try:
                timeout = float(query["timeoutSeconds"])
            except ValueError:
                raise ApiError(400, "invalid timeoutSeconds") from None
        rv_text = query.get("resourceVersion", "")
        send_initial = _true(query.get("sendInitialEvents"))
        if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
            raise ApiError(422, "sendInitialEvents requires resourceVersionMatch=NotOlderThan")
        if send_initial and not bookmarks:
            raise ApiError(422, "sendInitialEvents requires allowWatchBookmarks=true")
        initial: list[tuple[str, Any]] = []
        error: JsonObj | None = None
        if self._fail_watches:
            code = self._fail_watches.pop(0)
            if code == 410:
                error = _status(
                    410,
                    "Expired",
                    f"too old resource version: {rv_text or 0} ({self._oldest_valid})",
                )
            else:
                error = _status(code, _REASONS.get(code, "Unknown"), f"injected failure {code}")
        w = _Watch(rtype, version, namespace, labels, fields, bookmarks)
        if error is None:
            if rv_text in ("", "0") or send_initial:
                if rv_text not in ("", "0"):
                    wanted = self._parse_rv(rv_text)
                    if wanted < self._oldest_valid:
                        error = self._expired(wanted).status
                store = self._objects[rtype.key]
                for k in sorted(store):
                    if w.passes(store[k]):
                        initial.append(("event", ("ADDED", store[k])))
                if send_initial and bookmarks:
                    initial.append(("initial-end", self._rv))
            else:
                wanted = self._parse_rv(rv_text)
                if wanted > self._rv:
                    raise ApiError(
                        504, f"Too large resource version: {wanted}, current: {self._rv}", "Timeout"
                    )
                if wanted < self._oldest_valid:
                    error = self._expired(wanted).status
                else:
                    for ev in self._history:
                        if ev.rv > wanted:
                            out = w.translate(ev)
                            if out is not None:
                                initial.append(("event", out))
        self._log(request, "watch", rtype.plural, 200)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        if error is not None:
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            await resp.write_eof()
            return resp
        self._watches.add(w)  # no await since the initial events were computed
        try:
            await resp.prepare(request)
            if await self._stream(request, resp, w, initial, timeout):
                await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watches.discard(w)
            w.closed.set()
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        w: _Watch,
        initial: list[tuple[str, Any]],
        timeout: float | None,
    ) -> bool:
        """Stream events; True to end the response cleanly, False if it was dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        last_bookmark = loop.time()

        def line(kind: str, obj: Mapping[str, Any]) -> bytes:
            return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"

        def bookmark(rv: int, initial_end: bool = False) -> bytes:
            meta: JsonObj = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return line(
                "BOOKMARK",
                {
                    "kind": w.rtype.kind,
                    "apiVersion": w.rtype.api_version(w.version),
                    "metadata": meta,
                },
            )

        pending = list(initial)
        while True:
            if pending:
                item = pending.pop(0)
            else:
                now = loop.time()
                next_bookmark = last_bookmark + self.bookmark_interval
                wait = next_bookmark - now if w.bookmarks else None
                if deadline is not None:
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                try:
                    if wait is None:
                        item = await w.queue.get()
                    else:
                        async with asyncio.timeout(max(wait, 0)):
                            item = await w.queue.get()
                except TimeoutError:
                    now = loop.time()
                    if deadline is not None and now >= deadline:
                        return True
                    if (
                        w.bookmarks
                        and now >= last_bookmark + self.bookmark_interval
                        and w.queue.empty()
                    ):
                        await resp.write(bookmark(self._rv))
                        last_bookmark = now
                    continue
            kind, payload = item
            if kind == "event":
                etype, obj = payload
                await resp.write(line(etype, self._present(obj, w.rtype, w.version)))
            elif kind == "bookmark":
                await resp.write(bookmark(payload))
            elif kind == "initial-end":
                await resp.write(bookmark(payload, initial_end=True))
            elif kind == "wake":
                continue
            elif kind == _END:
                return True
            elif kind == _DROP:
                transport = request.transport
                if transport is not None:
                    transport.close()
                return False

    async def _token_review(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        token = str(spec.get("token") or "")
        requested = [str(a) for a in spec.get("audiences") or []]
        wanted = requested or list(self.api_audiences)
        info = self._review_tokens.get(token)
        status: JsonObj
        if info is None:
            status = {"authenticated": False, "user": {}, "error": "[invalid bearer token]"}
        else:
            common = [a for a in wanted if a in info.audiences]
            if not common:
                status = {
                    "authenticated": False,
                    "user": {},
                    "error": f"[invalid bearer token, token audiences {list(info.audiences)} "
                    f"is invalid for the target audiences {wanted}]",
                }
            else:
                status = {
                    "authenticated": True,
                    "user": {
                        "username": info.username,
                        "uid": info.uid,
                        "groups": list(info.groups),
                    },
                    "audiences": common,
                }
        self._log(request, "tokenreview", "tokenreviews", 201)
        return web.json_response(
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
            status=201,
        )

    async def _token_request(self, request: web.Request, namespace: str, sa: str) -> web.Response:
        """TokenRequest (what istioctl asks for its xDS bearer token): a new token that
        TokenReview then authenticates as the service account, for the audiences asked
        (the API server's own by default). The service account need not exist here."""
        body = await self._body(request)
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        audiences = [str(a) for a in spec.get("audiences") or []] or list(self.api_audiences)
        seconds = int(spec.get("expirationSeconds") or 3600)
        token = f"tokenrequest-{secrets.token_hex(16)}"
        self.add_token(
            token, username=f"system:serviceaccount:{namespace}:{sa}", audiences=audiences
        )
        self.issued_tokens.append((namespace, sa, tuple(audiences)))
        expires = datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._log(request, "create", "serviceaccounts/token", 201)
        return web.json_response(
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": sa, "namespace": namespace},
                "spec": {"audiences": audiences, "expirationSeconds": seconds},
                "status": {"token": token, "expirationTimestamp": expires},
            },
            status=201,
        )

    # ------------------------------------------------------------------ discovery

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"authentication.k8s.io": ["v1"]}
        for rt in self._types.values():
            if rt.group:
                versions = groups.setdefault(rt.group, [])
                versions.extend(v for v in rt.versions if v not in versions)
        return groups

    def _group(self, name: str) -> JsonObj:
        versions = self._group_versions().get(name)
        if versions is None:
            raise ApiError(404, "the server could not find the requested resource")
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _group_list(self) -> JsonObj:
        groups = [self._group(name) for name in self._group_versions()]
        for g in groups:
            del g["kind"], g["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> JsonObj:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[JsonObj] = [
            {
                "name": rt.plural,
                "singularName": rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": verbs,
            }
            for rt in self._types.values()
            if rt.group == group and version in rt.versions
        ]
        if group == "authentication.k8s.io" and version == "v1":
            resources.append(
                {
                    "name": "tokenreviews",
                    "singularName": "tokenreview",
                    "namespaced": False,
                    "kind": "TokenReview",
                    "verbs": ["create"],
                }
            )
        if not resources:
            raise ApiError(404, "the server could not find the requested resource")
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }


def make_object(
    kind: str,
    name: str,
    namespace: str | None = "default",
    *,
    api_version: str = "v1",
    labels: Mapping[str, str] | None = None,
    **body: Any,
) -> JsonObj:
    """A small object literal: make_object("ConfigMap", "x", data={"a": "b"})."""
    meta: JsonObj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **body}
