"""Sidecar scoping: which Sidecar applies to a proxy and what it lets the proxy see.

Follows istiod (pilot/pkg/model/push_context.go initSidecarScopes/getSidecarScope,
pilot/pkg/model/sidecar.go convertIstioListenerToWrapper/selectServices/
collectImportedServices/appendSidecarServices, pilot/pkg/model/virtualservice.go
SelectVirtualServices):

- Selection: among the Sidecars in the proxy's namespace, those with a
  workloadSelector come first; the first whose selector labels are a subset of
  the proxy's labels applies; else the first selector-less one of the namespace;
  else the root namespace's first selector-less Sidecar (mesh-wide default); else
  the default scope (one catch-all egress listener importing `*/*`). istiod orders
  by creation time; config files carry none, so we order by name. More than one
  candidate at the same level is reported as a conflict.
- Egress hosts `NS/HOST`: NS is a namespace, `.` (the proxy's namespace), `*`, or
  `~NS` (exclusion); HOST is a FQDN, `*.suffix` or `*`. A service is imported when
  an entry for its own namespace or for `*` matches it (SubsetOf) and no exclusion
  does. One namespace per hostname (the proxy's namespace first, then Kubernetes
  services over ServiceEntries, then the first). A listener with a port imports
  only services having that port, trimmed to it.
- Services that imported VirtualServices route to are imported too (the same
  namespace preference; Kubernetes first, else the first visible).
- outboundTrafficPolicy: the applied Sidecar's, else the mesh default ALLOW_ANY.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xdsd.model.istio.sidecar import EgressListener, IngressListener, Sidecar
from xdsd.model.proxy import InterceptionMode, Proxy, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject, Protocol, Service, ServicePort
from xdsd.translate import _common as c

if TYPE_CHECKING:
    from xdsd.translate.context import ProxyContext

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
MESH_DEFAULT_OUTBOUND = ALLOW_ANY  # MeshConfig.outboundTrafficPolicy default
MESH_GATEWAY = "mesh"


# ---------------------------------------------------------------- host matching


def _wild(h: str) -> bool:
    return h.startswith("*")


def subset_of(n: str, o: str) -> bool:
    """istio host.Name.SubsetOf: every name matched by `n` is matched by `o`."""
    if _wild(n):
        if _wild(o):
            return len(n) >= len(o) and n[1:].endswith(o[1:])
        return False
    if _wild(o):
        return n.endswith(o[1:])
    return n == o


def host_matches(n: str, o: str) -> bool:
    """istio host.Name.Matches: the two names overlap (bidirectional)."""
    if _wild(n):
        if _wild(o):
            if len(n) < len(o):
                return o[1:].endswith(n[1:])
            return n[1:].endswith(o[1:])
        return o.endswith(n[1:])
    if _wild(o):
        return n.endswith(o[1:])
    return n == o


@dataclass(frozen=True)
class HostImports:
    """The egress hosts of one namespace key (istiod hostClassification)."""

    exact: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    def is_excluded(self, h: str) -> bool:
        return any(subset_of(h, e) for e in self.excluded)

    def matches(self, h: str) -> bool:
        """Service semantics: the service host is within an imported host."""
        if h in self.exact:
            return True
        return any((_wild(h) or _wild(i)) and subset_of(h, i) for i in self.hosts)

    def vs_matches(self, h: str) -> bool:
        """VirtualService semantics (non Gateway-API): the names overlap."""
        if h in self.exact:
            return True
        return any((_wild(h) or _wild(i)) and host_matches(h, i) for i in self.hosts)


def _imports(
    listener: EgressListener | None, namespace: str
) -> tuple[tuple[str, HostImports], ...]:
    if listener is None:
        return (("*", HostImports(hosts=("*",))),)
    exact: dict[str, set[str]] = {}
    hosts: dict[str, list[str]] = {}
    excluded: dict[str, list[str]] = {}
    for h in listener.hosts:
        ns = namespace if h.namespace == "." else h.namespace
        hosts.setdefault(ns, [])
        exact.setdefault(ns, set())
        if h.excluded:
            excluded.setdefault(ns, []).append(h.host)
            continue
        if not _wild(h.host):
            exact[ns].add(h.host)
        hosts[ns].append(h.host)
    return tuple(
        (ns, HostImports(frozenset(exact[ns]), tuple(hosts[ns]), tuple(excluded.get(ns, ()))))
        for ns in sorted(hosts)
    )


# ---------------------------------------------------------------- scope values


@dataclass(frozen=True)
class EgressScope:
    """One egress listener and the services it imports (istiod IstioEgressListenerWrapper)."""

    port: int | None  # None: catch-all (a listener per service port)
    protocol: Protocol  # the listener port's protocol (AUTO when unset)
    bind: str
    capture_mode: str  # DEFAULT, IPTABLES, NONE
    imports: tuple[tuple[str, HostImports], ...]
    services: tuple[Service, ...]
    unix: bool = False  # unix domain socket listener (not generated yet)
    http_proxy: bool = False

    def imports_host(self, host: str, namespace: str, *, vs: bool = True) -> bool:
        by_ns = dict(self.imports)
        own = by_ns.get(namespace)
        wild = by_ns.get("*")
        if (own is not None and own.is_excluded(host)) or (
            wild is not None and wild.is_excluded(host)
        ):
            return False
        for hc in (own, wild):
            if hc is not None and (hc.vs_matches(host) if vs else hc.matches(host)):
                return True
        return False


@dataclass(frozen=True)
class SidecarScope:
    namespace: str  # the proxy's (config) namespace the scope was computed for
    config: ConfigObject | None  # the applied Sidecar; None = istiod's default scope
    egress: tuple[EgressScope, ...]
    services: tuple[Service, ...]  # union over egress listeners (CDS)
    outbound_mode: str  # ALLOW_ANY or REGISTRY_ONLY
    ingress: tuple[IngressListener, ...] = ()
    conflicts: tuple[str, ...] = ()

    @property
    def sidecar(self) -> Sidecar | None:
        if self.config is None:
            return None
        typed = self.config.typed
        return typed if isinstance(typed, Sidecar) else None

    @property
    def key(self) -> tuple[str, str, int] | None:
        """What group keys carry: the applied Sidecar's namespace, name and generation."""
        if self.config is None:
            return None
        return (self.config.namespace, self.config.name, self.config.generation)

    @property
    def name(self) -> str:
        return self.config.name if self.config is not None else "default-sidecar"

    @property
    def has_port_listeners(self) -> bool:
        return any(e.port is not None for e in self.egress)


