"""VirtualServices of a snapshot, resolved and indexed once (istiod initVirtualServices).

- Short names resolve in the VirtualService's namespace: `reviews` in `default`
  -> `reviews.default.svc.DOMAIN` (istiod ResolveShortnameToFQDN), for hosts,
  destinations and mirrors; gateway names become "NS/NAME" (resolveGatewayName).
- Delegates (VirtualServices without hosts) are merged into the HTTP routes of
  the roots that name them (istiod mergeVirtualServices / MergeHTTPRoutes);
  delegates themselves are never served.
- Order: istiod sorts by creation time, then name, then namespace; config files
  carry no creation time, so name then namespace.
- exportTo: "*" public (default), "." / own namespace private, "~" nobody, or
  namespace names. Per (namespace, gateway) the list is: private, exported to
  the namespace, public (istiod SelectVirtualServices / VirtualServicesForGateway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from xdsd.model.istio.virtualservice import (
    MESH_GATEWAY,
    Destination,
    HTTPMatch,
    HTTPRoute,
    L4Route,
    Mirror,
    RouteDestination,
    StringMatch,
    VirtualService,
)
from xdsd.model.proxy import Proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject


@dataclass(frozen=True)
class ResolvedVS:
    namespace: str
    name: str
    version: str  # API version the object was written in (route metadata)
    spec: VirtualService  # hosts, destinations and gateway names resolved
    gateways: tuple[str, ...]  # "mesh" and/or "NS/NAME"; ("mesh",) when none given
    export_to: frozenset[str]  # namespaces, or {"*"}; empty = nobody

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def visible_to(self, namespace: str) -> bool:
        return "*" in self.export_to or namespace in self.export_to

    @property
    def config_path(self) -> str:
        """istiod BuildConfigInfoMetadata's "config" value."""
        return (
            f"/apis/networking.istio.io/{self.version}/namespaces/{self.namespace}"
            f"/virtual-service/{self.name}"
        )


@dataclass(frozen=True)
class VSIndex:
    all: tuple[ResolvedVS, ...]  # roots, merged, in istiod order
    problems: tuple[str, ...]  # delegate not found / not exported / conflicting matches
    # Label keys any match's sourceLabels names (they make output depend on proxy labels).
    source_label_keys: frozenset[str]
    # Sidecar hosts claimed twice in one export scope: (loser, its hosts index, host,
    # the older winner), losers as "NS/NAME" keys.
    host_conflicts: tuple[tuple[str, int, str, str], ...] = ()


def resolve_host(host: str, namespace: str, domain: str) -> str:
    """istiod ResolveShortnameToFQDN."""
    if not host or host == "*" or "." in host or ":" in host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def resolve_gateway(name: str, namespace: str) -> str:
    """istiod resolveGatewayName: "gw" -> "NS/gw", "./gw" -> "NS/gw", "gw.ns.svc..." -> "ns/gw"."""
    if name == MESH_GATEWAY:
        return name
    if "/" not in name:
        if "." not in name:
            return f"{namespace}/{name}"
        first, _, rest = name.partition(".")
        return f"{rest.split('.')[0]}/{first}"
    ns, _, rest = name.partition("/")
    return f"{namespace}/{rest}" if ns == "." else name


def _dest(d: Destination, ns: str, domain: str) -> Destination:
    return dataclasses.replace(d, host=resolve_host(d.host, ns, domain))


def _route_dests(
    rds: tuple[RouteDestination, ...], ns: str, domain: str
) -> tuple[RouteDestination, ...]:
    return tuple(dataclasses.replace(r, destination=_dest(r.destination, ns, domain)) for r in rds)


def _resolve_http(r: HTTPRoute, ns: str, domain: str) -> HTTPRoute:
    return dataclasses.replace(
        r,
        match=tuple(
            dataclasses.replace(m, gateways=tuple(resolve_gateway(g, ns) for g in m.gateways))
            for m in r.match
        ),
        route=_route_dests(r.route, ns, domain),
        mirror=_dest(r.mirror, ns, domain) if r.mirror else None,
        mirrors=(
            tuple(Mirror(_dest(m.destination, ns, domain), m.percentage) for m in r.mirrors)
            if r.mirrors is not None
            else None
        ),
    )


