"""Everything one proxy's generation needs, computed once per (snapshot, proxy).

The context also holds the *plans* several generators share (which outbound
clusters exist and how they resolve, which outbound listeners and route
configurations exist), so CDS/EDS and LDS/RDS always agree with each other.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from xdsd.model.proxy import InterceptionMode, Proxy, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import (
    AddressView,
    Endpoint,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    Workload,
)
from xdsd.translate import _common as c
from xdsd.translate import sidecar_scope as scoping
from xdsd.translate import vs_index
from xdsd.translate.gateway_plan import MergedGateway, merge_gateways
from xdsd.translate.gateway_plan import port_map as gateway_port_map
from xdsd.translate.security_plan import SecurityPlan, plan_security
from xdsd.translate.sidecar_scope import IngressPlan, SidecarScope


class OutboundPolicy(enum.Enum):
    """MeshConfig/Sidecar outboundTrafficPolicy.mode (istiod default ALLOW_ANY)."""

    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


class ClusterKind(enum.Enum):
    EDS = "EDS"
    STRICT_DNS = "STRICT_DNS"
    LOGICAL_DNS = "LOGICAL_DNS"
    ORIGINAL_DST = "ORIGINAL_DST"


@dataclass(frozen=True)
class OutboundCluster:
    name: str
    service: Service
    port: ServicePort
    kind: ClusterKind
    # DNS clusters: (host, port) pairs to resolve, sorted.
    dns_targets: tuple[tuple[str, int], ...] = ()
    # DestinationRule subset ("" for the service's default cluster) and the rule that
    # applies to the host for this proxy (xdsd.translate.dr_lookup.AppliedRule).
    subset: str = ""
    rule: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class InboundPort:
    """One port of the proxy's own workload that a service targets (istiod ServiceTarget)."""

    port: int  # workload (target) port: names the inbound|PORT|| cluster
    protocol: Protocol
    service_port: int
    hostnames: tuple[str, ...]  # every service targeting this port; the first decides the protocol
    namespace: str


@dataclass(frozen=True)
class ListenerPlan:
    """One outbound listener (virtualOutbound/virtualInbound are not planned here)."""

    name: str
    address: str
    port: int
    bind_to_port: bool
    http_route: str | None = None  # RDS name of the HTTP chain
    http_sniff: bool = False  # HTTP chain matched by ALPN (HTTP inspector); TCP falls through
    tcp_cluster: str | None = None  # plain TCP chain target
    sni: tuple[tuple[str, str], ...] = ()  # (server name, cluster) chains, TLS inspector
    passthrough_default: bool = False  # unmatched traffic goes to Passthrough/BlackHole


@dataclass(frozen=True)
class RoutePlan:
    name: str
    hosts: tuple[tuple[Service, ServicePort], ...]
    sniffed: bool = False  # per-service route of a sniffed VIP listener: one vhost, domains "*"


@dataclass(frozen=True)
class ProxyContext:
    snapshot: MeshSnapshot
    proxy: Proxy
    namespace: str
    dns_domain: str
    mode: InterceptionMode
    ip_family: str  # "v4", "v6" or "dual"
    outbound_policy: OutboundPolicy
    # Services visible to the proxy's namespace (exportTo), in snapshot order.
    services: tuple[Service, ...]
    # The proxy's own workloads (Pod/WorkloadEntry with its IP, in its namespace).
    workloads: tuple[Workload, ...]
    inbound: tuple[InboundPort, ...]
    clusters: tuple[OutboundCluster, ...]
    listeners: tuple[ListenerPlan, ...]
    routes: tuple[RoutePlan, ...]
    # Things left out (name clashes, port conflicts), for status/debug output.
    conflicts: tuple[str, ...]
    # What DestinationRule output depends on beyond the namespace (selector matches,
    # locality, failoverPriority labels): part of group_key.
    dr_key: tuple[object, ...] = ()
    # The Sidecar scope (sidecars only; None for gateways) and its ingress listeners.
    sidecar: SidecarScope | None = None
    ingress: tuple[IngressPlan, ...] = ()
    # Router proxies: the Gateways selecting it, merged (xdsd.translate.gateway_plan).
    gateway: MergedGateway | None = None
    # mTLS modes, AuthorizationPolicies, RequestAuthentications (security_plan).
    security: SecurityPlan = field(default_factory=SecurityPlan)

    @property
    def is_sidecar(self) -> bool:
        return self.proxy.type is ProxyType.SIDECAR

    @property
    def addresses(self) -> AddressView:
        """Which service addresses this proxy sees (`address_view`)."""
        return address_view(self.snapshot, self.proxy)

    @property
    def wildcard(self) -> str:
        return c.WILDCARD_V6 if self.ip_family == "v6" else c.WILDCARD_V4

    @property
    def localhost(self) -> str:
        return c.LOCALHOST_V6 if self.ip_family == "v6" else c.LOCALHOST_V4


