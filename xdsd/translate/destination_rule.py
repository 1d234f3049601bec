"""DestinationRule: subset clusters, traffic policies on clusters and endpoints, hash policies.

Which rule applies to a host: `xdsd.translate.dr_lookup`. What a rule does follows
istiod (pilot/pkg/networking/core: cluster_builder.go applyDestinationRule,
buildSubsetCluster; cluster_traffic_policy.go applyTrafficPolicy,
applyConnectionPool, applyH2Upgrade, applyOutlierDetection, applyLoadBalancer,
ApplyRingHashLoadBalancer; cluster_tls.go; loadbalancer/loadbalancer.go;
networking/util GetPortLevelTrafficPolicy/MergeSubsetTrafficPolicy;
xds/endpoints/endpoint_builder.go; route/route.go ConsistentHashToHashPolicy,
hashForService, HashForHTTPDestination).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from xdsd.model.istio.destinationrule import (
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    LoadBalancer,
    LocalityLb,
    OutlierDetection,
    TrafficPolicy,
)
from xdsd.model.proxy import Proxy, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import Endpoint, Locality, Service, Workload
from xdsd.translate import _common as c
from xdsd.translate.context import ClusterKind, OutboundCluster, ProxyContext
from xdsd.translate.dr_lookup import AppliedRule, rule_for
from xdsd.translate.trust_domain import identities, trust_domains

Cluster = cluster_pb2.Cluster
HashPolicy = route_components_pb2.RouteAction.HashPolicy
HttpProtocolOptions = http_protocol_options_pb2.HttpProtocolOptions

# Names istiod and pilot-agent agree on (pkg/model/authentication.go, credentials/resource.go).
SDS_CLUSTER = "sds-grpc"
SDS_DEFAULT = "default"
SDS_ROOT = "ROOTCA"
SDS_CA_SUFFIX = "-cacert"
# ALPN in mesh with metadata exchange (util.ALPNInMeshWithMxc / ALPNInMeshH2WithMxc).
ALPN_IN_MESH = ("istio-peer-exchange", "istio")
ALPN_IN_MESH_H2 = ("istio-peer-exchange", "istio", "h2")
DEFAULT_RING_SIZE = 1024
# MeshConfig default localityLbSetting {enabled: true}: with outlier detection it
# turns on locality failover even when the rule sets no localityLbSetting.
MESH_LOCALITY = LocalityLb(enabled=True)


# ------------------------------------------------------------------ policy selection


def _port_level(policy: TrafficPolicy | None, port: int) -> tuple[TrafficPolicy | None, bool]:
    """util.GetPortLevelTrafficPolicy: a portLevelSettings entry replaces the whole policy."""
    if policy is None:
        return None, False
    for p in policy.port_level:
        if p.port == port:
            return (
                TrafficPolicy(p.load_balancer, p.connection_pool, p.outlier_detection, p.tls),
                True,
            )
    return policy, False


def effective_policy(rule: AppliedRule | None, port: int, subset: str = "") -> TrafficPolicy | None:
    """The policy for one cluster: top level (or its port level), overridden by the subset's."""
    if rule is None:
        return None
    top, _ = _port_level(rule.rule.traffic_policy, port)
    if not subset:
        return top
    sub = rule.subset(subset)
    if sub is None or sub.traffic_policy is None:
        return top
    sub_policy, has_port_level = _port_level(sub.traffic_policy, port)
    if top is None:
        return sub_policy
    assert sub_policy is not None
    # model.MergeTrafficPolicy: subset components win; a subset port level replaces all four.
    return TrafficPolicy(
        load_balancer=sub_policy.load_balancer
        if sub_policy.load_balancer is not None or has_port_level
        else top.load_balancer,
        connection_pool=sub_policy.connection_pool
        if sub_policy.connection_pool is not None or has_port_level
        else top.connection_pool,
        outlier_detection=sub_policy.outlier_detection
        if sub_policy.outlier_detection is not None or has_port_level
        else top.outlier_detection,
        tls=sub_policy.tls if sub_policy.tls is not None or has_port_level else top.tls,
    )


