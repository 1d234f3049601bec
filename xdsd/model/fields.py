"""Typed, never-raising readers for untrusted YAML values.

Every reader takes the parent mapping, the key and the parent's field path,
records a ConfigError naming the exact path when the value has the wrong type
or range, and returns None (or a safe default) instead of raising.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from xdsd.model.types import ConfigError

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9])?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Spec size limit after YAML alias expansion (a "billion laughs" document must
# not turn into a structure every later stage walks for minutes).
MAX_SPEC_NODES = 200_000


class Issues:
    """Collects the problems of one document; `failed` once any is an error."""

    def __init__(self, source: str, obj: str = "") -> None:
        self.source = source
        self.obj = obj
        self.errors: list[ConfigError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(self.source, self.obj, path, message, "error"))

    def warn(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(self.source, self.obj, path, message, "warning"))

    @property
    def failed(self) -> bool:
        return any(e.severity == "error" for e in self.errors)


def join(path: str, key: object) -> str:
    """`spec` + `ports` -> `spec.ports`; keys that are not identifiers get brackets."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    text = str(key)
    part = text if _IDENT.fullmatch(text) else f"[{text!r}]"
    if not path:
        return part
    return f"{path}{part}" if part.startswith("[") else f"{path}.{part}"


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def get_map(
    iss: Issues, parent: Mapping[Any, Any], key: str, path: str, *, required: bool = False
) -> Mapping[Any, Any] | None:
    value = parent.get(key)
    where = join(path, key)
    if value is None:
        if required:
            iss.error(where, "is required")
        return None
    if not isinstance(value, Mapping):
        iss.error(where, f"must be a mapping, not a {type_name(value)}")
        return None
    return value


def get_list(
    iss: Issues, parent: Mapping[Any, Any], key: str, path: str, *, required: bool = False
) -> list[Any] | None:
    value = parent.get(key)
    where = join(path, key)
    if value is None:
        if required:
            iss.error(where, "is required")
        return None
    if not isinstance(value, list | tuple):
        iss.error(where, f"must be a list, not a {type_name(value)}")
        return None
    return list(value)


def items(
    iss: Issues, values: list[Any] | None, path: str
) -> Iterator[tuple[str, Mapping[Any, Any]]]:
    """The mapping entries of a list (with their paths); other entries are errors."""
    for i, item in enumerate(values or ()):
        where = f"{path}[{i}]"
        if isinstance(item, Mapping):
            yield where, item
        else:
            iss.error(where, f"must be a mapping, not a {type_name(item)}")