# ---------------------------------------------------------------- selection


def _sidecars(snapshot: MeshSnapshot) -> tuple[ConfigObject, ...]:
    return tuple(c for c in snapshot.configs_of("Sidecar") if isinstance(c.typed, Sidecar))


def _selector(cfg: ConfigObject) -> Mapping[str, str] | None:
    typed = cfg.typed
    assert isinstance(typed, Sidecar)
    return typed.workload_selector


def _label(cfg: ConfigObject) -> str:
    return f"Sidecar {cfg.namespace}/{cfg.name}"


def select_sidecar(
    snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str]
) -> tuple[ConfigObject | None, tuple[str, ...]]:
    """The Sidecar a sidecar proxy in `namespace` with `labels` uses, and any conflicts."""
    all_sidecars = _sidecars(snapshot)
    here = [c for c in all_sidecars if c.namespace == namespace]
    conflicts: list[str] = []
    selected = [
        c
        for c in here
        if (sel := _selector(c)) is not None and all(labels.get(k) == v for k, v in sel.items())
    ]
    if selected:
        if len(selected) > 1:
            conflicts.append(
                f"{_label(selected[0])} applies; "
                + ", ".join(_label(c) for c in selected[1:])
                + " also select the workload and are ignored"
            )
        return selected[0], tuple(conflicts)

    def plain(ns: str) -> ConfigObject | None:
        found = [c for c in all_sidecars if c.namespace == ns and _selector(c) is None]
        if len(found) > 1:
            conflicts.append(
                f"{_label(found[0])} applies; namespace {ns} has more Sidecars without "
                f"workloadSelector, ignored: " + ", ".join(_label(c) for c in found[1:])
            )
        return found[0] if found else None

    cfg = plain(namespace)
    if cfg is None and namespace != snapshot.root_namespace:
        cfg = plain(snapshot.root_namespace)
    return cfg, tuple(conflicts)


# ---------------------------------------------------------------- services


