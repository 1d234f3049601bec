"""Which Gateways a router proxy serves, merged into listeners and routes (istiod mergeGateways).

Facts relied on (istio/istio):
- pilot/pkg/model/push_context.go mergeGateways: with PILOT_SCOPE_GATEWAY_TO_NAMESPACE
  off (the default) Gateways in every namespace apply; a Gateway without selector
  applies to every gateway proxy, else its selector must be a subset of the proxy's
  labels. Order: creation time, then name, then namespace (initGateways,
  configCompareByCreationTime); config files carry no creation time.
- pilot/pkg/model/gateway.go: server hosts "./h" -> "GWNS/h", "*/h" -> "h", "*/*" -> "*"
  (sanitizeServerHostNamespace); route names "http.PORT[.BIND]" and
  "https.NUMBER.PORTNAME.GWNAME.GWNS[.BIND]" (gatewayRDSRouteName); ports are the
  targetPort of a Service port selecting the proxy's own Pod, else the number as
  written (resolvePorts, legacy selector); TLS hosts may not repeat on a port+bind
  (CheckDuplicates); plain text servers merge only HTTP with HTTP (canMergeProtocols);
  two HTTPS servers on a port need distinct route names; SNI hosts are the server
  hosts without "ns/" (GetSNIHostsForServer).
- credentialName secrets a gateway may read: those its servers reference, in the
  proxy's own namespace (VerifiedCertificateReferences; "NAME-cacert" for MUTUAL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xdsd.model import credentials as creds
from xdsd.model.istio.gateway import Gateway, Server
from xdsd.model.istio.virtualservice import L4Match, RouteDestination
from xdsd.model.objects import SecretData
from xdsd.model.proxy import Proxy
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject
from xdsd.translate import vs_index

KUBERNETES_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"


@dataclass(frozen=True)
class GatewayServer:
    """One Gateway server, hosts sanitized, as merged into a listener."""

    gateway: str  # "NS/NAME"
    gateway_name: str
    gateway_namespace: str
    server: Server
    hosts: tuple[str, ...]  # sanitized: "ns/host" or "host"
    listener_port: int  # resolved (targetPort) port
    route_name: str  # RDS name; "" for TCP/TLS-passthrough servers
    sni_hosts: tuple[str, ...]  # sorted hosts without "ns/" (TLS servers)

    @property
    def is_plaintext(self) -> bool:
        """Not istio IsTLSServer: HTTP (with or without httpsRedirect) or TCP without TLS."""
        return not self.server.is_tls_server


@dataclass(frozen=True)
class GatewayListener:
    name: str
    bind: str
    port: int
    servers: tuple[GatewayServer, ...]


@dataclass(frozen=True)
class MergedGateway:
    gateways: tuple[str, ...]  # "NS/NAME" of the selected Gateways, in merge order
    listeners: tuple[GatewayListener, ...]
    routes: tuple[tuple[str, tuple[GatewayServer, ...]], ...]  # route name -> servers
    credentials: frozenset[str]  # SDS resource names the proxy may get
    problems: tuple[str, ...]

    def servers_for_route(self, name: str) -> tuple[GatewayServer, ...]:
        for route, servers in self.routes:
            if route == name:
                return servers
        return ()


def sanitize_hosts(hosts: tuple[str, ...], namespace: str) -> tuple[str, ...]:
    out: list[str] = []
    for h in hosts:
        ns, sep, name = h.partition("/")
        if not sep:
            out.append(h)
        elif ns == ".":
            out.append(f"{namespace}/{name}")
        elif ns == "*":
            if name == "*":
                return ("*",)
            out.append(name)
        else:
            out.append(h)
    return tuple(out)


def host_part(host: str) -> str:
    return host.partition("/")[2] if "/" in host else host


def route_name(server: Server, port: int, gw_name: str, gw_ns: str) -> str:
    bind = f".{server.bind}" if server.bind else ""
    if server.port.is_http:
        return f"http.{port}{bind}"
    if server.port.protocol == "HTTPS" and not server.is_passthrough:
        return f"https.{server.port.number}.{server.port.name}.{gw_name}.{gw_ns}{bind}"
    return ""


def credential_resource(name: str) -> str:
    """istiod credentials.ToResourceName for kubernetes secrets."""
    return name if name.startswith(KUBERNETES_PREFIX) else KUBERNETES_PREFIX + name


def credential_namespace_and_name(resource: str, proxy_namespace: str) -> tuple[str, str]:
    """ "kubernetes://NAME" -> (proxy ns, NAME); "kubernetes://NS/NAME" -> (NS, NAME)."""
    rest = (
        resource[len(KUBERNETES_PREFIX) :] if resource.startswith(KUBERNETES_PREFIX) else resource
    )
    ns, sep, name = rest.partition("/")
    return (ns, name) if sep else (proxy_namespace, rest)


def selected_gateways(snapshot: MeshSnapshot, proxy: Proxy) -> list[ConfigObject]:
    found = [
        c
        for c in snapshot.configs_of("Gateway")
        if isinstance(c.typed, Gateway) and c.typed.selects(proxy.labels)
    ]
    found.sort(key=lambda c: (c.created, c.name, c.namespace))  # istiod: oldest first
    return found


def port_map(snapshot: MeshSnapshot, proxy: Proxy) -> dict[int, int]:
    """Service port -> targetPort for Services selecting the proxy's own Pod (first wins)."""
    workloads = [
        w
        for ip in proxy.ip_addresses
        for w in snapshot.workloads_by_ip(ip)
        if w.namespace == proxy.namespace
    ]
    out: dict[int, int] = {}
    if not workloads:
        return out
    for svc in snapshot.services:
        if svc.namespace != proxy.namespace or not svc.selector:
            continue
        for w in workloads:
            if not all(w.labels.get(k) == v for k, v in svc.selector.items()):
                continue
            for sp in svc.ports:
                target: int | None
                if sp.name and sp.name in w.port_overrides:
                    target = w.port_overrides[sp.name]
                elif sp.target_port is None:
                    target = sp.port
                elif isinstance(sp.target_port, int):
                    target = sp.target_port
                else:
                    target = w.named_ports.get(sp.target_port)
                if target is not None:
                    out.setdefault(sp.port, target)
    return out