def _resolve_l4(r: L4Route, ns: str, domain: str) -> L4Route:
    return L4Route(
        tuple(
            dataclasses.replace(m, gateways=tuple(resolve_gateway(g, ns) for g in m.gateways))
            for m in r.match
        ),
        _route_dests(r.route, ns, domain),
    )


def resolve_spec(vs: VirtualService, ns: str, domain: str) -> VirtualService:
    return VirtualService(
        hosts=tuple(resolve_host(h, ns, domain).lower() for h in vs.hosts),
        gateways=tuple(resolve_gateway(g, ns) for g in vs.gateways),
        http=tuple(_resolve_http(r, ns, domain) for r in vs.http),
        tcp=tuple(_resolve_l4(r, ns, domain) for r in vs.tcp),
        tls=tuple(_resolve_l4(r, ns, domain) for r in vs.tls),
        export_to=vs.export_to,
    )


def _export_set(values: Iterable[str], ns: str) -> frozenset[str]:
    out: set[str] = set()
    for v in values:
        out.add(ns if v == "." else v)
    if not out:
        out.add("*")  # MeshConfig defaultVirtualServiceExportTo default
    if "~" in out:
        return frozenset()
    return frozenset(out)


# ---------------------------------------------------------------- delegate merging


def _sm_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """istiod stringMatchConflict."""
    if root is None or leaf is None:
        return False
    if root.kind == "regex" and root.value and leaf.value:
        return True
    if leaf.kind == "regex" and leaf.value and root.value:
        return True
    if root.kind == "exact" and root.value:
        if leaf.kind == "prefix" and leaf.value:
            return True
        return not (leaf.kind == "exact" and leaf.value == root.value)
    if root.kind == "prefix" and root.value:
        if leaf.kind == "prefix" and leaf.value:
            return not leaf.value.startswith(root.value)
        if leaf.kind == "exact" and leaf.value:
            return not leaf.value.startswith(root.value)
    return True


def _has_conflict(root: HTTPMatch, leaf: HTTPMatch) -> bool:
    """istiod hasConflict."""
    for a, b in (
        (root.uri, leaf.uri),
        (root.scheme, leaf.scheme),
        (root.method, leaf.method),
        (root.authority, leaf.authority),
    ):
        if _sm_conflict(a, b):
            return True
    for mine, theirs in (
        (dict(root.headers), leaf.headers),
        (dict(root.without_headers), leaf.without_headers),
        (dict(root.query_params), leaf.query_params),
    ):
        for k, v in theirs:
            if _sm_conflict(mine.get(k), v):
                return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    rl = dict(root.source_labels)
    for k, lv in leaf.source_labels:
        if k in rl and rl[k] != lv:
            return True
    if root.gateways and leaf.gateways:
        if len(root.gateways) < len(leaf.gateways):
            return True
        if not set(leaf.gateways) <= set(root.gateways):
            return True
    return False


def _merge_pairs(
    root: tuple[tuple[str, StringMatch | None], ...],
    leaf: tuple[tuple[str, StringMatch | None], ...],
) -> tuple[tuple[str, StringMatch | None], ...]:
    merged = dict(root)
    merged.update(dict(leaf))
    return tuple(merged.items())


def _merge_match(root: HTTPMatch, leaf: HTTPMatch) -> HTTPMatch:
    """istiod mergeHTTPMatchRequest: the delegate's fields win, the root fills the gaps."""
    name = leaf.name
    if not name:
        name = root.name
    elif root.name:
        name = f"{root.name}-{leaf.name}"
    labels = dict(root.source_labels)
    labels.update(dict(leaf.source_labels))
    return HTTPMatch(
        name=name,
        uri=leaf.uri or root.uri,
        scheme=leaf.scheme or root.scheme,
        method=leaf.method or root.method,
        authority=leaf.authority or root.authority,
        headers=_merge_pairs(root.headers, leaf.headers),
        without_headers=_merge_pairs(root.without_headers, leaf.without_headers),
        query_params=_merge_pairs(root.query_params, leaf.query_params),
        port=leaf.port or root.port,
        source_labels=tuple(sorted(labels.items())),
        gateways=leaf.gateways or root.gateways,
        source_namespace=leaf.source_namespace or root.source_namespace,
        ignore_uri_case=leaf.ignore_uri_case,
        stat_prefix=leaf.stat_prefix or root.stat_prefix,
    )