def _who(service: Service) -> str:
    return f"{service.hostname} ({service.ref})"


def is_visible(service: Service, namespace: str) -> bool:
    """Istio exportTo: "*" everyone (the default), "." own namespace, "~" nobody, or names."""
    export = service.export_to or frozenset({"*"})
    if "*" in export:
        return True
    if "." in export and service.namespace == namespace:
        return True
    return namespace in export


def _ip_family(addresses: tuple[str, ...]) -> str:
    versions = set()
    for a in addresses:
        try:
            versions.add(ipaddress.ip_address(a).version)
        except ValueError:
            continue
    if versions == {6}:
        return "v6"
    if versions == {4, 6}:
        return "dual"
    return "v4"


def _own_workloads(snapshot: MeshSnapshot, proxy: Proxy) -> tuple[Workload, ...]:
    seen: set[tuple[str, str, str]] = set()
    out: list[Workload] = []
    for ip in proxy.ip_addresses:
        for w in snapshot.workloads_by_ip(ip):
            key = (w.ref.kind, w.namespace, w.name)
            if w.namespace == proxy.namespace and key not in seen:
                seen.add(key)
                out.append(w)
    return tuple(out)


def _target_port(sp: ServicePort, workload: Workload) -> int | None:
    if sp.name and sp.name in workload.port_overrides:
        return workload.port_overrides[sp.name]
    if sp.target_port is None:
        return sp.port
    if isinstance(sp.target_port, int):
        return sp.target_port
    return workload.named_ports.get(sp.target_port)


def _inbound_ports(
    snapshot: MeshSnapshot, namespace: str, workloads: tuple[Workload, ...]
) -> tuple[InboundPort, ...]:
    by_port: dict[int, InboundPort] = {}
    for svc in snapshot.services:
        if svc.namespace != namespace or not svc.selector:
            continue
        for w in workloads:
            if not all(w.labels.get(k) == v for k, v in svc.selector.items()):
                continue
            for sp in svc.ports:
                if sp.protocol is Protocol.UDP:
                    continue
                target = _target_port(sp, w)
                if target is None or not 0 < target < 65536:
                    continue
                cur = by_port.get(target)
                if cur is None:
                    by_port[target] = InboundPort(
                        target, sp.protocol, sp.port, (svc.hostname,), namespace
                    )
                elif svc.hostname not in cur.hostnames:
                    by_port[target] = InboundPort(
                        cur.port,
                        cur.protocol,
                        cur.service_port,
                        (*cur.hostnames, svc.hostname),
                        namespace,
                    )
    return tuple(by_port[p] for p in sorted(by_port))


SHARED_VIEW = AddressView()


def service_vip(service: Service, ip_family: str, view: AddressView = SHARED_VIEW) -> str | None:
    """The service address outbound TCP listeners bind (istiod GetAddressForProxy), if any:
    the proxy's own cluster's ClusterIP of a Service defined in several clusters, the
    allocated address of a ServiceEntry host when the proxy captures DNS."""
    addresses = service.addresses_for(view)
    ips = [a for a in addresses if c.is_ip(a) and a not in ("0.0.0.0", "::")]
    if not ips:
        return None
    want_v6 = ip_family == "v6"
    for a in ips:
        if c.is_ipv6(a) == want_v6:
            return a
    return ips[0]


def address_view(snapshot: MeshSnapshot, proxy: Proxy) -> AddressView:
    """The service addresses this proxy sees: its cluster, where some Service has
    per-cluster ClusterIPs, and whether it uses auto-allocated addresses, where some
    host has one (otherwise the shared view, so that proxies keep sharing resources)."""
    per_cluster, auto = snapshot.derived(
        f"{__name__}:address-views",
        lambda s: (
            any(svc.cluster_addresses for svc in s.services),
            any(svc.auto_addresses for svc in s.services),
        ),
    )
    if not per_cluster and not (auto and proxy.uses_auto_allocated_ips):
        return SHARED_VIEW
    auto = auto and proxy.uses_auto_allocated_ips
    return AddressView(
        proxy.cluster_id if per_cluster else "",
        auto,
        _ip_family(proxy.ip_addresses) if auto else "dual",
    )


