"""Gateway (router) proxies: listeners, routes, clusters and SDS secrets.

Facts relied on (istio/istio):
- pilot/pkg/networking/core/gateway.go buildGatewayListeners: one listener per
  (bind, port), named "BIND_PORT" ("0.0.0.0_PORT"), bound for real (no iptables),
  traffic direction OUTBOUND; plain HTTP servers share one HCM chain with RDS
  "http.PORT"; each TLS-terminating HTTPS server gets its own chain matched on
  its SNI hosts (sorted; none when "*"), a DownstreamTlsContext and RDS
  "https.NUMBER.PORTNAME.GW.NS"; TCP servers (and TLS-terminating TCP servers)
  tcp_proxy to the first matching `tcp` route of a VirtualService bound to the
  gateway (buildGatewayNetworkFiltersFromTCPRoutes); PASSTHROUGH servers get one
  chain per matching `tls` route match, on its sniHosts
  (buildGatewayNetworkFiltersFromTLSRoutes, duplicates skipped); a TLS inspector
  when any chain matches SNI or carries TLS (buildGatewayListener); chains have a
  15s transport_socket_connect_timeout (PILOT_GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT).
- The gateway HCM (buildGatewayConnectionManager): use_remote_address, XFCC
  SANITIZE_SET with set_current_client_cert_details (subject, cert, dns, uri);
  stat prefix "outbound_BIND_PORT", or the server name for HTTPS servers.
- listener.go BuildListenerTLSContext: ALPN h2,http/1.1; require_client_certificate
  true for MUTUAL only; credentialName -> SDS "kubernetes://NAME" over ADS (no
  initial_fetch_timeout), MUTUAL/OPTIONAL_MUTUAL add a combined validation context
  with SDS "kubernetes://NAME-cacert" and the subjectAltNames; SIMPLE with
  subjectAltNames -> a plain validation context; min/max TLS version and cipher
  suites -> tls_params (security/model/authentication.go).
- buildGatewayHTTPRouteConfig: virtual hosts from VirtualServices bound to the
  gateway, deduplicated by host; httpsRedirect -> require_tls ALL on the server's
  hosts (a vhost without routes where no VirtualService matches); no vhost at all
  -> "blackhole:PORT" for "*" with no routes (404); vhosts sorted by name;
  validate_clusters false, ignore_port_in_host_matching, 1 MiB direct responses.
- cluster.go buildClusters (gateways): outbound clusters of the visible services,
  BlackHoleCluster, no PassthroughCluster.
- pilot/pkg/xds/sds.go and credentials/kube/secrets.go: SDS for gateways serves
  Kubernetes Secrets of the proxy's namespace only; "NAME" -> tls_certificate,
  "NAME-cacert" -> validation_context.trusted_ca (a Secret of that name, else the
  CA keys of NAME).

Deviation: serverCertificate/privateKey/caCertificates files are given to Envoy as
file data sources (istiod passes them to istio-agent's SDS, which plain Envoy has
not); they must exist on the gateway's filesystem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xdsd.model import credentials as creds
from xdsd.model.istio.gateway import TLS_VERSIONS, ServerTLS
from xdsd.model.istio.virtualservice import Destination, RouteDestination
from xdsd.model.types import Service
from xdsd.translate import _common as c
from xdsd.translate import inbound, sni_dnat, vs_index
from xdsd.translate.context import ProxyContext
from xdsd.translate.destination_rule import SDS_DEFAULT, SDS_ROOT
from xdsd.translate.destination_rule import _sds as agent_sds
from xdsd.translate.gateway_plan import (
    CA_SUFFIX,
    GatewayListener,
    GatewayServer,
    credential_namespace_and_name,
    credential_resource,
    host_part,
    secret_data,
    tcp_route,
)
from xdsd.translate.gateway_plan import l4_match as _l4_match
from xdsd.translate.gateway_plan import matching_hosts as _matching_hosts
from xdsd.translate.listeners import HCM_FILTER, TCP_PROXY_FILTER, TLS_INSPECTOR_FILTER, _hcm
from xdsd.translate.vs_http import gateway_virtual_hosts

Listener = listener_pb2.Listener
FilterChain = listener_components_pb2.FilterChain
FilterChainMatch = listener_components_pb2.FilterChainMatch
Filter = listener_components_pb2.Filter
HCM = hcm_pb2.HttpConnectionManager
VirtualHost = route_components_pb2.VirtualHost

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
ALPN_HTTP = ("h2", "http/1.1")
TRANSPORT_SOCKET_CONNECT_TIMEOUT_S = 15


# ---------------------------------------------------------------- TLS


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    """istiod SDSAdsConfig: ADS, v3, initial_fetch_timeout left at Envoy's default."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _tls_params(tls: ServerTLS) -> common_pb2.TlsParameters | None:
    params = common_pb2.TlsParameters()
    used = False
    if tls.min_protocol_version != "TLS_AUTO":
        params.tls_minimum_protocol_version = TLS_VERSIONS.index(tls.min_protocol_version)
        used = True
    if tls.max_protocol_version != "TLS_AUTO":
        params.tls_maximum_protocol_version = TLS_VERSIONS.index(tls.max_protocol_version)
        used = True
    if tls.cipher_suites:
        params.cipher_suites.extend(tls.cipher_suites)
        used = True
    return params if used else None