def _exported_to(export: frozenset[str], own: str, namespace: str) -> bool:
    export = export or frozenset({"*"})
    if "*" in export:
        return True
    if "." in export and own == namespace:
        return True
    return namespace in export


def _is_kube(s: Service) -> bool:
    return s.ref.kind == "Service"


def _trim_to_port(s: Service, port: int) -> Service | None:
    sp = s.port_by_number(port)
    if sp is None:
        return None
    if len(s.ports) == 1:
        return s
    return dataclasses.replace(s, ports=(sp,))


def _trim_to_ports(s: Service, ports: frozenset[int]) -> Service | None:
    """istiod serviceMatchingVirtualServicePorts (0 = every port)."""
    if not ports or 0 in ports:
        return s
    found = tuple(p for p in s.ports if p.port in ports)
    if len(found) == len(s.ports):
        return s
    if found:
        return dataclasses.replace(s, ports=found)
    return None


def _select_services(
    candidates: Iterable[Service],
    namespace: str,
    egress: EgressScope,
    conflicts: list[str],
) -> tuple[Service, ...]:
    """istiod IstioEgressListenerWrapper.selectServices (UnifiedSidecarScoping)."""
    by_ns = dict(egress.imports)
    wild = by_ns.get("*")
    imported: list[Service] = []
    for s in candidates:
        own = by_ns.get(s.namespace)
        if (own is not None and own.is_excluded(s.hostname)) or (
            wild is not None and wild.is_excluded(s.hostname)
        ):
            continue
        for hc in (own, wild):
            if hc is None or not hc.matches(s.hostname):
                continue
            picked: Service | None = s
            if egress.port is not None and not egress.http_proxy:
                picked = _trim_to_port(s, egress.port)
            if picked is not None:
                imported.append(picked)
            break
    chosen: dict[str, tuple[str, bool]] = {}
    for s in imported:
        cur = chosen.get(s.hostname)
        kube = _is_kube(s)
        # The proxy's namespace wins; else Kubernetes over ServiceEntry; else the first.
        if cur is None or s.namespace == namespace or (not cur[1] and kube and cur[0] != namespace):
            chosen[s.hostname] = (s.namespace, kube)
    out: list[Service] = []
    for s in imported:
        if chosen[s.hostname][0] == s.namespace:
            out.append(s)
        else:
            conflicts.append(
                f"host {s.hostname} ({s.ref}) hidden by the one in namespace "
                f"{chosen[s.hostname][0]} (one namespace per host)"
            )
    return tuple(out)


def _merge_ports(a: Service, b: Service) -> Service:
    have = {p.port for p in a.ports}
    extra = tuple(p for p in b.ports if p.port not in have)
    return dataclasses.replace(a, ports=a.ports + extra) if extra else a


def _can_merge(a: Service, b: Service) -> bool:
    return (
        a.namespace == b.namespace
        and a.resolution is b.resolution
        and a.ref.kind == b.ref.kind
        and a.labels == b.labels
        and a.selector == b.selector
        and a.export_to == b.export_to
    )


def _append(out: dict[str, Service], s: Service) -> None:
    """istiod SidecarScope.appendSidecarServices: one service per hostname, ports merged."""
    cur = out.get(s.hostname)
    if cur is None:
        out[s.hostname] = s
        return
    if cur is s or (_is_kube(cur) and not _is_kube(s)):
        return
    if not _is_kube(cur) and _is_kube(s):
        out[s.hostname] = s
        return
    if cur.ports == s.ports or not _can_merge(cur, s):
        return
    out[s.hostname] = _merge_ports(cur, s)


# ---------------------------------------------------------------- VirtualService imports


def _resolve(host: str, namespace: str, domain: str) -> str:
    """istiod ResolveShortnameToFQDN: a name without dots is a service of the namespace."""
    if host == "*" or "." in host:
        return host.lower()
    return f"{host}.{namespace}.svc.{domain}".lower()


def _vs_export(spec: Mapping[str, Any], own: str) -> frozenset[str]:
    """Namespaces a VirtualService is visible to ({"*"}: all; empty: none, "~")."""
    raw = spec.get("exportTo")
    if not isinstance(raw, tuple | list) or not raw:
        return frozenset({"*"})
    return frozenset(own if v == "." else str(v) for v in raw if v != "~")