def _merge_matches(
    root: tuple[HTTPMatch, ...], leaf: tuple[HTTPMatch, ...]
) -> tuple[HTTPMatch, ...] | None:
    """None on conflict (istiod mergeHTTPMatchRequests)."""
    if not root:
        return leaf
    if not leaf:
        return root
    out: list[HTTPMatch] = []
    for sub in leaf:
        found = False
        for rm in root:
            if _has_conflict(rm, sub):
                continue
            out.append(_merge_match(rm, sub))
            found = True
        if not found:
            return None
    return tuple(out) if out else None


def _merge_route(root: HTTPRoute, leaf: HTTPRoute) -> HTTPRoute | None:
    """istiod mergeHTTPRoute: None when the delegate route's matches conflict with the root's."""
    match = _merge_matches(root.match, leaf.match)
    if match is None:
        return None
    name = leaf.name
    if not name:
        name = root.name
    elif root.name:
        name = f"{root.name}-{leaf.name}"
    return dataclasses.replace(
        leaf,
        name=name,
        match=match,
        delegate=None,
        rewrite=leaf.rewrite or root.rewrite,
        direct_response=leaf.direct_response or root.direct_response,
        timeout=leaf.timeout if leaf.timeout is not None else root.timeout,
        retries=leaf.retries or root.retries,
        fault=leaf.fault or root.fault,
        mirror=leaf.mirror or root.mirror,
        mirror_percentage=(
            leaf.mirror_percentage if leaf.mirror_percentage is not None else root.mirror_percentage
        ),
        cors=leaf.cors or root.cors,
        mirrors=leaf.mirrors if leaf.mirrors is not None else root.mirrors,
        headers=leaf.headers or root.headers,
    )


# ---------------------------------------------------------------- the index


def _build(snapshot: MeshSnapshot) -> VSIndex:
    domain = snapshot.domain_suffix
    configs: list[ConfigObject] = [
        c for c in snapshot.configs_of("VirtualService") if isinstance(c.typed, VirtualService)
    ]
    configs.sort(key=lambda c: (c.created, c.name, c.namespace))  # istiod: oldest first
    delegates: dict[tuple[str, str], tuple[VirtualService, frozenset[str]]] = {}
    for c in configs:
        vs: VirtualService = c.typed
        if vs.is_delegate:
            delegates[(c.namespace, c.name)] = (
                resolve_spec(vs, c.namespace, domain),
                _export_set(vs.export_to, c.namespace),
            )
    problems: list[str] = []
    out: list[ResolvedVS] = []
    label_keys: set[str] = set()
    for c in configs:
        vs = c.typed
        if vs.is_delegate:
            continue
        spec = resolve_spec(vs, c.namespace, domain)
        if any(r.delegate is not None for r in spec.http):
            merged: list[HTTPRoute] = []
            for r in spec.http:
                if r.delegate is None:
                    merged.append(r)
                    continue
                dns = r.delegate.namespace or c.namespace
                found = delegates.get((dns, r.delegate.name))
                who = f"VirtualService {c.namespace}/{c.name}"
                if found is None:
                    problems.append(
                        f"{who}: delegate VirtualService {dns}/{r.delegate.name} not found "
                        "(its routes are left out)"
                    )
                    continue
                dvs, dexport = found
                if "*" not in dexport and c.namespace not in dexport:
                    problems.append(
                        f"{who}: delegate VirtualService {dns}/{r.delegate.name} is not exported "
                        f"to {c.namespace} (its routes are left out)"
                    )
                    continue
                for i, leaf in enumerate(dvs.http):
                    mr = _merge_route(r, leaf)
                    if mr is None:
                        problems.append(
                            f"{who}: route {i} of delegate {dns}/{r.delegate.name} conflicts with "
                            f"the matches of root route {r.name or '(unnamed)'} (left out)"
                        )
                    else:
                        merged.append(mr)
            spec = dataclasses.replace(spec, http=tuple(merged))
        for r in spec.http:
            for m in r.match:
                label_keys.update(k for k, _ in m.source_labels)
        for l4 in (*spec.tcp, *spec.tls):
            for lm in l4.match:
                label_keys.update(k for k, _ in lm.source_labels)
        out.append(
            ResolvedVS(
                namespace=c.namespace,
                name=c.name,
                version=c.version or "v1",
                spec=spec,
                gateways=spec.gateways or (MESH_GATEWAY,),
                export_to=_export_set(vs.export_to, c.namespace),
            )
        )
    conflicts = _host_conflicts(out)
    problems.extend(_snapshot_problems(snapshot, out, conflicts))
    return VSIndex(tuple(out), tuple(problems), frozenset(label_keys), conflicts)