def downstream_tls_context(tls: ServerTLS) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(alpn_protocols=list(ALPN_HTTP)),
        require_client_certificate=wrappers_pb2.BoolValue(value=tls.requires_client_cert),
    )
    common = ctx.common_tls_context
    if tls.mode == "ISTIO_MUTUAL":
        # The gateway's own workload certificate and the mesh roots, from its agent.
        common.tls_certificate_sds_secret_configs.append(agent_sds(SDS_DEFAULT))
        combined = common.combined_validation_context
        combined.default_validation_context.match_typed_subject_alt_names.extend(
            c.typed_san_matchers(tls.subject_alt_names)
        )
        combined.validation_context_sds_secret_config.CopyFrom(agent_sds(SDS_ROOT))
    elif tls.credential_name:
        name = credential_resource(tls.credential_name)
        common.tls_certificate_sds_secret_configs.append(_sds(name))
        if tls.validates_client:
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(
                c.typed_san_matchers(tls.subject_alt_names)
            )
            combined.validation_context_sds_secret_config.CopyFrom(_sds(name + CA_SUFFIX))
        elif tls.subject_alt_names:
            common.validation_context.match_typed_subject_alt_names.extend(
                c.typed_san_matchers(tls.subject_alt_names)
            )
    else:
        cert = common.tls_certificates.add()
        cert.certificate_chain.filename = tls.server_certificate
        cert.private_key.filename = tls.private_key
        if tls.validates_client:
            vc = common.validation_context
            vc.match_typed_subject_alt_names.extend(c.typed_san_matchers(tls.subject_alt_names))
            if tls.ca_certificates:
                vc.trusted_ca.filename = tls.ca_certificates
    params = _tls_params(tls)
    if params is not None:
        common.tls_params.CopyFrom(params)
    return ctx


def _transport_socket(tls: ServerTLS) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=TLS_TRANSPORT_SOCKET, typed_config=c.pack(downstream_tls_context(tls))
    )


# ---------------------------------------------------------------- network filters


def _service(ctx: ProxyContext, host: str) -> Service | None:
    for s in ctx.services:
        if s.hostname == host:
            return s
    return None


def destination_cluster(ctx: ProxyContext, dest: Destination, listen_port: int) -> str:
    """istiod GetDestinationCluster: the port given, else the service's only port, else ours."""
    if dest.port is not None:
        port = dest.port
    else:
        svc = _service(ctx, dest.host)
        port = svc.ports[0].port if svc is not None and len(svc.ports) == 1 else listen_port
    return c.outbound_cluster_name(port, dest.host, dest.subset)


def tcp_proxy_filter(
    ctx: ProxyContext, route: Sequence[RouteDestination], listen_port: int
) -> listener_components_pb2.Filter | None:
    weighted = [(destination_cluster(ctx, r.destination, listen_port), r.weight) for r in route]
    if len(weighted) == 1:
        cluster = weighted[0][0]
        tp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    else:
        weighted = [(n, w) for n, w in weighted if w > 0]
        if not weighted:
            return None
        tp = tcp_proxy_pb2.TcpProxy(stat_prefix=weighted[0][0])
        for name, weight in weighted:
            tp.weighted_clusters.clusters.add(name=name, weight=weight)
    return Filter(name=TCP_PROXY_FILTER, typed_config=c.pack(tp))


def _bound_virtual_services(
    ctx: ProxyContext, gs: GatewayServer
) -> tuple[vs_index.ResolvedVS, ...]:
    return vs_index.for_gateway(ctx.snapshot, ctx.namespace, gs.gateway)


def tcp_route_filter(ctx: ProxyContext, gs: GatewayServer) -> listener_components_pb2.Filter | None:
    found = tcp_route(ctx.snapshot, ctx.namespace, gs)
    return tcp_proxy_filter(ctx, found, gs.server.port.number) if found else None


# ---------------------------------------------------------------- listeners