def get_str(
    iss: Issues,
    parent: Mapping[Any, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
) -> str | None:
    value = parent.get(key)
    where = join(path, key)
    if value is None or value == "":
        if required:
            iss.error(where, "is required")
        return None
    if not isinstance(value, str):
        iss.error(where, f"must be a string, not a {type_name(value)}")
        return None
    return value


def get_int(
    iss: Issues,
    parent: Mapping[Any, Any],
    key: str,
    path: str,
    *,
    lo: int,
    hi: int,
    required: bool = False,
) -> int | None:
    value = parent.get(key)
    where = join(path, key)
    if value is None:
        if required:
            iss.error(where, "is required")
        return None
    # bool is an int in Python; `port: true` is a mistake, not port 1.
    if not isinstance(value, int) or isinstance(value, bool):
        iss.error(where, f"must be an integer, not a {type_name(value)}")
        return None
    if not lo <= value <= hi:
        iss.error(where, f"{value} is out of range {lo}..{hi}")
        return None
    return value


def get_port(
    iss: Issues, parent: Mapping[Any, Any], key: str, path: str, *, required: bool = False
) -> int | None:
    return get_int(iss, parent, key, path, lo=1, hi=65535, required=required)


def get_bool(iss: Issues, parent: Mapping[Any, Any], key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        iss.error(join(path, key), f"must be true or false, not a {type_name(value)}")
        return None
    return value


def get_str_map(iss: Issues, parent: Mapping[Any, Any], key: str, path: str) -> dict[str, str]:
    """Labels, annotations, selectors: a mapping of strings to strings."""
    raw = get_map(iss, parent, key, path)
    out: dict[str, str] = {}
    if raw is None:
        return out
    where = join(path, key)
    for k, v in raw.items():
        if not isinstance(k, str):
            iss.error(where, f"key {k!r} must be a string")
        elif not isinstance(v, str):
            iss.error(join(where, k), f"must be a string, not a {type_name(v)}")
        else:
            out[k] = v
    return out


def get_str_list(
    iss: Issues, parent: Mapping[Any, Any], key: str, path: str, *, required: bool = False
) -> list[str]:
    raw = get_list(iss, parent, key, path, required=required)
    out: list[str] = []
    where = join(path, key)
    for i, v in enumerate(raw or ()):
        if isinstance(v, str) and v:
            out.append(v)
        else:
            iss.error(f"{where}[{i}]", f"must be a non-empty string, not a {type_name(v)}")
    return out


def get_port_map(iss: Issues, parent: Mapping[Any, Any], key: str, path: str) -> dict[str, int]:
    """ServiceEntry/WorkloadEntry `ports`: port name -> number."""
    raw = get_map(iss, parent, key, path)
    out: dict[str, int] = {}
    where = join(path, key)
    for k in raw or {}:
        if not isinstance(k, str):
            iss.error(where, f"key {k!r} must be a string")
            continue
        number = get_port(iss, raw or {}, k, where)
        if number is not None:
            out[k] = number
    return out


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and _DNS1035_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and all(is_dns1123_label(p) for p in value.split("."))


def is_port_name(value: str) -> bool:
    """Kubernetes IANA_SVC_NAME: a named targetPort or container port."""
    return (
        len(value) <= 15
        and _IANA_SVC_NAME.fullmatch(value) is not None
        and "--" not in value
        and any(c.isalpha() for c in value)
    )


def is_hostname(value: str, *, wildcard: bool = False) -> bool:
    """A DNS name (case-insensitive, optional trailing dot); `*.x` when wildcard."""
    name = value[:-1] if value.endswith(".") else value
    if wildcard and name.startswith("*"):
        if name == "*":
            return True
        if not name.startswith("*."):
            return False
        name = name[2:]
    if not name or len(name) > 253:
        return False
    return all(len(p) <= 63 and _HOST_LABEL.fullmatch(p) for p in name.split("."))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_ip_or_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


class FreezeError(ValueError):
    pass


def deep_freeze(value: Any) -> Any:
    """A read-only copy: mappings -> MappingProxyType, lists -> tuples.

    YAML aliases can make shared or even cyclic structures; shared parts are
    frozen once, cycles and oversized expansions raise FreezeError.
    """
    memo: dict[int, Any] = {}
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(v: Any) -> int:
        # Expanded node count, memoized by identity so aliases cost nothing here.
        if not isinstance(v, Mapping | list | tuple):
            return 1
        key = id(v)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise FreezeError("the document refers to itself (cyclic YAML aliases)")
        active.add(key)
        children = v.values() if isinstance(v, Mapping) else v
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_SPEC_NODES:
                raise FreezeError(f"the document expands to more than {MAX_SPEC_NODES} values")
        active.discard(key)
        sizes[key] = total
        return total

    def freeze(v: Any) -> Any:
        if isinstance(v, Mapping):
            key = id(v)
            if key not in memo:
                memo[key] = MappingProxyType({k: freeze(x) for k, x in v.items()})
            return memo[key]
        if isinstance(v, list | tuple):
            key = id(v)
            if key not in memo:
                memo[key] = tuple(freeze(x) for x in v)
            return memo[key]
        if isinstance(v, set | frozenset):  # YAML !!set
            return frozenset(v)
        return v

    try:
        size(value)
        return freeze(value)
    except RecursionError:
        raise FreezeError("the document is nested too deeply") from None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def parse_duration_ns(text: str) -> int | None:
    """Nanoseconds of a Go/protobuf duration ("1.5s", "1m30s", "100ms"); None when malformed."""
    s = text.strip()
    if not s:
        return None
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    return round(total)


def duration_ns(
    iss: Issues, parent: Mapping[Any, Any], key: str, path: str, *, allow_zero: bool = False
) -> int | None:
    """A duration field checked as istiod's agent.ValidateDuration (>= 1ms, ms precision)."""
    value = parent.get(key)
    if value is None:
        return None
    where = join(path, key)
    if not isinstance(value, str):
        iss.error(where, f"must be a duration string such as '1s', not a {type_name(value)}")
        return None
    ns = parse_duration_ns(value)
    if ns is None:
        iss.error(where, f"{value!r} is not a duration (e.g. '10s', '500ms')")
        return None
    if allow_zero and ns == 0:
        return 0
    if ns < 1_000_000:
        iss.error(where, "duration must be at least 1ms")
        return None
    if ns % 1_000_000:
        iss.error(where, "only durations to ms precision are supported")
        return None
    return ns