def _destinations(vs: VirtualService) -> list[Destination]:
    out: list[Destination] = []
    for r in vs.http:
        out += [d.destination for d in r.route]
        if r.mirror is not None:
            out.append(r.mirror)
        out += [m.destination for m in r.mirrors or ()]
    for l4 in (*vs.tcp, *vs.tls):
        out += [d.destination for d in l4.route]
    return out


def _host_conflicts(vses: list[ResolvedVS]) -> tuple[tuple[str, int, str, str], ...]:
    """Hosts several mesh VirtualServices route for sidecars: the first (oldest) wins."""
    owner: dict[tuple[str, str], str] = {}
    out: list[tuple[str, int, str, str]] = []
    for v in vses:
        if MESH_GATEWAY not in v.gateways or not v.spec.http:
            continue
        for i, h in enumerate(v.spec.hosts):
            for scope in sorted(v.export_to):
                first = owner.setdefault((scope, h), v.key)
                if first != v.key:
                    out.append((v.key, i, h, first))
                    break
    return tuple(out)


def _snapshot_problems(
    snapshot: MeshSnapshot, vses: list[ResolvedVS], conflicts: tuple[tuple[str, int, str, str], ...]
) -> list[str]:
    """Destinations outside the registry, and hosts several mesh VirtualServices claim."""
    known = {s.hostname for s in snapshot.services}
    wild = [h for h in known if h.startswith("*")]
    out: list[str] = []
    for v in vses:
        missing = sorted(
            {
                d.host
                for d in _destinations(v.spec)
                if d.host not in known and not any(d.host.endswith(w[1:]) for w in wild)
            }
        )
        for host in missing:
            out.append(
                f"VirtualService {v.key}: destination host {host} is not in the service "
                "registry (routed to its cluster anyway, as istiod does: 503 until it exists)"
            )
    for loser, _i, h, first in conflicts:
        out.append(
            f"VirtualService {loser}: host {h} is already routed for sidecars by "
            f"VirtualService {first} (first wins, as in istiod; merge them "
            "or use delegate)"
        )
    return out


def index(snapshot: MeshSnapshot) -> VSIndex:
    return snapshot.derived(__name__, _build)


def for_gateway(snapshot: MeshSnapshot, namespace: str, gateway: str) -> tuple[ResolvedVS, ...]:
    """VirtualServices bound to `gateway` ("mesh" or "NS/NAME") and visible in `namespace`.

    Private ones first, then those exported to the namespace by name, then public
    ones (istiod's order), each in index order.
    """

    def build(s: MeshSnapshot) -> tuple[ResolvedVS, ...]:
        bound = [v for v in index(s).all if gateway in v.gateways]
        private = [
            v
            for v in bound
            if v.namespace == namespace and "*" not in v.export_to and namespace in v.export_to
        ]
        exported = [
            v
            for v in bound
            if v.namespace != namespace and "*" not in v.export_to and namespace in v.export_to
        ]
        public = [v for v in bound if "*" in v.export_to]
        return (*private, *exported, *public)

    return snapshot.derived(f"{__name__}:{namespace}:{gateway}", build)


def group_key(snapshot: MeshSnapshot, proxy: Proxy) -> Hashable:
    """The proxy labels VirtualService sourceLabels can see (part of the proxy group key)."""
    keys = index(snapshot).source_label_keys
    if not keys:
        return ()
    return tuple(sorted((k, v) for k, v in proxy.labels.items() if k in keys))