def gateway_hcm(ctx: ProxyContext, route: str, stat_prefix: str) -> listener_components_pb2.Filter:
    # The sidecar HCM's filters and defaults, with the gateway's authn/authz filters.
    base = _hcm(stat_prefix, rds=route, security=inbound.http_security_filters(ctx))
    hcm = HCM()
    base.typed_config.Unpack(hcm)
    hcm.use_remote_address.value = True
    hcm.forward_client_cert_details = HCM.SANITIZE_SET
    hcm.set_current_client_cert_details.subject.value = True
    hcm.set_current_client_cert_details.cert = True
    hcm.set_current_client_cert_details.dns = True
    hcm.set_current_client_cert_details.uri = True
    hcm.http_protocol_options.SetInParent()
    return Filter(name=HCM_FILTER, typed_config=c.pack(hcm))


def _chain(
    filters: Sequence[listener_components_pb2.Filter],
    sni: Sequence[str] = (),
    tls: ServerTLS | None = None,
) -> listener_components_pb2.FilterChain:
    fc = FilterChain(
        filters=list(filters),
        transport_socket_connect_timeout=c.seconds(TRANSPORT_SOCKET_CONNECT_TIMEOUT_S),
    )
    if sni and "*" not in sni:
        fc.filter_chain_match.server_names.extend(sorted(sni))
    if tls is not None:
        fc.transport_socket.CopyFrom(_transport_socket(tls))
    return fc