def host_matches(a: str, b: str) -> bool:
    """istio host.Name.Matches (either may be a wildcard)."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        return b[1:].endswith(a[1:]) if len(a) < len(b) else a[1:].endswith(b[1:])
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def matching_hosts(server_hosts: tuple[str, ...], vs: vs_index.ResolvedVS) -> bool:
    """istiod pickMatchingGatewayHosts: does any server host match a VirtualService host?"""
    for vh in vs.spec.hosts:
        for gh in server_hosts:
            ns, sep, name = gh.partition("/")
            if sep:
                if ns != vs.namespace:
                    continue
                gh = name
            if host_matches(gh, vh):
                return True
    return False


def l4_match(m: L4Match, gs: GatewayServer) -> bool:
    """istiod l4SingleMatch: the match's port (if any) and gateways (if any)."""
    port_ok = not m.port or m.port == gs.server.port.number
    return port_ok and (not m.gateways or gs.gateway in m.gateways)


def tcp_route(
    snapshot: MeshSnapshot, namespace: str, gs: GatewayServer
) -> tuple[RouteDestination, ...]:
    """The first `tcp` route of a VirtualService bound to the server's gateway that fits it."""
    for vs in vs_index.for_gateway(snapshot, namespace, gs.gateway):
        if not matching_hosts(gs.hosts, vs):
            continue
        for tcp in vs.spec.tcp:
            if tcp.route and (not tcp.match or any(l4_match(m, gs) for m in tcp.match)):
                return tcp.route
    return ()


def has_tls_route(snapshot: MeshSnapshot, namespace: str, gs: GatewayServer) -> bool:
    for vs in vs_index.for_gateway(snapshot, namespace, gs.gateway):
        if matching_hosts(gs.hosts, vs) and any(
            t.route and any(l4_match(m, gs) for m in t.match) for t in vs.spec.tls
        ):
            return True
    return False


def secret_data(snapshot: MeshSnapshot, namespace: str, name: str) -> SecretData | None:
    for cfg in snapshot.configs_of("Secret"):
        if cfg.namespace == namespace and cfg.name == name:
            data = cfg.spec.get("data")
            return data if isinstance(data, SecretData) else None
    return None


def credential_available(snapshot: MeshSnapshot, resource: str, namespace: str) -> bool:
    ns, name = credential_namespace_and_name(resource, namespace)
    if name.endswith(CA_SUFFIX):
        data = secret_data(snapshot, ns, name)
        if data is None:  # istiod GetCaCert: else the CA keys of the Secret without suffix
            data = secret_data(snapshot, ns, name[: -len(CA_SUFFIX)])
        return data is not None and creds.ca_bundle(data) is not None
    data = secret_data(snapshot, ns, name)
    return data is not None and creds.key_pair(data) is not None


def is_auto_passthrough(gs: GatewayServer) -> bool:
    return gs.server.tls is not None and gs.server.tls.mode == "AUTO_PASSTHROUGH"


def server_selects_host(gs: GatewayServer, namespace: str, hostname: str) -> bool:
    """Whether a server's hosts (`ns/host` or `host`, wildcards) take a service's host."""
    for h in gs.hosts:
        ns, sep, name = h.partition("/")
        if sep and ns not in ("*", namespace):
            continue
        if host_matches(name if sep else h, hostname):
            return True
    return False


def sni_dnat_name(port: int, subset: str, hostname: str) -> str:
    """model.BuildDNSSrvSubsetKey: the SNI of Istio mTLS, and the SNI-DNAT cluster's name."""
    return f"outbound_.{port}_.{subset}_.{hostname}"


