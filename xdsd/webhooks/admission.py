"""AdmissionReview in, AdmissionReview out: the `/inject` and `/validate` handlers.

Answers follow istiod (pkg/kube/inject/webhook.go serveInject, pkg/webhooks/validation/
server/server.go serve):

- no body, or one over the size limit: HTTP 400 with a plain-text reason; a
  Content-Type other than `application/json`: HTTP 415 (the API server always sends
  JSON, so only a stranger gets these);
- a body that is not an AdmissionReview (bad JSON, no `request`, no `request.uid`,
  another apiVersion): HTTP 200 with an AdmissionReview whose response is not
  allowed and whose `status.message` says what is wrong;
- `/inject` for something that is not a Pod CREATE, for a namespace xdsd is not
  configured for (`--namespace`), or for a pod that is not to be injected: allowed,
  no patch; a pod whose annotations cannot be honoured: not allowed, with the reason
  (istiod's answer to a failed injection);
- `/validate`: allowed, with `warnings` for warning-level findings; not allowed, with
  every error and its field path in `status.message`.

Nothing here raises to the HTTP layer: an unexpected error becomes a denial with a
message (and a log line with the traceback), never an HTTP 500.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from xdsd.model.parse import parse_documents
from xdsd.model.snapshot import MeshSnapshot
from xdsd.webhooks.config import load_injector_config
from xdsd.webhooks.inject import (
    InjectionError,
    InjectSettings,
    effective_revision,
    inject_pod,
    injection_required,
    parse_inject_path,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a Pod or an Istio object is far smaller
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ISTIO_GROUPS = frozenset(
    {"networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io"}
)
# Top-level fields of a custom resource (istiod's validFields).
_VALID_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: a JSON AdmissionReview (`review`) or plain text."""

    status: int = 200
    review: Mapping[str, Any] | None = None
    text: str = ""


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # istiod's names. Unlike istiod (which counts every answered request as a
        # success), success here is a patch returned; skips and failures are apart.
        self.requests = Counter(
            "sidecar_injection_requests", "Sidecar injection requests.", registry=registry
        )
        self.success = Counter(
            "sidecar_injection_success", "Pods injected (a patch returned).", registry=registry
        )
        self.skip = Counter(
            "sidecar_injection_skip", "Requests answered without injection.", registry=registry
        )
        self.failure = Counter(
            "sidecar_injection_failure",
            "Injection requests that failed (bad input, or the pod could not be injected).",
            registry=registry,
        )
        labels = ["group", "version", "resource"]
        self.passed = Counter(
            "galley_validation_passed", "Resource is valid.", labels, registry=registry
        )
        self.failed = Counter(
            "galley_validation_failed",
            "Resource validation failed.",
            [*labels, "reason"],
            registry=registry,
        )
        self.http_error = Counter(
            "galley_validation_http_error",
            "Resource validation HTTP serve errors.",
            ["status"],
            registry=registry,
        )


def _review(api_version: str, uid: str, response: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": {"uid": uid, **response},
    }


def _denied(message: str, code: int = 400) -> dict[str, Any]:
    return {"allowed": False, "status": {"message": message, "code": code}}


@dataclass(frozen=True)
class _Request:
    api_version: str
    uid: str
    request: Mapping[str, Any]


def _decode(body: bytes) -> _Request | str:
    """The AdmissionReview's request, or what is wrong with the body."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return f"could not decode body: {e}"
    if not isinstance(doc, dict):
        return "could not decode body: not a JSON object"
    api_version = doc.get("apiVersion")
    if doc.get("kind") != "AdmissionReview" or api_version not in API_VERSIONS:
        return (
            "could not decode object: not an AdmissionReview of "
            f"{' or '.join(API_VERSIONS)} (apiVersion {api_version!r}, kind {doc.get('kind')!r})"
        )
    request = doc.get("request")
    if not isinstance(request, dict):
        return "could not decode object: the AdmissionReview has no request"
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        return "could not decode object: request.uid is missing"
    return _Request(str(api_version), uid, request)


def read_problem(body: bytes | None, content_type: str, limit: int) -> Answer | None:
    """istiod's HTTP-level answers (no body, too large, not JSON), or None."""
    if body is None:
        return Answer(400, text=f"request entity too large: limit is {limit}\n")
    if not body:
        return Answer(400, text="no body found\n")
    if content_type != "application/json":
        return Answer(415, text="invalid Content-Type, want `application/json`\n")
    return None


