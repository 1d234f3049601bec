"""Operator-side tools: an xDS debug client (`xdsd status`), validation and diffs.

`status` asks a running control plane (xdsd, or istiod) for `istio.io/debug/syncz`
over plain ADS, the way `istioctl proxy-status --xds-address` does.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2, json_format

from xdsd.cache.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ResourceSet, short_type
from xdsd.model.build import build_snapshot
from xdsd.model.istio.virtualservice import VirtualService
from xdsd.model.jwks import JWKS_KIND, fetch_problems
from xdsd.model.parse import ParseResult
from xdsd.model.store import ConfigStore
from xdsd.model.types import ConfigError, ConfigObject, ObjectRef
from xdsd.offline import load_snapshot, translate_snapshot
from xdsd.sources.folder import FolderSource
from xdsd.sources.jwks import fetch_once
from xdsd.translate.checks import config_problems
from xdsd.translate.vs_index import resolve_host

SYNCZ = "istio.io/debug/syncz"
# The namespace a debug client says it is in, as istioctl: the root one, whose callers
# see every proxy (a token of another namespace sees only that one's).
DEBUG_NAMESPACE = "istio-system"


def debug_node_id(namespace: str) -> str:
    """A node id of four parts, as istioctl's, so any Istio control plane accepts it."""
    return f"sidecar~127.0.0.1~xdsd-status.{namespace}~{namespace}.svc.cluster.local"


_COLUMNS = ((CLUSTER, "CDS"), (LISTENER, "LDS"), (ENDPOINT, "EDS"), (ROUTE, "RDS"), (SECRET, "SDS"))


@dataclass(frozen=True)
class ProxyStatus:
    proxy: str
    cluster: str
    version: str
    types: Mapping[str, str]  # type URL -> SYNCED / STALE / NOT_SENT / ERROR
    errors: Mapping[str, str]  # type URL -> last NACK detail


async def fetch_status(
    address: str,
    timeout: float = 10,
    *,
    ca: bytes | None = None,
    server_name: str | None = None,
    token: str | None = None,
    namespace: str = DEBUG_NAMESPACE,
) -> list[ProxyStatus]:
    """One syncz query over ADS (over TLS trusting `ca` when given, with `token` as a
    bearer token of `namespace`); raises grpc.aio.AioRpcError or TimeoutError."""
    if ca is not None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca), options=options
        )
    else:
        channel = grpc.aio.insecure_channel(address)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(metadata=metadata)
        request = discovery_pb2.DiscoveryRequest(type_url=SYNCZ)
        request.node.id = debug_node_id(namespace)
        request.node.metadata["NAMESPACE"] = namespace
        request.node.metadata["GENERATOR"] = "event"
        await call.write(request)
        response = await asyncio.wait_for(call.read(), timeout)
        call.cancel()
    if response is grpc.aio.EOF:
        raise ConnectionError(f"{address} closed the stream without answering")
    return [_status(any_msg) for any_msg in response.resources]


def _status(any_msg: any_pb2.Any) -> ProxyStatus:
    cc = csds_pb2.ClientConfig()
    any_msg.Unpack(cc)
    meta = json_format.MessageToDict(cc.node.metadata)
    types = {}
    errors = {}
    for g in cc.generic_xds_configs:
        types[g.type_url] = csds_pb2.ConfigStatus.Name(g.config_status)
        if g.error_state.details:
            errors[g.type_url] = g.error_state.details
    return ProxyStatus(
        proxy=cc.node.id,
        cluster=str(meta.get("CLUSTER_ID", "")),
        version=str(meta.get("ISTIO_VERSION", "")),
        types=types,
        errors=errors,
    )