def _policies(rule: AppliedRule) -> Iterable[TrafficPolicy]:
    for tp in (rule.rule.traffic_policy, *(s.traffic_policy for s in rule.rule.subsets)):
        if tp is None:
            continue
        yield tp
        for p in tp.port_level:
            yield TrafficPolicy(p.load_balancer, p.connection_pool, p.outlier_detection, p.tls)


def _is_passthrough(policy: TrafficPolicy | None) -> bool:
    lb = policy.load_balancer if policy else None
    return lb is not None and lb.simple == "PASSTHROUGH"


def proxy_locality(workloads: Sequence[Workload]) -> Locality:
    """The proxy's locality (pilot-agent reports its pod's topology labels)."""
    return workloads[0].locality if workloads else Locality()


# ------------------------------------------------------------------ planning (context)


def _subset_endpoints(eps: Iterable[Endpoint], labels: Mapping[str, str] | None) -> list[Endpoint]:
    if not labels:
        return list(eps)
    want = list(labels.items())
    return [e for e in eps if all(e.labels.get(k) == v for k, v in want)]


def plan_clusters(
    snapshot: MeshSnapshot,
    proxy: Proxy,
    workloads: tuple[Workload, ...],
    clusters: tuple[OutboundCluster, ...],
    conflicts: list[str],
) -> tuple[tuple[OutboundCluster, ...], tuple[object, ...]]:
    """Attach each host's rule to its clusters and add `outbound|PORT|SUBSET|HOST` clusters.

    Returns the clusters and the part of the group key DestinationRules add.
    """
    if not snapshot.configs_of("DestinationRule"):
        return clusters, ()
    out: list[OutboundCluster] = []
    selected: set[tuple[str, str]] = set()
    uses_locality = False
    priority_labels: set[str] = set()
    rules: dict[tuple[str, str], AppliedRule | None] = {}
    for oc in clusters:
        skey = (oc.service.hostname, oc.service.namespace)
        if skey not in rules:
            rules[skey] = rule_for(snapshot, proxy.namespace, proxy.labels, oc.service)
        rule = rules[skey]
        if rule is None:
            out.append(oc)
            continue
        if rule.selector is not None:
            selected.add((rule.namespace, rule.name))
        for tp in _policies(rule):
            lb = tp.load_balancer
            if tp.outlier_detection is not None or (lb is not None and lb.locality is not None):
                uses_locality = True
            if lb is not None and lb.locality is not None:
                priority_labels.update(
                    p.partition("=")[0] for p in lb.locality.failover_priority if "=" not in p
                )
        policy = effective_policy(rule, oc.port.port)
        kind = oc.kind
        if _is_passthrough(policy) and kind is not ClusterKind.ORIGINAL_DST:
            kind = ClusterKind.ORIGINAL_DST
        out.append(replace(oc, kind=kind, rule=rule))
        for sub in rule.rule.subsets:
            name = c.outbound_cluster_name(oc.port.port, oc.service.hostname, sub.name)
            sub_policy = effective_policy(rule, oc.port.port, sub.name)
            sub_kind = oc.kind
            targets = oc.dns_targets
            if _is_passthrough(sub_policy):
                sub_kind = ClusterKind.ORIGINAL_DST
            elif sub_kind in (ClusterKind.STRICT_DNS, ClusterKind.LOGICAL_DNS):
                eps = snapshot.endpoints_for(oc.service, oc.port.port)
                if eps:
                    picked = _subset_endpoints(eps, sub.labels)
                    targets = tuple(sorted({(e.address, e.port) for e in picked}))
                elif sub.labels:
                    targets = ()
                if sub_kind is ClusterKind.LOGICAL_DNS:
                    targets = targets[:1]
                if not targets:
                    conflicts.append(
                        f"cluster {name}: no endpoints match subset {sub.name} of "
                        f"DestinationRule {rule.namespace}/{rule.name}"
                    )
                    continue
            out.append(
                OutboundCluster(
                    name, oc.service, oc.port, sub_kind, targets, subset=sub.name, rule=rule
                )
            )
    for rule in {id(r): r for r in rules.values() if r is not None}.values():
        for ns, name, path in rule.dropped:
            conflicts.append(
                f"DestinationRule merge for {rule.host}: {path} of {ns}/{name} ignored "
                f"(an older rule for the host has it)"
            )
        if proxy.type is ProxyType.SIDECAR and rule.selector is None:
            for tp in _policies(rule):
                tls = tp.tls
                if (
                    tls is not None
                    and tls.mode in ("SIMPLE", "MUTUAL")
                    and tls.credential_name
                    and not tls.credential_name.startswith("configmap://")
                ):
                    conflicts.append(
                        f"DestinationRule {rule.namespace}/{rule.name}: credentialName "
                        f"{tls.credential_name!r} applies to gateways and to rules with a "
                        "workloadSelector only; sidecars get no TLS from it (as istiod)"
                    )
                    break
    key: tuple[object, ...] = (tuple(sorted(selected)),)
    if uses_locality:
        loc = proxy_locality(workloads)
        key += ((loc.region, loc.zone, loc.subzone),)
    if priority_labels:
        key += (tuple((k, proxy.labels.get(k)) for k in sorted(priority_labels)),)
    return tuple(out), key