def _route_problems(snapshot: MeshSnapshot, namespace: str, gs: GatewayServer) -> str:
    server = gs.server
    if server.is_http_server or is_auto_passthrough(gs):
        return ""
    if server.is_passthrough:
        if not has_tls_route(snapshot, namespace, gs):
            return "no VirtualService tls route (sniHosts) bound to this server; no filter chain"
        return ""
    if not tcp_route(snapshot, namespace, gs):
        return "no VirtualService tcp route bound to this server; no filter chain"
    return ""


def _unsupported(server: Server) -> str:
    if server.port.protocol == "UDP":
        return "UDP servers not supported yet"
    if server.bind.startswith("unix://"):
        return "unix domain socket binds not supported yet"
    return ""


def merge_gateways(
    snapshot: MeshSnapshot, proxy: Proxy, wildcard: str, ports: Mapping[int, int]
) -> MergedGateway:
    problems: list[str] = []
    names: list[str] = []
    # listener name -> servers, in first-seen order
    listeners: dict[str, list[GatewayServer]] = {}
    binds: dict[str, tuple[str, int]] = {}
    routes: dict[str, list[GatewayServer]] = {}
    tls_hosts: dict[tuple[int, str], set[str]] = {}
    credentials: set[str] = set()
    for cfg in selected_gateways(snapshot, proxy):
        gw: Gateway = cfg.typed
        gname = f"{cfg.namespace}/{cfg.name}"
        names.append(gname)
        for idx, server in enumerate(gw.servers):
            who = f"Gateway {gname} server {idx} (port {server.port.name} {server.port.number})"
            why = _unsupported(server)
            if why:
                problems.append(f"{who}: {why}; left out")
                continue
            hosts = sanitize_hosts(server.hosts, cfg.namespace)
            port = ports.get(server.port.number, server.port.number)
            rname = route_name(server, port, cfg.name, cfg.namespace)
            sni = tuple(sorted({host_part(h) for h in hosts})) if server.tls is not None else ()
            if server.tls is not None:
                known = tls_hosts.setdefault((port, server.bind), set())
                dup = sorted(h for h in hosts if h in known)
                if dup:
                    problems.append(f"{who}: duplicate host names {dup} on port {port}; left out")
                    continue
                known.update(hosts)
            gs = GatewayServer(gname, cfg.name, cfg.namespace, server, hosts, port, rname, sni)
            bind = server.bind or wildcard
            lname = f"{bind}_{port}"
            current = listeners.get(lname)
            if current is not None:
                plain = [s for s in current if s.is_plaintext]
                if plain:
                    first = plain[0]
                    can_merge = (
                        first.server.port.is_http
                        or first.server.port.protocol == server.port.protocol
                    ) and server.port.is_http
                    if not can_merge or not rname:
                        problems.append(
                            f"{who}: conflicts with {first.gateway} server on port {port} "
                            f"({first.server.port.protocol}); left out"
                        )
                        continue
                elif server.is_http_server and not server.port.is_http and rname in routes:
                    problems.append(
                        f"{who}: route {rname} already taken (non unique port name); left out"
                    )
                    continue
                elif server.tls is None and not server.is_http_server:
                    # a plain TCP server next to TLS servers: a match-all chain
                    pass
            listeners.setdefault(lname, []).append(gs)
            binds[lname] = (bind, port)
            if server.is_http_server and rname:
                routes.setdefault(rname, []).append(gs)
            if server.tls is not None and server.tls.credential_name and not server.is_passthrough:
                res = credential_resource(server.tls.credential_name)
                ns, _ = credential_namespace_and_name(res, proxy.namespace)
                if ns == proxy.namespace:
                    credentials.add(res)
                    if server.tls.validates_client:
                        credentials.add(res + CA_SUFFIX)
                else:
                    problems.append(
                        f"{who}: credentialName {server.tls.credential_name} is in namespace {ns}, "
                        f"not the gateway's namespace {proxy.namespace}; not served"
                    )
    for servers in listeners.values():
        for gs in servers:
            why = _route_problems(snapshot, proxy.namespace, gs)
            if why:
                problems.append(f"Gateway {gs.gateway} server {gs.server.port.name}: {why}")
    for res in sorted(credentials):
        if not credential_available(snapshot, res, proxy.namespace):
            problems.append(
                f"credential {res}: no Secret in {proxy.namespace} with a PEM "
                + (
                    "CA bundle (cacert or ca.crt)"
                    if res.endswith(CA_SUFFIX)
                    else "key pair (cert/key or tls.crt/tls.key)"
                )
                + "; TLS handshakes on its servers fail until it exists"
            )
    planned = tuple(
        GatewayListener(name, binds[name][0], binds[name][1], tuple(servers))
        for name, servers in listeners.items()
    )
    return MergedGateway(
        gateways=tuple(names),
        listeners=tuple(sorted(planned, key=lambda x: x.name)),
        routes=tuple(sorted((k, tuple(v)) for k, v in routes.items())),
        credentials=frozenset(credentials),
        problems=tuple(problems),
    )