def _vs_gateways(spec: Mapping[str, Any]) -> tuple[str, ...]:
    raw = spec.get("gateways")
    if not isinstance(raw, tuple | list) or not raw:
        return (MESH_GATEWAY,)
    return tuple(str(g) for g in raw)


def _vs_destinations(
    spec: Mapping[str, Any], vs_ns: str, config_ns: str, domain: str
) -> dict[str, set[int]]:
    """istiod virtualServiceDestinationsFilteredBySourceNamespace (hosts resolved)."""
    out: dict[str, set[int]] = {}

    def add(dest: Any) -> None:
        if not isinstance(dest, Mapping):
            return
        host = dest.get("host")
        if not isinstance(host, str) or not host:
            return
        port = dest.get("port")
        number = port.get("number") if isinstance(port, Mapping) else None
        out.setdefault(_resolve(host, vs_ns, domain), set()).add(
            number if isinstance(number, int) and not isinstance(number, bool) else 0
        )

    def seq(value: Any) -> tuple[Any, ...]:
        return tuple(value) if isinstance(value, tuple | list) else ()

    for h in seq(spec.get("http")):
        if not isinstance(h, Mapping):
            continue
        matched = True
        for m in seq(h.get("match")):
            src = m.get("sourceNamespace") if isinstance(m, Mapping) else None
            if src:
                if src == config_ns:
                    matched = True
                    break
                matched = False
        if not matched:
            continue
        for r in seq(h.get("route")):
            if isinstance(r, Mapping):
                add(r.get("destination"))
        add(h.get("mirror"))
        for m in seq(h.get("mirrors")):
            if isinstance(m, Mapping):
                add(m.get("destination"))
    for kind in ("tcp", "tls"):
        for t in seq(spec.get(kind)):
            if isinstance(t, Mapping):
                for r in seq(t.get("route")):
                    if isinstance(r, Mapping):
                        add(r.get("destination"))
    return out


def _mesh_virtual_services(
    snapshot: MeshSnapshot, config_ns: str
) -> list[tuple[ConfigObject, tuple[str, ...]]]:
    """VirtualServices bound to `mesh` visible to the namespace: private, exported, public."""
    private: list[tuple[ConfigObject, tuple[str, ...]]] = []
    exported: list[tuple[ConfigObject, tuple[str, ...]]] = []
    public: list[tuple[ConfigObject, tuple[str, ...]]] = []
    for vs in snapshot.configs_of("VirtualService"):
        spec = vs.spec
        if MESH_GATEWAY not in _vs_gateways(spec):
            continue
        hosts_raw = spec.get("hosts")
        if not isinstance(hosts_raw, tuple | list) or not hosts_raw:
            continue  # a delegate: only reachable through its root
        hosts = tuple(
            _resolve(h, vs.namespace, snapshot.domain_suffix)
            for h in hosts_raw
            if isinstance(h, str)
        )
        export = _vs_export(spec, vs.namespace)
        if not export:
            continue
        if "*" in export:
            public.append((vs, hosts))
        elif vs.namespace == config_ns and config_ns in export:
            private.append((vs, hosts))
        elif config_ns in export:
            exported.append((vs, hosts))
    return private + exported + public


def _select_virtual_services(
    vses: list[tuple[ConfigObject, tuple[str, ...]]], egress: EgressScope
) -> list[ConfigObject]:
    out: list[ConfigObject] = []
    for vs, hosts in vses:
        if any(egress.imports_host(h, vs.namespace) for h in hosts):
            out.append(vs)
    return out


# ---------------------------------------------------------------- scope building


def _egress_scopes(sidecar: Sidecar | None) -> tuple[EgressListener | None, ...]:
    if sidecar is None or not sidecar.egress:
        return (None,)
    return sidecar.egress