# ------------------------------------------------------------------ clusters (CDS)


def _duration(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


def _thresholds(cp: ConnectionPool) -> circuit_breaker_pb2.CircuitBreakers:
    big = c.MAX_UINT32
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=c.uint32(big),
        max_pending_requests=c.uint32(big),
        max_requests=c.uint32(big),
        max_retries=c.uint32(big),
        track_remaining=True,
    )
    if cp.http is not None:
        if cp.http.http2_max_requests:
            t.max_requests.value = cp.http.http2_max_requests
        if cp.http.http1_max_pending_requests:
            t.max_pending_requests.value = cp.http.http1_max_pending_requests
        if cp.http.max_retries:
            t.max_retries.value = cp.http.max_retries
    if cp.tcp is not None and cp.tcp.max_connections:
        t.max_connections.value = cp.tcp.max_connections
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def _set_h2(opts: http_protocol_options_pb2.HttpProtocolOptions) -> None:
    if opts.WhichOneof("upstream_protocol_options") is None:
        opts.explicit_http_config.http2_protocol_options.CopyFrom(
            protocol_pb2.Http2ProtocolOptions()
        )


def _is_http2(opts: http_protocol_options_pb2.HttpProtocolOptions) -> bool:
    explicit = opts.WhichOneof("upstream_protocol_options") == "explicit_http_config"
    return explicit and bool(opts.explicit_http_config.HasField("http2_protocol_options"))


def _apply_connection_pool(
    cl: cluster_pb2.Cluster, opts: http_protocol_options_pb2.HttpProtocolOptions, cp: ConnectionPool
) -> None:
    cl.circuit_breakers.CopyFrom(_thresholds(cp))
    idle: int | None = None
    per_conn = 0
    streams = 0
    max_duration: int | None = None
    if cp.http is not None:
        idle = cp.http.idle_timeout_ns
        per_conn = cp.http.max_requests_per_connection or 0
        streams = cp.http.max_concurrent_streams or 0
    if cp.tcp is not None:
        if cp.tcp.connect_timeout_ns is not None:
            cl.connect_timeout.CopyFrom(_duration(cp.tcp.connect_timeout_ns))
        max_duration = cp.tcp.max_connection_duration_ns
        if idle is None:
            idle = cp.tcp.idle_timeout_ns
        ka = cp.tcp.tcp_keepalive
        if ka is not None:
            tk = cl.upstream_connection_options.tcp_keepalive
            tk.SetInParent()
            if ka.probes:
                tk.keepalive_probes.value = ka.probes
            if ka.time_s is not None:
                tk.keepalive_time.value = ka.time_s
            if ka.interval_s is not None:
                tk.keepalive_interval.value = ka.interval_s
    if idle is not None or per_conn or streams or max_duration is not None:
        common = opts.common_http_protocol_options
        common.SetInParent()
        if idle is not None:
            common.idle_timeout.CopyFrom(_duration(idle))
        if per_conn:
            common.max_requests_per_connection.value = per_conn
        if max_duration is not None:
            common.max_connection_duration.CopyFrom(_duration(max_duration))
        if _is_http2(opts) and streams:
            opts.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = streams
    if cp.http is not None and cp.http.use_client_protocol:
        http1 = protocol_pb2.Http1ProtocolOptions()
        if opts.explicit_http_config.HasField("http_protocol_options"):
            http1.CopyFrom(opts.explicit_http_config.http_protocol_options)
        opts.use_downstream_protocol_config.CopyFrom(
            HttpProtocolOptions.UseDownstreamHttpConfig(
                http_protocol_options=http1,
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
            )
        )


