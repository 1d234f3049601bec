"""RDS: outbound route configurations named by port ("80"), or "HOST:PORT" for sniffed VIPs.

Like istiod for sidecars, virtual host domains carry no port suffix and the route
configuration sets ignore_port_in_host_matching, so "reviews:9080" matches "reviews".
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xdsd.model.types import Protocol, Service, ServicePort
from xdsd.translate import _common as c
from xdsd.translate import vs_http
from xdsd.translate.context import OutboundPolicy, ProxyContext, RoutePlan
from xdsd.translate.destination_rule import route_hash_policy

RouteConfiguration = route_pb2.RouteConfiguration
VirtualHost = route_components_pb2.VirtualHost
Route = route_components_pb2.Route
RouteAction = route_components_pb2.RouteAction


def _kube_alt_hosts(hostname: str, dns_domain: str) -> list[str]:
    """Short names of a Kubernetes-style host as seen from a proxy in `dns_domain`.

    istiod generateAltVirtualHostsForKubernetesService: same namespace -> NAME,
    NAME.NS.svc, NAME.NS; other namespace -> NAME.NS, NAME.NS.svc.
    """
    proxy_ns, _, _ = dns_domain.partition(".svc.")
    ih = hostname.find(".svc.")
    if ih <= 0:
        return []
    dot = hostname.find(".")
    if dot + 1 >= len(hostname) or dot + 1 > ih:
        return []
    if hostname[dot + 1 : ih] == proxy_ns:
        return [hostname[:dot], hostname[:ih] + ".svc", hostname[:ih]]
    return [hostname[:ih], hostname[:ih] + ".svc"]


def _shared_suffix_alt_hosts(hostname: str, dns_domain: str) -> list[str]:
    """istiod GenerateAltVirtualHosts for proxies whose domain has no ".svc."."""
    fq = hostname.split(".")
    pd = dns_domain.split(".")
    shared = 0
    while shared < min(len(fq), len(pd)) and fq[-1 - shared] == pd[-1 - shared]:
        shared += 1
    if shared == 0:
        return []
    unique = fq[: len(fq) - shared]
    out = [".".join(unique)]
    if len(unique) == 2:
        out.append(".".join(unique) + "." + pd[len(pd) - shared])
    return out


def virtual_host_domains(ctx: ProxyContext, service: Service) -> list[str]:
    host = service.hostname
    domains = [host]
    if host.startswith("*"):
        return domains
    # istiod (EnableAbsoluteFqdnVhostDomain): the absolute form "host." too.
    domains.append(host + ".")
    if ".svc." in ctx.dns_domain:
        suffix = ctx.dns_domain[ctx.dns_domain.index(".svc.") :]
        if host.endswith(suffix):
            domains += _kube_alt_hosts(host, ctx.dns_domain)
    else:
        domains += _shared_suffix_alt_hosts(host, ctx.dns_domain)
    for addr in service.addresses_for(ctx.addresses):
        if c.is_ip(addr) and addr not in ("0.0.0.0", "::"):
            domains.append(f"[{addr}]" if c.is_ipv6(addr) else addr)
    return domains


def _retry_policy() -> route_components_pb2.RetryPolicy:
    """istiod's default outbound retry policy (route/retry DefaultPolicy)."""
    return route_components_pb2.RetryPolicy(
        retry_on=c.DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=c.DEFAULT_NUM_RETRIES),
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=c.pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=c.DEFAULT_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )


def default_route(cluster: str, hostname: str, port: int) -> route_components_pb2.Route:
    return Route(
        name=c.DEFAULT_ROUTE,
        match=route_components_pb2.RouteMatch(prefix="/"),
        decorator=route_components_pb2.Decorator(operation=f"{hostname}:{port}/*"),
        route=RouteAction(
            cluster=cluster,
            timeout=c.seconds(0),
            max_stream_duration=vs_http.NO_TIMEOUT,
            retry_policy=_retry_policy(),
        ),
    )