@dataclass(frozen=True)
class WebhookContext:
    """What the handlers read from the running app."""

    snapshot: Callable[[], MeshSnapshot]
    ready: Callable[[], bool]
    # Namespaces xdsd is configured for (`--namespace`; None: all).
    namespaces: frozenset[str] | None = None
    config_cluster_id: str = "Kubernetes"
    inject: InjectSettings = field(default_factory=InjectSettings)


class Handlers:
    def __init__(self, ctx: WebhookContext, metrics: WebhookMetrics) -> None:
        self.ctx = ctx
        self.metrics = metrics

    # -- /inject ----------------------------------------------------------------------

    def inject(self, body: bytes | None, content_type: str, path: str) -> Answer:
        m = self.metrics
        m.requests.inc()
        problem = read_problem(body, content_type, MAX_BODY_BYTES)
        if problem is not None:
            m.failure.inc()
            log.warning("inject %s: %s", path, problem.text.strip())
            return problem
        assert body is not None
        req = _decode(body)
        if isinstance(req, str):
            m.failure.inc()
            log.warning("inject %s: %s", path, req)
            return Answer(review=_review(API_VERSIONS[0], "", _denied(req)))
        try:
            response, outcome = self._inject(req, path)
        except Exception as e:  # our bug: deny with a reason rather than an HTTP 500
            log.exception("inject %s: request %s failed", path, req.uid)
            response, outcome = (
                _denied(f"injection failed: {type(e).__name__}: {e}", 500),
                "failure",
            )
        {"success": m.success, "skip": m.skip, "failure": m.failure}[outcome].inc()
        return Answer(review=_review(req.api_version, req.uid, response))

    def _inject(self, req: _Request, path: str) -> tuple[dict[str, Any], str]:
        r = req.request
        kind = r.get("kind") or {}
        resource = r.get("resource") or {}
        is_pod = (
            isinstance(kind, dict)
            and kind.get("kind") == "Pod"
            and kind.get("group", "") == ""
            and (not isinstance(resource, dict) or resource.get("resource", "pods") == "pods")
            and not r.get("subResource")
        )
        allowed: dict[str, Any] = {"allowed": True}
        if not is_pod:
            log.info("inject %s: %s is not a Pod: allowed, not injected", path, kind)
            return allowed, "skip"
        if r.get("operation", "CREATE") != "CREATE":
            return allowed, "skip"
        pod = r.get("object")
        if not isinstance(pod, dict):
            return _denied("could not decode object: request.object is not a Pod"), "failure"
        meta: dict[str, Any] = m if isinstance(m := pod.get("metadata"), dict) else {}
        namespace = str(meta.get("namespace") or r.get("namespace") or "default")
        name = str(meta.get("name") or meta.get("generateName") or "")
        where = f"pod {namespace}/{name}"
        if self.ctx.namespaces is not None and namespace not in self.ctx.namespaces:
            log.info("inject %s: %s: namespace not watched by xdsd: not injected", path, where)
            return allowed, "skip"
        if not self.ctx.ready():
            return (
                _denied("xdsd has not loaded its config yet: retry", 503),
                "failure",
            )
        snapshot = self.ctx.snapshot()
        config = load_injector_config(snapshot)
        envs = parse_inject_path(path)
        cluster = envs.get("ISTIO_META_CLUSTER_ID", "")
        ns_labels = None
        if not cluster or cluster == self.ctx.config_cluster_id:
            # Namespaces are known for the config cluster only; a remote cluster's
            # namespaceSelector decided already.
            for ns in snapshot.configs_of("Namespace"):
                if ns.name == namespace:
                    ns_labels = ns.labels
                    break
        revision = effective_revision(config, self.ctx.inject)
        decision = injection_required(pod, namespace, config, ns_labels, revision)
        if not decision.inject:
            log.info("inject %s: %s not injected: %s", path, where, decision.reason)
            return allowed, "skip"
        try:
            injected = inject_pod(pod, namespace, config, self.ctx.inject, envs)
        except InjectionError as e:
            log.warning("inject %s: %s: %s", path, where, e)
            return _denied(f"injection failed: {e}"), "failure"
        patch = base64.b64encode(json.dumps(injected.patch).encode()).decode("ascii")
        log.info("inject %s: %s injected (%s)", path, where, config.source)
        return {"allowed": True, "patchType": "JSONPatch", "patch": patch}, "success"

    # -- /validate --------------------------------------------------------------------

    def validate(self, body: bytes | None, content_type: str) -> Answer:
        m = self.metrics
        problem = read_problem(body, content_type, MAX_BODY_BYTES)
        if problem is not None:
            m.http_error.labels(str(problem.status)).inc()
            return problem
        assert body is not None
        req = _decode(body)
        if isinstance(req, str):
            return Answer(review=_review(API_VERSIONS[0], "", _denied(req)))
        try:
            response = self._validate(req.request)
        except Exception as e:
            log.exception("validate: request %s failed", req.uid)
            response = _denied(f"validation failed: {type(e).__name__}: {e}", 500)
        return Answer(review=_review(req.api_version, req.uid, response))

    def _validate(self, r: Mapping[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = x if isinstance(x := r.get("resource"), dict) else {}
        labels = (
            str(res.get("group", "")),
            str(res.get("version", "")),
            str(res.get("resource", "")),
        )
        dry_run = bool(r.get("dryRun"))

        def failed(reason: str, message: str) -> dict[str, Any]:
            if not dry_run:
                self.metrics.failed.labels(*labels, reason).inc()
            return _denied(message + (" (dry run)" if dry_run else ""))

        if r.get("operation") not in ("CREATE", "UPDATE"):
            if not dry_run:
                self.metrics.failed.labels(*labels, "unsupported_operation").inc()
            return {"allowed": True}
        obj = r.get("object")
        if not isinstance(obj, dict):
            return failed("yaml_decode_error", "cannot decode configuration: not an object")
        api_version = str(obj.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        kind = str(obj.get("kind", ""))
        if group not in ISTIO_GROUPS:
            return failed("unknown_type", f"unrecognized type {api_version}, Kind={kind}")
        meta: dict[str, Any] = x if isinstance(x := obj.get("metadata"), dict) else {}
        for key in obj:
            if key not in _VALID_FIELDS:
                ns, name = r.get("namespace", ""), meta.get("name", "")
                return failed(
                    "invalid_resource", f"unknown field {key!r} on {kind} resource {ns}/{name}"
                )
        result = parse_documents(
            [obj],
            f"admission/{r.get('uid', '')}",
            default_namespace=str(r.get("namespace") or "default"),
            domain_suffix=self.ctx.snapshot().domain_suffix,
        )
        errors = [e for e in result.errors if e.severity == "error"]
        warnings = [e for e in result.errors if e.severity != "error"]
        if not result.objects and not errors:
            # xdsd's parser skipped it (a kind or version it does not know).
            why = "; ".join(w.message for w in warnings) or "not an Istio kind xdsd knows"
            return failed("unknown_type", f"unrecognized type {api_version}, Kind={kind}: {why}")
        if errors:
            text = "; ".join(f"{e.path}: {e.message}" if e.path else e.message for e in errors)
            return failed("invalid_resource", f"configuration is invalid: {text}")
        self.metrics.passed.labels(*labels).inc()
        out: dict[str, Any] = {"allowed": True}
        if warnings:
            out["warnings"] = [f"{w.path}: {w.message}" if w.path else w.message for w in warnings]
        return out