def _apply_outlier(cl: cluster_pb2.Cluster, od: OutlierDetection) -> None:
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=c.uint32(0))
    if od.consecutive_5xx_errors is not None:
        v = od.consecutive_5xx_errors
        out.consecutive_5xx.value = v
        out.enforcing_consecutive_5xx.value = 100 if v > 0 else 0
    if od.consecutive_gateway_errors is not None:
        v = od.consecutive_gateway_errors
        out.consecutive_gateway_failure.value = v
        out.enforcing_consecutive_gateway_failure.value = 100 if v > 0 else 0
    if od.interval_ns is not None:
        out.interval.CopyFrom(_duration(od.interval_ns))
    if od.base_ejection_time_ns is not None:
        out.base_ejection_time.CopyFrom(_duration(od.base_ejection_time_ns))
    if od.max_ejection_percent > 0:
        out.max_ejection_percent.value = od.max_ejection_percent
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if od.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    cl.outlier_detection.CopyFrom(out)
    # istiod always sets the panic threshold (minHealthPercent, default 0 = disabled).
    cl.common_lb_config.healthy_panic_threshold.CopyFrom(
        percent_pb2.Percent(value=float(od.min_health_percent))
    )


def _locality_setting(lb: LoadBalancer | None) -> LocalityLb | None:
    """loadbalancer.GetEffectiveLbSetting: the rule's, else the mesh default (enabled)."""
    setting = lb.locality if lb is not None else None
    if setting is None:
        return MESH_LOCALITY
    if setting.enabled is False:
        return None
    return setting


def _slow_start(lb: LoadBalancer) -> cluster_pb2.Cluster.SlowStartConfig | None:
    w = lb.warmup
    if w is None:
        return None
    return Cluster.SlowStartConfig(
        slow_start_window=_duration(w.duration_ns),
        aggression=base_pb2.RuntimeDouble(
            default_value=1.0 if w.aggression is None else w.aggression, runtime_key="("
        ),
        min_weight_percent=percent_pb2.Percent(
            value=10.0 if w.minimum_percent is None else w.minimum_percent
        ),
    )