def _is_passthrough(service: Service) -> bool:
    return service.resolution is Resolution.NONE or (
        service.headless and service.external_name is None
    )


def _dns_targets(
    snapshot: MeshSnapshot, service: Service, sp: ServicePort
) -> tuple[tuple[str, int], ...]:
    eps: tuple[Endpoint, ...] = snapshot.endpoints_for(service, sp.port)
    if service.external_name:
        return ((service.external_name, sp.port),)
    if eps:
        return tuple(sorted({(e.address, e.port) for e in eps}))
    if service.hostname.startswith("*"):
        return ()
    port = sp.target_port if isinstance(sp.target_port, int) else sp.port
    return ((service.hostname, port),)


def _outbound_clusters(
    snapshot: MeshSnapshot,
    services: tuple[Service, ...],
    proxy_type: ProxyType,
    conflicts: list[str],
) -> tuple[OutboundCluster, ...]:
    seen: dict[str, Service] = {}
    out: list[OutboundCluster] = []
    for svc in services:
        for sp in svc.ports:
            if sp.protocol is Protocol.UDP:
                continue
            name = c.outbound_cluster_name(sp.port, svc.hostname)
            if name in seen:
                other = seen[name]
                conflicts.append(
                    f"cluster {name}: {_who(svc)} hidden by {_who(other)} (same host and port)"
                )
                continue
            seen[name] = svc
            targets: tuple[tuple[str, int], ...] = ()
            if svc.external_name or svc.resolution is Resolution.DNS:
                kind = ClusterKind.STRICT_DNS
                targets = _dns_targets(snapshot, svc, sp)
            elif svc.resolution is Resolution.DNS_ROUND_ROBIN:
                kind = ClusterKind.LOGICAL_DNS
                # Envoy: a LOGICAL_DNS cluster has exactly one host to resolve.
                targets = _dns_targets(snapshot, svc, sp)[:1]
            elif _is_passthrough(svc) and proxy_type is ProxyType.SIDECAR:
                kind = ClusterKind.ORIGINAL_DST  # gateways fall back to EDS (as istiod)
            else:
                kind = ClusterKind.EDS
            if kind in (ClusterKind.STRICT_DNS, ClusterKind.LOGICAL_DNS) and not targets:
                conflicts.append(f"cluster {name}: {_who(svc)} has no endpoints or host to resolve")
                continue
            out.append(OutboundCluster(name, svc, sp, kind, targets))
    return tuple(out)