def status_table(rows: Sequence[ProxyStatus]) -> str:
    header = ["NAME", "CLUSTER", *(name for _, name in _COLUMNS), "VERSION"]
    body = [
        [
            r.proxy,
            r.cluster or "-",
            *(r.types.get(t, "IGNORED") for t, _ in _COLUMNS),
            r.version or "-",
        ]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    lines = [fmt(header), *(fmt(row) for row in body)]
    for r in rows:
        for type_url, detail in sorted(r.errors.items()):
            lines.append(f"{r.proxy}: {short_type(type_url)} rejected: {detail}")
    return "\n".join(lines) + "\n"


# -- validate --------------------------------------------------------------------------


async def validate_paths(paths: Iterable[Path], *, fetch_jwks: bool = False) -> list[ConfigError]:
    """Every problem in the given files/folders, as the folder source would see them.

    Each file is checked on its own; objects defined in two files are reported
    as warnings (the samples of one folder are often alternatives). With
    `fetch_jwks`, each RequestAuthentication jwksUri is fetched once, and one that
    cannot be is a warning on it (as `serve` reports it).
    """
    problems: list[ConfigError] = []
    combined = ConfigStore()
    sources: dict[ObjectRef, str] = {}  # VirtualService -> "file#document", for findings
    for path in paths:
        if not path.exists():
            problems.append(ConfigError(str(path), "", "", "no such file or directory"))
            continue
        source = FolderSource(path if path.is_dir() else path.parent)
        change = await source.poll()
        if change is None:
            continue
        files = (
            change.files
            if path.is_dir()
            else tuple(c for c in change.files if Path(c.source).name == path.name)
        )
        for content in files:
            if content.result is not None:
                problems.extend(content.result.errors)
                sources.update(_documents_of(content.source, content.result, "VirtualService"))
        combined.apply(type(change)(files, change.kinds, synced=True))
    per_file = set(problems)
    for err in combined.errors():
        if err not in per_file:
            problems.append(
                ConfigError(err.source, err.object, err.path, err.message, severity="warning")
            )
    problems.extend(unknown_hosts(combined, sources))
    # What only translation sees: CUSTOM providers, HTTP-only fields on TCP ports.
    problems.extend(config_problems(build_snapshot(combined, generation=1)))
    if fetch_jwks:
        await fetch_once(combined)
        problems.extend(
            fetch_problems(
                _configs(combined.objects("RequestAuthentication")),
                _configs(combined.objects(JWKS_KIND)),
            )
        )
    return problems


def _configs(objs: Iterable[object]) -> list[ConfigObject]:
    return [o for o in objs if isinstance(o, ConfigObject)]


def _documents_of(source: str, result: ParseResult, kind: str) -> dict[ObjectRef, str]:
    """`source#i` of each `kind` object the file defines (objects do not carry their index)."""
    refs = [o.ref for o in result.objects if o.ref.kind == kind]
    if not refs:
        return {}
    try:
        docs = list(yaml.safe_load_all(Path(source).read_text()))
    except (OSError, yaml.YAMLError):
        return {ref: source for ref in refs}
    out: dict[ObjectRef, str] = {}
    for ref in refs:
        for i, doc in enumerate(docs):
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            if (
                isinstance(meta, dict)
                and doc.get("kind") == kind
                and meta.get("name") == ref.name
                and meta.get("namespace", ref.namespace) == ref.namespace
            ):
                out[ref] = f"{source}#{i}"
                break
        else:
            out[ref] = source
    return out


def _vs_destinations(vs: VirtualService) -> Iterator[tuple[str, str]]:
    """(field path, host as written) of every destination a VirtualService routes to."""
    for i, r in enumerate(vs.http):
        for j, d in enumerate(r.route):
            yield f"spec.http[{i}].route[{j}].destination.host", d.destination.host
        if r.mirror is not None:
            yield f"spec.http[{i}].mirror.host", r.mirror.host
        for j, m in enumerate(r.mirrors or ()):
            yield f"spec.http[{i}].mirrors[{j}].destination.host", m.destination.host
    for kind, routes in (("tcp", vs.tcp), ("tls", vs.tls)):
        for i, l4 in enumerate(routes):
            for j, d in enumerate(l4.route):
                yield f"spec.{kind}[{i}].route[{j}].destination.host", d.destination.host


def unknown_hosts(store: ConfigStore, sources: Mapping[ObjectRef, str]) -> list[ConfigError]:
    """istiod's analyzer IST0101 ("Referenced host not found"): VirtualService routes to a
    host no Service or ServiceEntry defines. A warning: istiod serves the route (503s)."""
    snapshot = build_snapshot(store, generation=1)
    domain = snapshot.domain_suffix
    known = {s.hostname for s in snapshot.services}
    wildcards = tuple(h[1:] for h in known if h.startswith("*."))
    out: list[ConfigError] = []
    for c in snapshot.configs_of("VirtualService"):
        if not isinstance(c.typed, VirtualService):
            continue
        for path, written in _vs_destinations(c.typed):
            host = resolve_host(written, c.namespace, domain)
            if host in known or host.endswith(wildcards):
                continue
            out.append(
                ConfigError(
                    sources.get(c.ref, ""),
                    f"VirtualService {c.namespace}/{c.ref.name}",
                    path,
                    f"Referenced host not found: {host!r} (IST0101: no Service or "
                    "ServiceEntry defines it; requests routed there get 503)",
                    severity="warning",
                )
            )
    return out


# -- diff ------------------------------------------------------------------------------


def _json(type_url: str, payload: bytes) -> list[str]:
    body = json_format.MessageToDict(
        any_pb2.Any(type_url=type_url, value=payload), preserving_proto_field_name=True
    )
    return json.dumps(body, indent=2, sort_keys=True).splitlines()


def diff_sets(old: Mapping[str, ResourceSet], new: Mapping[str, ResourceSet]) -> list[str]:
    """A readable diff of two proxies' resources: added, removed and changed, per type."""
    lines: list[str] = []
    for type_url in dict.fromkeys([*old, *new]):
        a = old.get(type_url) or ResourceSet.of(type_url, ())
        b = new.get(type_url) or ResourceSet.of(type_url, ())
        short = short_type(type_url).upper()
        for name in sorted(a.items.keys() - b.items.keys()):
            lines.append(f"- {short} {name}")
        for name in sorted(b.items.keys() - a.items.keys()):
            lines.append(f"+ {short} {name}")
        for name in sorted(a.items.keys() & b.items.keys()):
            ra, rb = a.items[name], b.items[name]
            if ra.version == rb.version:
                continue
            lines.append(f"~ {short} {name}")
            lines.extend(
                "    " + d
                for d in difflib.unified_diff(
                    _json(ra.type_url, ra.payload),
                    _json(rb.type_url, rb.payload),
                    "old",
                    "new",
                    n=2,
                    lineterm="",
                )
            )
    return lines


async def diff_dirs(
    old_dir: Path, new_dir: Path, node_id: str, metadata: Mapping[str, Any]
) -> list[str]:
    old = translate_snapshot(await load_snapshot(old_dir), node_id, metadata)
    new = translate_snapshot(await load_snapshot(new_dir), node_id, metadata)
    return diff_sets(old, new)