def _apply_load_balancer(
    ctx: ProxyContext,
    cl: cluster_pb2.Cluster,
    lb: LoadBalancer | None,
) -> None:
    if cl.lb_policy == Cluster.CLUSTER_PROVIDED and cl.type != Cluster.ORIGINAL_DST:
        return
    setting = _locality_setting(lb)
    if setting is not None:
        failover = cl.HasField("outlier_detection")
        if (failover and (setting.failover or setting.failover_priority)) or setting.distribute:
            cl.common_lb_config.locality_weighted_lb_config.SetInParent()
        if cl.HasField("load_assignment"):
            apply_locality(ctx, cl.load_assignment, setting, failover)
    if cl.type == Cluster.ORIGINAL_DST:
        cl.lb_policy = Cluster.CLUSTER_PROVIDED
        return
    simple = lb.simple if lb is not None else None
    slow = _slow_start(lb) if lb is not None else None
    if simple in ("LEAST_REQUEST", "LEAST_CONN"):
        cl.lb_policy = Cluster.LEAST_REQUEST
        if slow is not None:
            cl.least_request_lb_config.slow_start_config.CopyFrom(slow)
    elif simple == "RANDOM":
        cl.lb_policy = Cluster.RANDOM
    elif simple == "ROUND_ROBIN":
        cl.lb_policy = Cluster.ROUND_ROBIN
        if slow is not None:
            cl.round_robin_lb_config.slow_start_config.CopyFrom(slow)
    elif simple == "PASSTHROUGH":
        cl.lb_policy = Cluster.CLUSTER_PROVIDED
        cl.type = Cluster.ORIGINAL_DST
        cl.ClearField("load_assignment")
    else:
        cl.lb_policy = Cluster.LEAST_REQUEST
        if slow is not None:
            cl.least_request_lb_config.slow_start_config.CopyFrom(slow)
    ch = lb.consistent_hash if lb is not None else None
    if ch is None:
        return
    if ch.algorithm == "maglev":
        cl.lb_policy = Cluster.MAGLEV
        if ch.maglev_table_size:
            cl.maglev_lb_config.table_size.value = ch.maglev_table_size
    elif ch.algorithm == "ring_hash":
        cl.lb_policy = Cluster.RING_HASH
        if ch.minimum_ring_size:
            cl.ring_hash_lb_config.minimum_ring_size.value = ch.minimum_ring_size
    else:
        cl.lb_policy = Cluster.RING_HASH
        cl.ring_hash_lb_config.minimum_ring_size.value = ch.minimum_ring_size or DEFAULT_RING_SIZE


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    """pkg/model ConstructSdsSecretConfig: the local agent's SDS over cluster sds-grpc."""
    source = config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            set_node_on_first_message_only=True,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
        ),
        resource_api_version=config_source_pb2.V3,
    )
    if name in (SDS_DEFAULT, SDS_ROOT):
        source.initial_fetch_timeout.CopyFrom(c.seconds(0))
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def credential_resource_name(name: str) -> str:
    """credentials.ToResourceName: a credentialName as an SDS resource name."""
    if name.startswith("builtin://"):
        return SDS_DEFAULT
    if name.startswith(("kubernetes://", "kubernetes-gateway://", "configmap://")):
        return name
    return "kubernetes://" + name


def _sds_ads(name: str) -> secret_pb2.SdsSecretConfig:
    """ConstructSdsSecretConfigForCredential: credentialName secrets from the control plane (ADS)."""
    resource = credential_resource_name(name)
    if resource == SDS_DEFAULT:
        return _sds(SDS_DEFAULT)
    if name.startswith("builtin://") and name.endswith(SDS_CA_SUFFIX):
        return _sds(SDS_ROOT)
    return secret_pb2.SdsSecretConfig(
        name=resource,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _common_tls() -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        )
    )


def service_accounts(ctx: ProxyContext, oc: OutboundCluster) -> list[str]:
    """SPIFFE identities of the service's endpoints (istiod ServiceAccounts for the port)."""
    eps = ctx.snapshot.endpoints_for(oc.service, oc.port.port)
    bundle = trust_domains(ctx.snapshot)  # each identity in the domain and its aliases
    out = {
        spiffe
        for e in eps
        if e.service_account
        for spiffe in identities(bundle, e.namespace or oc.service.namespace, e.service_account)
    }
    return sorted(out)


def _mesh_sni(oc: OutboundCluster) -> str:
    """model.BuildDNSSrvSubsetKey: outbound_.PORT_.SUBSET_.HOST."""
    return f"outbound_.{oc.port.port}_.{oc.subset}_.{oc.service.hostname}"