def _build_scope(
    snapshot: MeshSnapshot, namespace: str, cfg: ConfigObject | None, conflicts: tuple[str, ...]
) -> SidecarScope:
    sidecar = cfg.typed if cfg is not None and isinstance(cfg.typed, Sidecar) else None
    visible = [s for s in snapshot.services if _exported_to(s.export_to, s.namespace, namespace)]
    vses = _mesh_virtual_services(snapshot, namespace)
    by_host: dict[str, dict[str, Service]] = {}
    for s in snapshot.services:
        by_host.setdefault(s.hostname, {})[s.namespace] = s
    egress: list[EgressScope] = []
    union: dict[str, Service] = {}
    notes = list(conflicts)
    for listener in _egress_scopes(sidecar):
        port = listener.port if listener is not None else None
        es = EgressScope(
            port=port.number if port is not None else None,
            protocol=port.protocol if port is not None else Protocol.AUTO,
            bind=listener.bind if listener is not None else "",
            capture_mode=listener.capture_mode if listener is not None else "DEFAULT",
            imports=_imports(listener, namespace),
            services=(),
            unix=port is not None and port.number == 0,
            http_proxy=port is not None and port.http_proxy,
        )
        es = dataclasses.replace(es, services=_select_services(visible, namespace, es, notes))
        egress.append(es)
        for s in es.services:
            _append(union, s)
        # Destinations of the VirtualServices this listener imports.
        for vs in _select_virtual_services(vses, es):
            dests = _vs_destinations(vs.spec, vs.namespace, namespace, snapshot.domain_suffix)
            for host, ports in dests.items():
                candidates = by_host.get(host, {})
                svc = candidates.get(namespace)
                if svc is None:
                    seen = [
                        c
                        for c in candidates.values()
                        if _exported_to(c.export_to, c.namespace, namespace)
                    ]
                    kube = [c for c in seen if _is_kube(c)]
                    pick = kube or seen
                    svc = pick[0] if pick else None
                if svc is None:
                    continue
                trimmed: Service | None
                if es.port is not None and not es.http_proxy:
                    trimmed = _trim_to_port(svc, es.port)
                else:
                    trimmed = _trim_to_ports(svc, frozenset(ports))
                if trimmed is not None and trimmed.hostname not in union:
                    union[trimmed.hostname] = trimmed
                elif trimmed is not None:
                    _append(union, trimmed)
    order = {s.hostname: i for i, s in enumerate(snapshot.services)}
    services = tuple(sorted(union.values(), key=lambda s: (order.get(s.hostname, 0), s.namespace)))
    mode = MESH_DEFAULT_OUTBOUND
    if sidecar is not None and sidecar.outbound_traffic_policy is not None:
        mode = sidecar.outbound_traffic_policy.mode
    return SidecarScope(
        namespace=namespace,
        config=cfg,
        egress=tuple(egress),
        services=services,
        outbound_mode=mode,
        ingress=sidecar.ingress if sidecar is not None else (),
        conflicts=tuple(dict.fromkeys(notes)),
    )


def has_ingress(snapshot: MeshSnapshot) -> bool:
    """Whether any Sidecar has ingress listeners (they read the proxy's own addresses)."""
    return snapshot.derived(
        f"{__name__}:has_ingress",
        lambda s: any(
            isinstance(c.typed, Sidecar) and c.typed.ingress for c in s.configs_of("Sidecar")
        ),
    )


def scope_for(snapshot: MeshSnapshot, proxy: Proxy) -> SidecarScope:
    """The proxy's SidecarScope, computed once per snapshot and (namespace, Sidecar)."""
    namespace = proxy.namespace
    if proxy.type is not ProxyType.SIDECAR:
        # Gateways always use the default scope (istiod DefaultSidecarScopeForGateway).
        cfg: ConfigObject | None = None
        conflicts: tuple[str, ...] = ()
    else:
        cfg, conflicts = select_sidecar(snapshot, namespace, proxy.labels)
    ident = "-" if cfg is None else f"{cfg.namespace}/{cfg.name}"
    return snapshot.derived(
        f"{__name__}:{namespace}:{ident}:{'|'.join(conflicts)}",
        lambda s: _build_scope(s, namespace, cfg, conflicts),
    )


def visible_in_scope(ctx: ProxyContext, host: str, namespace: str) -> bool:
    """Whether the proxy's Sidecar egress hosts import `host` (an FQDN, may be a wildcard)
    for config in `namespace` (e.g. a VirtualService's namespace), with istiod's
    VirtualService semantics (names overlap) and `~` exclusions. True without a Sidecar."""
    scope = ctx.sidecar
    if scope is None:
        return True
    return any(e.imports_host(host.lower(), namespace) for e in scope.egress)


