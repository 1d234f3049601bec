"""Kubernetes label selectors (matchLabels and matchExpressions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (metav1.LabelSelector): every requirement holds.

    An empty selector matches everything, as Kubernetes has it; the injector's
    never/always selectors treat an empty one as matching nothing (see `selects`).
    """

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def selects(self, labels: Mapping[str, str]) -> bool:
        """`matches`, but an empty selector selects nothing (istiod's injector)."""
        return bool(self.requirements) and self.matches(labels)


def parse_selector(doc: Any, where: str, problems: list[tuple[str, str]]) -> LabelSelector | None:
    if not isinstance(doc, Mapping):
        problems.append((where, "not a label selector: ignored"))
        return None
    reqs: list[Requirement] = []
    labels = doc.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        problems.append((f"{where}.matchLabels", "not a map: selector ignored"))
        return None
    reqs.extend(Requirement(str(k), "In", (str(v),)) for k, v in labels.items())
    for i, expr in enumerate(doc.get("matchExpressions") or ()):
        op = expr.get("operator") if isinstance(expr, Mapping) else None
        key = expr.get("key") if isinstance(expr, Mapping) else None
        values = expr.get("values") or () if isinstance(expr, Mapping) else ()
        if op not in ("In", "NotIn", "Exists", "DoesNotExist") or not isinstance(key, str):
            problems.append((f"{where}.matchExpressions[{i}]", "invalid: selector ignored"))
            return None
        reqs.append(Requirement(key, op, tuple(str(v) for v in values)))
    return LabelSelector(tuple(reqs))