def _tls_context(
    ctx: ProxyContext,
    oc: OutboundCluster,
    tls: ClientTls,
    opts: http_protocol_options_pb2.HttpProtocolOptions,
) -> tls_pb2.UpstreamTlsContext | None:
    rule: AppliedRule | None = oc.rule
    if tls.mode == "DISABLE":
        return None
    if tls.mode == "ISTIO_MUTUAL":
        sans = (
            list(tls.subject_alt_names)
            if tls.subject_alt_names is not None
            else service_accounts(ctx, oc)
        )
        common = _common_tls()
        common.tls_certificate_sds_secret_configs.append(_sds(SDS_DEFAULT))
        combined = common.combined_validation_context
        combined.default_validation_context.match_typed_subject_alt_names.extend(
            c.typed_san_matchers(sans, uri_only=True)
        )
        combined.validation_context_sds_secret_config.CopyFrom(_sds(SDS_ROOT))
        common.alpn_protocols.extend(ALPN_IN_MESH_H2 if _is_http2(opts) else ALPN_IN_MESH)
        return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni or _mesh_sni(oc))
    # SIMPLE / MUTUAL
    privileged = tls.credential_name and not tls.credential_name.startswith("configmap://")
    if privileged and ctx.is_sidecar and (rule is None or rule.selector is None):
        return None
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_common_tls(), sni=tls.sni)
    common = context.common_tls_context
    sans = list(tls.subject_alt_names or ())
    # setAutoSniAndAutoSanValidation
    if not tls.sni:
        opts.upstream_http_protocol_options.auto_sni = True
        if not sans and not tls.insecure_skip_verify:
            opts.upstream_http_protocol_options.auto_san_validation = True
    if tls.credential_name:
        if tls.mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(_sds_ads(tls.credential_name))
        if not tls.insecure_skip_verify:
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(
                c.typed_san_matchers(sans)
            )
            combined.validation_context_sds_secret_config.CopyFrom(
                _sds_ads(tls.credential_name + SDS_CA_SUFFIX)
            )
    else:
        ca = tls.ca_certificates or "system"
        if tls.mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(
                _sds(f"file-cert:{tls.client_certificate}~{tls.private_key}")
            )
        if tls.insecure_skip_verify:
            common.validation_context.SetInParent()
        else:
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(
                c.typed_san_matchers(sans)
            )
            combined.validation_context_sds_secret_config.CopyFrom(_sds(f"file-root:{ca}"))
    if _is_http2(opts):
        common.alpn_protocols.append("h2")
    return context


def _add_metadata(cl: cluster_pb2.Cluster, oc: OutboundCluster, tls: ClientTls | None) -> None:
    rule: AppliedRule = oc.rule
    istio = cl.metadata.filter_metadata["istio"]
    istio["config"] = (
        f"/apis/networking.istio.io/v1/namespaces/{rule.namespace}/destination-rule/{rule.name}"
    )
    if oc.subset:
        istio["subset"] = oc.subset
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL"):
        istio["alpn_override"] = "false"


def apply_cluster_policy(ctx: ProxyContext, oc: OutboundCluster, cl: cluster_pb2.Cluster) -> None:
    """Apply the rule's traffic policy for this cluster (port level, subset) to `cl` in place."""
    rule: AppliedRule | None = oc.rule
    if rule is None:
        return
    policy = effective_policy(rule, oc.port.port, oc.subset)
    key = c.HTTP_PROTOCOL_OPTIONS_KEY
    opts = HttpProtocolOptions()
    if key in cl.typed_extension_protocol_options:
        cl.typed_extension_protocol_options[key].Unpack(opts)
    before = opts.SerializeToString(deterministic=True)
    cp = policy.connection_pool if policy else None
    # applyH2Upgrade (MeshConfig h2UpgradePolicy default DO_NOT_UPGRADE).
    http = cp.http if cp is not None else None
    if http is not None and not http.use_client_protocol and http.h2_upgrade_policy == "UPGRADE":
        _set_h2(opts)
    _apply_connection_pool(cl, opts, cp or ConnectionPool())
    od = policy.outlier_detection if policy else None
    if od is not None:
        _apply_outlier(cl, od)
    _apply_load_balancer(ctx, cl, policy.load_balancer if policy else None)
    tls = policy.tls if policy else None
    if tls is not None and cl.type != Cluster.ORIGINAL_DST:
        context = _tls_context(ctx, oc, tls, opts)
        if context is not None:
            cl.transport_socket.name = "envoy.transport_sockets.tls"
            cl.transport_socket.typed_config.CopyFrom(c.pack(context))
    if cl.type == Cluster.ORIGINAL_DST:
        cl.lb_policy = Cluster.CLUSTER_PROVIDED
        cl.ClearField("eds_cluster_config")
    if opts.SerializeToString(deterministic=True) != before:
        if opts.WhichOneof("upstream_protocol_options") is None:
            opts.explicit_http_config.http_protocol_options.SetInParent()
        cl.typed_extension_protocol_options[key].CopyFrom(c.pack(opts))
    _add_metadata(cl, oc, tls)


