"""An Istio config object's `status`, in Istio's shape, from xdsd's validation result.

Pure: no I/O, no clock (the caller passes `now`). The shape follows
istio.io/api meta/v1alpha1 IstioStatus
(https://istio.io/latest/docs/reference/config/config-status/):

- `conditions`: one condition of type `Reconciled`: "True" (reason `Accepted`)
  when the object has no errors; "False" when it has, with reason
  `ServingLastGoodVersion` (a previous version is still served) or `Rejected`
  (nothing of it is served), and a message naming each error's field path.
  `lastTransitionTime` is kept from `previous` while the condition's status
  does not change.
- `validationMessages`: one AnalysisMessageBase per problem: `level` ERROR or
  WARNING, `type` {code, name} (xdsd's own codes, below); xdsd also sets
  `message` ("field.path: what is wrong"), which Istio's status schema
  (x-kubernetes-preserve-unknown-fields) keeps. Left out when there are none.
- `observedGeneration`: the object's `metadata.generation` the result is for.

`MANAGED_KEYS` are the status keys xdsd owns (others on the object are kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from xdsd.model.types import ConfigError

MANAGED_KEYS = ("conditions", "validationMessages", "observedGeneration")
CONDITION = "Reconciled"
# xdsd's message types (Istio's analyzers use IST0xxx codes).
NOT_SUPPORTED = {"code": "XDS0001", "name": "NotSupported"}
INVALID = {"code": "XDS0002", "name": "InvalidConfig"}


def _where(e: ConfigError) -> str:
    return f"{e.path}: {e.message}" if e.path else e.message


def object_status(
    errors: Iterable[ConfigError],
    *,
    generation: int,
    served: bool,
    now: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The managed part of the status for one object, given its problems.

    `served`: a version of the object is served (the current or a last good one).
    `now`: an RFC 3339 time for a new `lastTransitionTime`.
    `previous`: the object's current `status` (None or {} if it has none).
    """
    problems = list(errors)
    failed = [e for e in problems if e.severity == "error"]
    condition: dict[str, Any] = {"type": CONDITION, "status": "False" if failed else "True"}
    if failed:
        condition["reason"] = "ServingLastGoodVersion" if served else "Rejected"
        condition["message"] = "; ".join(_where(e) for e in failed)
    else:
        condition["reason"] = "Accepted"
        condition["message"] = (
            f"accepted with {len(problems)} warning(s)" if problems else "accepted"
        )
    condition["lastTransitionTime"] = now
    old = _condition(previous)
    if old is not None and old.get("status") == condition["status"]:
        condition["lastTransitionTime"] = old.get("lastTransitionTime") or now
    status: dict[str, Any] = {"conditions": [condition], "observedGeneration": generation}
    messages = [
        {
            "level": "ERROR" if e.severity == "error" else "WARNING",
            "type": dict(INVALID if e.severity == "error" else NOT_SUPPORTED),
            "message": _where(e),
        }
        for e in problems
    ]
    if messages:
        status["validationMessages"] = messages
    return status


def _condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not isinstance(status, Mapping):
        return None
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == CONDITION:
            return c
    return None


def managed_part(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys of a status xdsd owns (to compare with `object_status`)."""
    if not isinstance(status, Mapping):
        return {}
    return {k: status[k] for k in MANAGED_KEYS if status.get(k) is not None}


def status_patch(new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch setting the managed keys to `new` (absent keys removed)."""
    return {"status": {k: new.get(k) for k in MANAGED_KEYS}}