def _listeners(
    services: tuple[Service, ...],
    mode: InterceptionMode,
    ip_family: str,
    conflicts: list[str],
    *,
    bind: str = "",
    bind_to_port: bool = False,
    view: AddressView = SHARED_VIEW,
) -> tuple[tuple[ListenerPlan, ...], tuple[RoutePlan, ...]]:
    # A Sidecar egress listener with a bind address or captureMode NONE gets one listener
    # per port at that address (bound when captureMode NONE), like NONE-mode proxies
    # (istiod buildSidecarOutboundListeners).
    bound = mode is InterceptionMode.NONE or bind_to_port
    none_mode = bound or bool(bind)
    wildcard = c.WILDCARD_V6 if ip_family == "v6" else c.WILDCARD_V4
    localhost = bind or (c.LOCALHOST_V6 if ip_family == "v6" else c.LOCALHOST_V4)
    by_port: dict[int, list[tuple[Service, ServicePort]]] = {}
    for svc in services:
        for sp in svc.ports:
            if sp.protocol is not Protocol.UDP:
                by_port.setdefault(sp.port, []).append((svc, sp))

    listeners: dict[str, ListenerPlan] = {}
    routes: list[RoutePlan] = []

    def add(plan: ListenerPlan, owner: Service) -> None:
        if plan.name in listeners:
            conflicts.append(f"listener {plan.name}: {_who(owner)} left out, port already taken")
            return
        listeners[plan.name] = plan

    def tcp_plan(bind: str, port: int, entries: list[tuple[Service, ServicePort]]) -> None:
        sni: dict[str, str] = {}
        plain: list[tuple[Service, ServicePort]] = []
        for svc, sp in entries:
            if sp.protocol in (Protocol.TLS, Protocol.HTTPS):
                cluster = c.outbound_cluster_name(sp.port, svc.hostname)
                if svc.hostname in sni:
                    conflicts.append(f"listener {bind}_{port}: SNI of {_who(svc)} already taken")
                else:
                    sni[svc.hostname] = cluster
            else:
                plain.append((svc, sp))
        tcp_cluster = None
        if plain:
            first, fsp = plain[0]
            tcp_cluster = c.outbound_cluster_name(fsp.port, first.hostname)
            for svc, _ in plain[1:]:
                conflicts.append(
                    f"listener {c.listener_name(bind, port)}: TCP {_who(svc)} left out, "
                    f"{first.hostname} serves this port"
                )
        add(
            ListenerPlan(
                name=c.listener_name(bind, port),
                address=bind,
                port=port,
                bind_to_port=bound,
                tcp_cluster=tcp_cluster,
                sni=tuple(sorted(sni.items())),
                passthrough_default=bool(sni) and tcp_cluster is None and not none_mode,
            ),
            entries[0][0],
        )

    for port in sorted(by_port):
        entries = by_port[port]
        if none_mode:
            if port in c.RESERVED_PORTS:
                for svc, _ in entries:
                    conflicts.append(f"port {port} of {_who(svc)}: reserved by the proxy itself")
                continue
            http = [(s, p) for s, p in entries if p.protocol.is_http or p.protocol is Protocol.AUTO]
            tcp = [(s, p) for s, p in entries if (s, p) not in http]
            if http:
                add(
                    ListenerPlan(
                        name=c.listener_name(localhost, port),
                        address=localhost,
                        port=port,
                        bind_to_port=bound,
                        http_route=str(port),
                    ),
                    http[0][0],
                )
                routes.append(RoutePlan(str(port), tuple(http)))
                for svc, _ in tcp:
                    conflicts.append(
                        f"listener {c.listener_name(localhost, port)}: TCP {_who(svc)} left out, "
                        "HTTP services use this port"
                    )
            elif tcp:
                tcp_plan(localhost, port, tcp)
            continue

        # REDIRECT / TPROXY: iptables sends everything to virtualOutbound, which hands
        # connections to the listener matching the original destination.
        http_like: list[tuple[Service, ServicePort]] = []
        auto_vip: list[tuple[Service, ServicePort, str]] = []
        tcp_vip: list[tuple[Service, ServicePort, str]] = []
        tcp_novip: list[tuple[Service, ServicePort]] = []
        for svc, sp in entries:
            vip = service_vip(svc, ip_family, view)
            if sp.protocol.is_http:
                http_like.append((svc, sp))
            elif sp.protocol is Protocol.AUTO:
                if vip:
                    auto_vip.append((svc, sp, vip))
                else:
                    http_like.append((svc, sp))
            elif vip:
                tcp_vip.append((svc, sp, vip))
            elif svc.headless and svc.ref.kind == "Service":
                # Kubernetes headless TCP: istiod builds per-pod listeners; here the
                # connection goes through virtualOutbound to PassthroughCluster.
                continue
            else:
                tcp_novip.append((svc, sp))
        if http_like:
            add(
                ListenerPlan(
                    name=c.listener_name(wildcard, port),
                    address=wildcard,
                    port=port,
                    bind_to_port=False,
                    http_route=str(port),
                    http_sniff=True,
                    passthrough_default=True,
                ),
                http_like[0][0],
            )
            # Every HTTP and sniffed service on the port gets a virtual host in route "PORT".
            hosts = tuple(
                (s, p) for s, p in entries if p.protocol.is_http or p.protocol is Protocol.AUTO
            )
            routes.append(RoutePlan(str(port), hosts))
        for svc, sp, vip in auto_vip:
            route_name = f"{svc.hostname}:{port}"
            add(
                ListenerPlan(
                    name=c.listener_name(vip, port),
                    address=vip,
                    port=port,
                    bind_to_port=False,
                    http_route=route_name,
                    http_sniff=True,
                    tcp_cluster=c.outbound_cluster_name(port, svc.hostname),
                ),
                svc,
            )
            routes.append(RoutePlan(route_name, ((svc, sp),), sniffed=True))
        for svc, _sp, vip in tcp_vip:
            add(
                ListenerPlan(
                    name=c.listener_name(vip, port),
                    address=vip,
                    port=port,
                    bind_to_port=False,
                    tcp_cluster=c.outbound_cluster_name(port, svc.hostname),
                ),
                svc,
            )
        if tcp_novip:
            if http_like:
                for svc, _ in tcp_novip:
                    conflicts.append(
                        f"listener {c.listener_name(wildcard, port)}: TCP {_who(svc)} left out, "
                        "HTTP services use this port"
                    )
            else:
                tcp_plan(wildcard, port, tcp_novip)

    ordered = tuple(listeners[n] for n in sorted(listeners))
    # A route may be planned twice only through a listener clash; keep the first.
    seen: set[str] = set()
    uniq: list[RoutePlan] = []
    for r in routes:
        if r.name not in seen and any(lp.http_route == r.name for lp in ordered):
            seen.add(r.name)
            uniq.append(r)
    return ordered, tuple(sorted(uniq, key=lambda r: r.name))