# ------------------------------------------------------------------ endpoints (EDS)


def subset_endpoints(oc: OutboundCluster, eps: Iterable[Endpoint]) -> list[Endpoint]:
    """Endpoints of a subset cluster: those whose labels include the subset's labels."""
    rule: AppliedRule | None = oc.rule
    if not oc.subset or rule is None:
        return list(eps)
    sub = rule.subset(oc.subset)
    return _subset_endpoints(eps, sub.labels if sub else None)


def _locality_match(loc: Locality, rule: str) -> bool:
    region, _, rest = rule.partition("/")
    zone, _, subzone = rest.partition("/")
    return (
        (region == "*" or loc.region == region)
        and (zone in ("*", "") or loc.zone == zone)
        and (subzone in ("*", "") or loc.subzone == subzone)
    )


def _ep_locality(lle: endpoint_components_pb2.LocalityLbEndpoints) -> Locality:
    return Locality(lle.locality.region, lle.locality.zone, lle.locality.sub_zone)


def _renumber(groups: Sequence[endpoint_components_pb2.LocalityLbEndpoints]) -> None:
    used = sorted({g.priority for g in groups})
    rank = {p: i for i, p in enumerate(used)}
    for g in groups:
        g.priority = rank[g.priority]


def _apply_failover(
    loc: Locality,
    cla: endpoint_pb2.ClusterLoadAssignment,
    failover: Sequence[tuple[str, str]],
) -> None:
    for g in cla.endpoints:
        el = _ep_locality(g)
        if loc.region == el.region:
            prio = (
                0
                if loc.zone == el.zone and loc.subzone == el.subzone
                else (1 if loc.zone == el.zone else 2)
            )
        else:
            prio = 3
            for src, dst in failover:
                if src == loc.region:
                    if el.region != dst:
                        prio = 4
                    break
        g.priority = g.priority * 5 + prio
    _renumber(cla.endpoints)


def _apply_failover_priority(
    ctx: ProxyContext,
    cla: endpoint_pb2.ClusterLoadAssignment,
    eps_by_addr: dict[tuple[str, int], Endpoint],
    priorities: Sequence[str],
) -> None:
    labels = ctx.proxy.labels
    if not labels:
        return
    names = [p.partition("=")[0] for p in priorities]
    overrides = {p.partition("=")[0]: p.partition("=")[2] for p in priorities if "=" in p}
    lowest = len(priorities)
    network_first = bool(names) and names[0] == "topology.istio.io/network"
    out: list[endpoint_components_pb2.LocalityLbEndpoints] = []
    for g in cla.endpoints:
        buckets: dict[int, list[endpoint_components_pb2.LbEndpoint]] = {}
        for lb in g.lb_endpoints:
            sa = lb.endpoint.address.socket_address
            ep = eps_by_addr.get((sa.address, sa.port_value))
            ep_labels = ep.labels if ep else {}
            prio = 0
            adjust = 0
            for j, name in enumerate(names):
                want = overrides.get(name, labels.get(name))
                if want != ep_labels.get(name):
                    if j == 0 and network_first:
                        adjust = lowest
                        continue
                    prio = lowest - j
                    break
            buckets.setdefault(prio + adjust, []).append(lb)
        for prio in sorted(buckets):
            ng = endpoint_components_pb2.LocalityLbEndpoints()
            ng.CopyFrom(g)
            del ng.lb_endpoints[:]
            ng.lb_endpoints.extend(buckets[prio])
            ng.priority = prio
            ng.load_balancing_weight.value = sum(
                e.load_balancing_weight.value for e in buckets[prio]
            )
            out.append(ng)
    _renumber(out)
    del cla.endpoints[:]
    cla.endpoints.extend(out)