def service_in_scope(ctx: ProxyContext, host: str, namespace: str) -> bool:
    """Whether the service `host` of `namespace` is among the services the proxy imports."""
    return any(s.hostname == host and s.namespace == namespace for s in ctx.services)


def listener_services(egress: EgressScope) -> tuple[Service, ...]:
    """The services a port-specific egress listener serves, on its port with its protocol."""
    if egress.port is None:
        return egress.services
    out: list[Service] = []
    for s in egress.services:
        sp = s.port_by_number(egress.port)
        if sp is None:
            continue
        port = ServicePort(sp.name, egress.port, egress.protocol, sp.target_port)
        out.append(dataclasses.replace(s, ports=(port,)))
    return tuple(out)


# ---------------------------------------------------------------- ingress listeners


@dataclass(frozen=True)
class IngressPlan:
    """One Sidecar ingress listener as istiod builds it (buildInboundChainConfigs and
    buildInboundClustersFromSidecar): a chain on virtualInbound, or (captureMode NONE,
    or a NONE-mode proxy) a listener of its own bound to `bind`:`port`; its cluster
    `inbound|PORT||` goes to `endpoint`:`endpoint_port` (STATIC), to a unix socket, or
    with no endpoint to the original destination."""

    port: int
    protocol: Protocol
    bind: str
    bind_to_port: bool
    endpoint: str = ""  # IP, "unix://PATH", or "" (ORIGINAL_DST)
    endpoint_port: int = 0

    @property
    def name(self) -> str:
        return f"{self.bind}_{self.port}"


def _global_unicast(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified)


def _endpoint(default_endpoint: str, proxy_ips: tuple[str, ...], ip_family: str) -> tuple[str, int]:
    if not default_endpoint:
        return "", 0
    if default_endpoint.startswith("unix://"):
        return default_endpoint, 0
    host, _, port_text = default_endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    v4 = [a for a in proxy_ips if c.ip_version(a) == 4]
    v6 = [a for a in proxy_ips if c.ip_version(a) == 6]
    localhosts = {
        "v4": (c.LOCALHOST_V4,),
        "v6": (c.LOCALHOST_V6,),
        "dual": (c.LOCALHOST_V4, c.LOCALHOST_V6),
    }[ip_family]
    if host == "0.0.0.0":
        return (v4[0] if v4 else c.LOCALHOST_V4), port
    if host == "::":
        return (v6[0] if v6 else c.LOCALHOST_V6), port
    if host == "127.0.0.1":
        return (c.LOCALHOST_V4 if c.LOCALHOST_V4 in localhosts else localhosts[0]), port
    if host == "::1":
        return (c.LOCALHOST_V6 if c.LOCALHOST_V6 in localhosts else localhosts[0]), port
    return "", port  # ":PORT": no address, the original destination


def ingress_plans(
    scope: SidecarScope, proxy: Proxy, ip_family: str, conflicts: list[str]
) -> tuple[IngressPlan, ...]:
    """The Sidecar's ingress listeners for this proxy, by port (istiod order)."""
    none_mode = proxy.interception_mode is InterceptionMode.NONE
    wildcard = c.WILDCARD_V6 if ip_family == "v6" else c.WILDCARD_V4
    default_bind = next((a for a in proxy.ip_addresses if _global_unicast(a)), wildcard)
    out: dict[int, IngressPlan] = {}
    for i in scope.ingress:
        bind_to_port = none_mode if i.capture_mode == "DEFAULT" else i.capture_mode == "NONE"
        bind = i.bind or default_bind
        if i.port.number in c.RESERVED_PORTS and bind in (c.WILDCARD_V4, c.WILDCARD_V6):
            conflicts.append(
                f"{_label_of(scope)} ingress port {i.port.number}: reserved by the proxy itself"
            )
            continue
        address, port = _endpoint(i.default_endpoint, proxy.ip_addresses, ip_family)
        out[i.port.number] = IngressPlan(
            port=i.port.number,
            protocol=i.port.protocol,
            bind=bind,
            bind_to_port=bind_to_port,
            endpoint=address,
            endpoint_port=port,
        )
    return tuple(out[p] for p in sorted(out))


def _label_of(scope: SidecarScope) -> str:
    return _label(scope.config) if scope.config is not None else "default Sidecar scope"