def _egress_listeners(
    scope: SidecarScope,
    mode: InterceptionMode,
    ip_family: str,
    conflicts: list[str],
    view: AddressView = SHARED_VIEW,
) -> tuple[tuple[ListenerPlan, ...], tuple[RoutePlan, ...]]:
    """Listeners of every Sidecar egress listener, in order (istiod: a port-specific
    listener locks its address and port; the catch-all only fills what is left; a route
    name is served from the first egress listener that has it, GetEgressListenerForRDS)."""
    listeners: dict[str, ListenerPlan] = {}
    routes: dict[str, RoutePlan] = {}
    for egress in scope.egress:
        if egress.unix:
            conflicts.append(
                f"egress listener {egress.bind}: unix domain sockets not supported yet"
            )
            continue
        plans, rplans = _listeners(
            scoping.listener_services(egress),
            mode,
            ip_family,
            conflicts,
            bind=egress.bind,
            bind_to_port=egress.capture_mode == "NONE",
            view=view,
        )
        for plan in plans:
            listeners.setdefault(plan.name, plan)
        for rp in rplans:
            routes.setdefault(rp.name, rp)
    names = {lp.http_route for lp in listeners.values()}
    return (
        tuple(listeners[n] for n in sorted(listeners)),
        tuple(routes[n] for n in sorted(routes) if n in names),
    )


_OutboundPlan = tuple[
    tuple[OutboundCluster, ...], tuple[ListenerPlan, ...], tuple[RoutePlan, ...], tuple[object, ...]
]


def _outbound_plan(
    snapshot: MeshSnapshot,
    proxy: Proxy,
    scope: SidecarScope | None,
    services: tuple[Service, ...],
    workloads: tuple[Workload, ...],
    ip_family: str,
    conflicts: list[str],
) -> _OutboundPlan:
    """Clusters, listeners and routes: the same for all of a namespace's proxies with the
    same Sidecar, labels and locality, so computed once per snapshot for all of them."""
    memo: dict[Hashable, tuple[_OutboundPlan, tuple[str, ...]]] = snapshot.derived(
        f"{__name__}:outbound", lambda _s: {}
    )
    loc = workloads[0].locality if workloads else None
    key = (
        proxy.type,
        proxy.namespace,
        proxy.interception_mode,
        ip_family,
        id(scope),  # scopes are memoized per snapshot, so identity is stable within it
        tuple(sorted(proxy.labels.items())),
        loc,
        address_view(snapshot, proxy),
    )
    hit = memo.get(key)
    if hit is None:
        notes: list[str] = []
        clusters = _outbound_clusters(snapshot, services, proxy.type, notes)
        from xdsd.translate.destination_rule import plan_clusters  # it imports this module

        clusters, dr_key = plan_clusters(snapshot, proxy, workloads, clusters, notes)
        if scope is not None:
            listeners, routes = _egress_listeners(
                scope, proxy.interception_mode, ip_family, notes, address_view(snapshot, proxy)
            )
        else:
            listeners, routes = (), ()
        hit = memo[key] = ((clusters, listeners, routes, dr_key), tuple(notes))
    conflicts.extend(hit[1])
    return hit[0]