def _apply_distribute(
    loc: Locality, cla: endpoint_pb2.ClusterLoadAssignment, setting: LocalityLb
) -> None:
    for d in setting.distribute:
        if not _locality_match(loc, d.from_):
            continue
        mismatched = set(range(len(cla.endpoints)))
        for to, weight in d.to:
            matched: dict[int, int] = {}
            for i, g in enumerate(cla.endpoints):
                if i in mismatched and _locality_match(_ep_locality(g), to):
                    mismatched.discard(i)
                    matched[i] = (
                        g.load_balancing_weight.value if g.HasField("load_balancing_weight") else 1
                    )
            total = sum(matched.values())
            for i, original in matched.items():
                w = original * weight / total
                if w > 0:
                    cla.endpoints[i].load_balancing_weight.value = -(-original * weight // total)
        for i in mismatched:
            del cla.endpoints[i].lb_endpoints[:]
        break


def apply_locality(
    ctx: ProxyContext,
    cla: endpoint_pb2.ClusterLoadAssignment,
    setting: LocalityLb,
    enable_failover: bool,
    eps: Iterable[Endpoint] = (),
) -> None:
    """loadbalancer.ApplyLocalityLoadBalancer, relative to this proxy's locality."""
    loc = proxy_locality(ctx.workloads)
    if setting.distribute:
        _apply_distribute(loc, cla, setting)
    elif enable_failover:
        if setting.failover_priority:
            by_addr = {(e.address, e.port): e for e in eps}
            _apply_failover_priority(ctx, cla, by_addr, setting.failover_priority)
            if setting.failover:
                _apply_failover(loc, cla, setting.failover)
        else:
            _apply_failover(loc, cla, setting.failover)


def apply_endpoint_policy(
    ctx: ProxyContext,
    oc: OutboundCluster,
    cla: endpoint_pb2.ClusterLoadAssignment,
    eps: Iterable[Endpoint],
) -> None:
    """EDS side of the rule: locality weights/priorities (endpoint_builder.go)."""
    rule: AppliedRule | None = oc.rule
    if rule is None:
        return
    policy = effective_policy(rule, oc.port.port, oc.subset)
    if policy is None:
        return
    setting = _locality_setting(policy.load_balancer)
    if setting is None:
        return
    apply_locality(ctx, cla, setting, policy.outlier_detection is not None, eps)


# ------------------------------------------------------------------ routes (RDS)


def _hash_policy(ch: ConsistentHash) -> route_components_pb2.RouteAction.HashPolicy:
    if ch.key == "header":
        return HashPolicy(header=HashPolicy.Header(header_name=ch.header_name))
    if ch.key == "cookie":
        assert ch.cookie is not None
        cookie = HashPolicy.Cookie(name=ch.cookie.name, path=ch.cookie.path)
        if ch.cookie.ttl_ns is not None:
            cookie.ttl.CopyFrom(_duration(ch.cookie.ttl_ns))
        return HashPolicy(cookie=cookie)
    if ch.key == "source_ip":
        return HashPolicy(connection_properties=HashPolicy.ConnectionProperties(source_ip=True))
    return HashPolicy(query_parameter=HashPolicy.QueryParameter(name=ch.query_parameter))


def _port_hash(policy: TrafficPolicy | None, port: int) -> ConsistentHash | None:
    if policy is None:
        return None
    for p in policy.port_level:
        if p.port == port:
            return p.load_balancer.consistent_hash if p.load_balancer else None
    return None


def route_hash_policy(
    ctx: ProxyContext, service: Service, port: int, subset: str = ""
) -> list[Message]:
    """RouteAction.HashPolicy entries for a consistentHash load balancer (none: []).

    Precedence as istiod HashForHTTPDestination: subset port level, subset, port
    level, top level.
    """
    rule = rule_for(ctx.snapshot, ctx.namespace, ctx.proxy.labels, service)
    if rule is None:
        return []
    top = rule.rule.traffic_policy
    ch = top.load_balancer.consistent_hash if top and top.load_balancer else None
    pls = _port_hash(top, port)
    sub_hash = sub_pls = None
    if subset:
        sub = rule.subset(subset)
        stp = sub.traffic_policy if sub else None
        if stp is not None:
            sub_hash = stp.load_balancer.consistent_hash if stp.load_balancer else None
            sub_pls = _port_hash(stp, port)
    chosen = sub_pls or sub_hash or pls or ch
    return [] if chosen is None else [_hash_policy(chosen)]