def catch_all_virtual_host(policy: OutboundPolicy) -> route_components_pb2.VirtualHost:
    if policy is OutboundPolicy.ALLOW_ANY:
        return VirtualHost(
            name=c.ALLOW_ANY,
            domains=["*"],
            routes=[
                Route(
                    name=c.ALLOW_ANY,
                    match=route_components_pb2.RouteMatch(prefix="/"),
                    route=RouteAction(
                        cluster=c.PASSTHROUGH_CLUSTER,
                        timeout=c.seconds(0),
                        max_stream_duration=vs_http.NO_TIMEOUT,
                    ),
                )
            ],
        )
    return VirtualHost(
        name=c.BLOCK_ALL,
        domains=["*"],
        routes=[
            Route(
                name=c.BLOCK_ALL,
                match=route_components_pb2.RouteMatch(prefix="/"),
                direct_response=route_components_pb2.DirectResponseAction(status=502),
            )
        ],
    )


def _service_vhost(
    ctx: ProxyContext, service: Service, port: ServicePort, domains: list[str]
) -> route_components_pb2.VirtualHost:
    route = default_route(
        c.outbound_cluster_name(port.port, service.hostname), service.hostname, port.port
    )
    # istiod buildSidecarVirtualHostForService: the DestinationRule's consistentHash.
    route.route.hash_policy.extend(route_hash_policy(ctx, service, port.port))
    return VirtualHost(name=f"{service.hostname}:{port.port}", domains=domains, routes=[route])


def route_configuration(ctx: ProxyContext, plan: RoutePlan) -> route_pb2.RouteConfiguration:
    rc = RouteConfiguration(
        name=plan.name,
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(
            value=c.MAX_DIRECT_RESPONSE_BODY_BYTES
        ),
        ignore_port_in_host_matching=True,
    )
    # VirtualServices bound to the mesh replace the default virtual hosts of their hosts.
    port = plan.hosts[0][1].port if plan.hosts else 0
    vs = vs_http.sidecar_virtual_hosts(
        ctx, plan.hosts, port, lambda s: virtual_host_domains(ctx, s)
    )
    if plan.sniffed:
        svc, sp = plan.hosts[0]
        own = [v for v in vs.vhosts if v.name == f"{svc.hostname}:{port}"]
        if own:
            del own[0].domains[:]
            own[0].domains.append("*")
            rc.virtual_hosts.append(own[0])
            return rc
        rc.virtual_hosts.append(_service_vhost(ctx, svc, sp, ["*"]))
        return rc
    taken: set[str] = {d.lower() for v in vs.vhosts for d in v.domains}
    names: set[str] = {v.name for v in vs.vhosts}
    vhosts: list[route_components_pb2.VirtualHost] = list(vs.vhosts)
    for svc, sp in plan.hosts:
        name = f"{svc.hostname}:{sp.port}"
        if name in names or svc.hostname in vs.covered:
            continue  # same host from another namespace: the first (snapshot order) wins
        domains = []
        for d in virtual_host_domains(ctx, svc):
            if d not in taken:
                taken.add(d)
                domains.append(d)
        if not domains:
            continue
        names.add(name)
        vhosts.append(_service_vhost(ctx, svc, sp, domains))
    vhosts.sort(key=lambda v: v.name)
    rc.virtual_hosts.extend(vhosts)
    rc.virtual_hosts.append(catch_all_virtual_host(ctx.outbound_policy))
    return rc


def inbound_route_configuration(
    cluster: str, port: int, protocol: Protocol
) -> route_pb2.RouteConfiguration:
    """Inline route of an inbound HTTP chain (istiod buildSidecarInboundHTTPRouteConfig)."""
    action = RouteAction(
        cluster=cluster,
        timeout=c.seconds(0),
        max_stream_duration=RouteAction.MaxStreamDuration(
            max_stream_duration=c.seconds(0), grpc_timeout_header_max=c.seconds(0)
        ),
    )
    if protocol is not Protocol.GRPC:
        action.retry_policy.CopyFrom(
            route_components_pb2.RetryPolicy(
                retry_on=c.INBOUND_RETRY_ON,
                num_retries=wrappers_pb2.UInt32Value(value=c.DEFAULT_NUM_RETRIES),
            )
        )
    return RouteConfiguration(
        name=cluster,
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        virtual_hosts=[
            VirtualHost(
                name=f"{c.INBOUND_VHOST_PREFIX}{port}",
                domains=["*"],
                routes=[
                    Route(
                        name=c.DEFAULT_ROUTE,
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=action,
                    )
                ],
            )
        ],
    )


def generate_routes(ctx: ProxyContext) -> list[tuple[str, Message]]:
    if not ctx.is_sidecar:
        return []
    return [(plan.name, route_configuration(ctx, plan)) for plan in ctx.routes]