def proxy_context(snapshot: MeshSnapshot, proxy: Proxy) -> ProxyContext:
    namespace = proxy.namespace
    dns_domain = proxy.dns_domain
    if ".svc." not in dns_domain:
        dns_domain = f"{namespace}.svc.{snapshot.domain_suffix}"
    ip_family = _ip_family(proxy.ip_addresses)
    conflicts: list[str] = []
    is_sidecar = proxy.type is ProxyType.SIDECAR
    scope = scoping.scope_for(snapshot, proxy) if is_sidecar else None
    if scope is not None:
        services = scope.services  # Sidecar egress imports (istiod SidecarScope)
        conflicts.extend(scope.conflicts)
    else:
        services = tuple(s for s in snapshot.services if is_visible(s, namespace))
    workloads = _own_workloads(snapshot, proxy) if is_sidecar else ()
    inbound = _inbound_ports(snapshot, namespace, workloads) if is_sidecar else ()
    ingress: tuple[IngressPlan, ...] = ()
    if scope is not None and scope.ingress:
        # A Sidecar with ingress listeners replaces the service-derived inbound ports.
        ingress = scoping.ingress_plans(scope, proxy, ip_family, conflicts)
        inbound = tuple(
            InboundPort(i.port, i.protocol, i.port, (f"{scope.name}.{scope.namespace}",), namespace)
            for i in ingress
            if not i.bind_to_port
        )
    clusters, listeners, routes, dr_key = _outbound_plan(
        snapshot, proxy, scope, services, workloads, ip_family, conflicts
    )
    conflicts.extend(vs_index.index(snapshot).problems)  # VirtualService delegates, hosts
    gateway = None
    if not is_sidecar:
        wildcard = c.WILDCARD_V6 if ip_family == "v6" else c.WILDCARD_V4
        gateway = merge_gateways(snapshot, proxy, wildcard, gateway_port_map(snapshot, proxy))
        conflicts.extend(gateway.problems)
    return ProxyContext(
        snapshot=snapshot,
        proxy=proxy,
        namespace=namespace,
        dns_domain=dns_domain,
        mode=proxy.interception_mode,
        ip_family=ip_family,
        outbound_policy=OutboundPolicy(
            scope.outbound_mode if scope is not None else scoping.MESH_DEFAULT_OUTBOUND
        ),
        services=services,
        workloads=workloads,
        inbound=inbound,
        clusters=clusters,
        listeners=listeners,
        routes=routes,
        conflicts=tuple(conflicts),
        dr_key=dr_key,
        sidecar=scope,
        ingress=ingress,
        gateway=gateway,
        security=plan_security(snapshot, proxy, namespace, workloads),
    )


def group_key(ctx: ProxyContext) -> Hashable:
    """Everything generation reads from the proxy; equal keys give identical resources.

    The rest of generation reads only the snapshot (the cache keys by generation).
    """
    return (*_shared_key(ctx), ctx.inbound, ctx.ingress, ctx.security.key())


def outbound_key(ctx: ProxyContext) -> Hashable:
    """group_key without the proxy's own workload ports (inbound, Sidecar ingress): what
    outbound clusters, endpoints, listeners and routes read, so that every app of a
    namespace shares them."""
    return ("outbound", *_shared_key(ctx))


def _shared_key(ctx: ProxyContext) -> tuple[object, ...]:
    return (
        ctx.proxy.type.value,
        ctx.namespace,
        ctx.dns_domain,
        ctx.mode.value,
        ctx.ip_family,
        ctx.outbound_policy.value,
        ctx.dr_key,
        ctx.sidecar.key if ctx.sidecar is not None else None,  # the applied Sidecar
        vs_index.group_key(ctx.snapshot, ctx.proxy),  # VirtualService sourceLabels
        ctx.gateway,  # router proxies: selected Gateways, merged (labels, resolved ports)
        address_view(ctx.snapshot, ctx.proxy),  # own-cluster VIPs, allocated addresses
    )


def context_key(snapshot: MeshSnapshot, proxy: Proxy) -> Hashable:
    """Everything `proxy_context` reads from the proxy (and its own workloads).

    Proxies with equal keys get equal contexts, so one context serves all of them
    (e.g. the pods of one Deployment): the pod name, and the IP beyond its family,
    are not read, except for gateways and by Sidecar ingress listeners.
    """
    own = tuple(
        (
            w.ref.kind,
            w.namespace,
            tuple(sorted(w.labels.items())),
            tuple(sorted(w.named_ports.items())),
            tuple(sorted(w.port_overrides.items())),
            w.locality,
            w.service_account,
            w.cluster_id,
            w.network,
        )
        for w in _own_workloads(snapshot, proxy)
    )
    addresses: object = _ip_family(proxy.ip_addresses)
    if proxy.type is not ProxyType.SIDECAR or scoping.has_ingress(snapshot):
        addresses = proxy.ip_addresses
    return (
        proxy.type,
        proxy.namespace,
        proxy.dns_domain,
        proxy.interception_mode,
        proxy.cluster_id,
        proxy.network,
        proxy.uses_auto_allocated_ips,
        tuple(sorted(proxy.labels.items())),
        addresses,
        own,
    )