def gateway_listener(
    ctx: ProxyContext, plan: GatewayListener, problems: list[str]
) -> listener_pb2.Listener | None:
    chains: list[listener_components_pb2.FilterChain] = []
    http_done = False
    seen_sni: set[str] = set()
    needs_inspector = False
    rbac_filters = inbound.network_security_filters(ctx)  # TCP chains: AuthorizationPolicy
    for gs in plan.servers:
        server = gs.server
        who = f"Gateway {gs.gateway} port {server.port.name} ({server.port.number})"
        if server.port.is_http:
            if not http_done:
                chains.append(_chain([gateway_hcm(ctx, gs.route_name, f"outbound_{plan.name}")]))
                http_done = True
        elif server.is_https_terminating:
            assert server.tls is not None
            stat = server.name or f"outbound_{plan.name}"
            chains.append(_chain([gateway_hcm(ctx, gs.route_name, stat)], gs.sni_hosts, server.tls))
            needs_inspector = True
        elif server.tls is not None and not server.is_passthrough:
            # TLS terminated, then TCP to the VirtualService's tcp route.
            f = tcp_route_filter(ctx, gs)
            if f is None:
                problems.append(f"{who}: no VirtualService tcp route for this server; no chain")
                continue
            chains.append(_chain([*rbac_filters, f], gs.sni_hosts, server.tls))
            needs_inspector = True
        elif server.tls is not None and server.tls.mode == "AUTO_PASSTHROUGH":
            for name, _oc in sni_dnat.targets(ctx, gs):
                if name in seen_sni:
                    continue
                seen_sni.add(name)
                tp = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=name)
                tcp = Filter(name=TCP_PROXY_FILTER, typed_config=c.pack(tp))
                chains.append(_chain([*rbac_filters, tcp], [name]))
                needs_inspector = True
        elif server.is_passthrough:
            for vs in _bound_virtual_services(ctx, gs):
                if not _matching_hosts(gs.hosts, vs):
                    continue
                for i, tls_route in enumerate(vs.spec.tls):
                    if not tls_route.route:
                        continue
                    for m in tls_route.match:
                        if not _l4_match(m, gs):
                            continue
                        dup = sorted(h for h in m.sni_hosts if h in seen_sni)
                        if dup:
                            problems.append(
                                f"{who}: VirtualService {vs.key} tls[{i}] skipped, duplicate SNI "
                                f"hosts {dup}"
                            )
                            continue
                        f = tcp_proxy_filter(ctx, tls_route.route, server.port.number)
                        if f is None:
                            continue
                        seen_sni.update(m.sni_hosts)
                        chains.append(_chain([*rbac_filters, f], m.sni_hosts))
                        needs_inspector = True
        else:
            f = tcp_route_filter(ctx, gs)
            if f is None:
                problems.append(f"{who}: no VirtualService tcp route for this server; no chain")
                continue
            chains.append(_chain([*rbac_filters, f]))
    if not chains:
        problems.append(f"listener {plan.name}: no filter chains; left out")
        return None
    ls = Listener(
        name=plan.name,
        address=c.socket_address(plan.bind, plan.port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=chains,
    )
    if needs_inspector:
        ls.listener_filters.add(
            name=TLS_INSPECTOR_FILTER, typed_config=c.pack(tls_inspector_pb2.TlsInspector())
        )
    return ls


def generate_gateway_listeners(ctx: ProxyContext) -> list[tuple[str, Message]]:
    if ctx.gateway is None:
        return []
    problems: list[str] = []
    out: list[tuple[str, Message]] = []
    for plan in ctx.gateway.listeners:
        ls = gateway_listener(ctx, plan, problems)
        if ls is not None:
            out.append((plan.name, ls))
    return out


# ---------------------------------------------------------------- routes


def gateway_route_configuration(ctx: ProxyContext, name: str) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(
        name=name,
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        ignore_port_in_host_matching=True,
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(
            value=c.MAX_DIRECT_RESPONSE_BODY_BYTES
        ),
    )
    servers = ctx.gateway.servers_for_route(name) if ctx.gateway is not None else ()
    vhosts: list[route_components_pb2.VirtualHost] = []
    by_domain: dict[str, route_components_pb2.VirtualHost] = {}
    for gs in servers:
        port = gs.server.port.number
        redirect = gs.server.tls is not None and gs.server.tls.https_redirect
        incoming = gateway_virtual_hosts(
            ctx,
            gateways=frozenset({gs.gateway}),
            server_hosts=gs.hosts,
            port=port,
            is_tls=gs.server.tls is not None and not gs.server.port.is_http,
        )
        for msg in incoming:
            vh = VirtualHost()
            vh.CopyFrom(msg)
            owner = by_domain.get(vh.domains[0]) if vh.domains else None
            if owner is not None and set(owner.domains) >= set(vh.domains):
                owner.routes.extend(vh.routes)
                if redirect:
                    owner.require_tls = VirtualHost.ALL
                continue
            fresh = [d for d in vh.domains if d not in by_domain]
            if not fresh:
                continue
            del vh.domains[:]
            vh.domains.extend(fresh)
            if redirect:
                vh.require_tls = VirtualHost.ALL
            for d in fresh:
                by_domain[d] = vh
            vhosts.append(vh)
        if redirect:
            for h in gs.hosts:
                domain = host_part(h).lower()
                owner = by_domain.get(domain)
                if owner is not None:
                    owner.require_tls = VirtualHost.ALL
                    continue
                vh = VirtualHost(
                    name=f"{domain}:{port}", domains=[domain], require_tls=VirtualHost.ALL
                )
                by_domain[domain] = vh
                vhosts.append(vh)
    if not vhosts:
        port = servers[0].server.port.number if servers else 0
        vhosts.append(VirtualHost(name=f"blackhole:{port}", domains=["*"]))
    vhosts.sort(key=lambda v: v.name)
    rc.virtual_hosts.extend(vhosts)
    return rc


def generate_gateway_routes(ctx: ProxyContext) -> list[tuple[str, Message]]:
    if ctx.gateway is None:
        return []
    return [(name, gateway_route_configuration(ctx, name)) for name, _ in ctx.gateway.routes]


# ---------------------------------------------------------------- SDS


def secret_for(ctx: ProxyContext, resource: str) -> secret_pb2.Secret | None:
    """One SDS resource ("kubernetes://NAME" or "kubernetes://NAME-cacert"), or None."""
    ns, name = credential_namespace_and_name(resource, ctx.namespace)
    if ns != ctx.namespace:
        return None  # istiod: kubernetes:// secrets only from the proxy's own namespace
    if name.endswith(CA_SUFFIX):
        data = secret_data(ctx.snapshot, ns, name)
        if data is None:
            data = secret_data(ctx.snapshot, ns, name[: -len(CA_SUFFIX)])
        ca = creds.ca_bundle(data) if data is not None else None
        if ca is None:
            return None
        return secret_pb2.Secret(
            name=resource,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=ca)
            ),
        )
    data = secret_data(ctx.snapshot, ns, name)
    pair = creds.key_pair(data) if data is not None else None
    if pair is None:
        return None
    return secret_pb2.Secret(
        name=resource,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=pair.cert),
            private_key=base_pb2.DataSource(inline_bytes=pair.key),
        ),
    )


def generate_secrets(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """Gateway credentials only: sidecars get their certificates from istio-agent."""
    if ctx.is_sidecar or ctx.gateway is None:
        return []
    out: list[tuple[str, Message]] = []
    for resource in sorted(ctx.gateway.credentials):
        secret = secret_for(ctx, resource)
        if secret is not None:
            out.append((resource, secret))
    return out


def for_routers(
    sidecar: Callable[[ProxyContext], list[tuple[str, Message]]],
    gateway: Callable[[ProxyContext], list[tuple[str, Message]]],
) -> Callable[[ProxyContext], list[tuple[str, Message]]]:
    """A generator that hands router proxies to `gateway` and the rest to `sidecar`."""

    def generate(ctx: ProxyContext) -> list[tuple[str, Message]]:
        return sidecar(ctx) if ctx.is_sidecar else gateway(ctx)

    return generate
