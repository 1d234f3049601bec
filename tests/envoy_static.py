"""Helpers for the translate tests: a sample mesh, and generated xDS -> static Envoy bootstrap.

`static_bootstrap` turns one proxy's generated resources into a bootstrap that a
real Envoy can load with `--mode validate`: EDS clusters become STATIC clusters
with their ClusterLoadAssignment inlined, and HCMs that use RDS get the generated
RouteConfiguration inline.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from xdsd.demo import envoy_binary
from xdsd.model.proxy import InterceptionMode, Proxy, ProxyType
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import (
    Endpoint,
    Locality,
    ObjectRef,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    Workload,
)
from xdsd.translate.generate import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

Resources = Mapping[str, Sequence[tuple[str, Message]]]


# ---------------------------------------------------------------- sample mesh


def svc(
    host: str,
    ns: str,
    ports: Sequence[tuple[str, int, Protocol] | tuple[str, int, Protocol, int | str]],
    *,
    kind: str = "Service",
    addresses: tuple[str, ...] = (),
    selector: Mapping[str, str] | None = None,
    resolution: Resolution = Resolution.STATIC,
    export_to: frozenset[str] = frozenset({"*"}),
    external_name: str | None = None,
    headless: bool = False,
) -> Service:
    name = host.split(".")[0].lstrip("*")
    return Service(
        hostname=host,
        namespace=ns,
        name=name or "wildcard",
        ports=tuple(
            ServicePort(p[0], p[1], p[2], p[3] if len(p) > 3 else None)  # type: ignore[misc]
            for p in ports
        ),
        ref=ObjectRef(kind, ns, name or "wildcard"),
        addresses=addresses,
        selector=MappingProxyType(dict(selector)) if selector is not None else None,
        resolution=resolution,
        export_to=export_to,
        external_name=external_name,
        headless=headless,
    )


def ep(
    address: str,
    port: int,
    service_port: int,
    *,
    ns: str = "default",
    workload: str = "",
    healthy: bool = True,
    zone: str = "",
    labels: Mapping[str, str] | None = None,
) -> Endpoint:
    return Endpoint(
        address=address,
        port=port,
        service_port=service_port,
        namespace=ns,
        workload_name=workload,
        healthy=healthy,
        locality=Locality("r1", zone, "") if zone else Locality(),
        labels=MappingProxyType(dict(labels or {})),
    )


def workload(name: str, ns: str, ip: str, labels: Mapping[str, str], **named: int) -> Workload:
    return Workload(
        name=name,
        namespace=ns,
        address=ip,
        ref=ObjectRef("Pod", ns, name),
        labels=MappingProxyType(dict(labels)),
        named_ports=MappingProxyType(dict(named)),
    )


def sidecar(
    ip: str = "10.1.0.5",
    ns: str = "default",
    pod: str = "reviews-v1-abc",
    mode: InterceptionMode = InterceptionMode.REDIRECT,
    ptype: ProxyType = ProxyType.SIDECAR,
) -> Proxy:
    domain = f"{ns}.svc.cluster.local"
    return Proxy(
        node_id=f"{ptype.value}~{ip}~{pod}.{ns}~{domain}",
        type=ptype,
        ip_addresses=(ip,),
        pod_name=pod,
        namespace=ns,
        dns_domain=domain,
        interception_mode=mode,
    )


def snapshot(
    services: Sequence[Service],
    endpoints: Sequence[tuple[Service, int, Sequence[Endpoint]]] = (),
    workloads: Sequence[Workload] = (),
    generation: int = 1,
) -> MeshSnapshot:
    eps = {
        ((s.hostname, s.namespace), port): tuple(sorted(v, key=lambda e: (e.address, e.port)))
        for s, port, v in endpoints
    }
    return MeshSnapshot(
        generation=generation,
        services=tuple(sorted(services, key=lambda s: (s.hostname, s.namespace))),
        endpoints=MappingProxyType(eps),
        workloads=tuple(workloads),
    )


def sample_mesh() -> MeshSnapshot:
    """Every kind of service the translator handles, seen from reviews-v1 in "default"."""
    H, H2, G, T, A = Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.TCP, Protocol.AUTO
    reviews = svc(
        "reviews.default.svc.cluster.local",
        "default",
        [("http", 9080, H, "http-app"), ("grpc", 9090, G), ("tcp-db", 5000, T, 5001)],
        addresses=("10.96.0.10",),
        selector={"app": "reviews"},
    )
    ratings = svc(
        "ratings.other.svc.cluster.local",
        "other",
        [("http", 9080, H), ("h2", 8081, H2)],
        addresses=("10.96.0.11",),
    )
    hidden = svc(
        "secret.other.svc.cluster.local",
        "other",
        [("http", 9080, H)],
        addresses=("10.96.0.12",),
        export_to=frozenset({"."}),
    )
    db = svc(
        "mysql.default.svc.cluster.local",
        "default",
        [("tcp", 3306, Protocol.MYSQL)],
        addresses=("10.96.0.13",),
    )
    sniffed = svc(
        "legacy.default.svc.cluster.local",
        "default",
        [("unnamed", 7000, A)],
        addresses=("10.96.0.14",),
    )
    headless = svc(
        "db-0.default.svc.cluster.local",
        "default",
        [("tcp", 6379, Protocol.REDIS), ("http", 8080, H)],
        headless=True,
    )
    external_dns = svc(
        "api.example.com",
        "default",
        [("https", 443, Protocol.HTTPS), ("http", 80, H)],
        kind="ServiceEntry",
        resolution=Resolution.DNS,
    )
    external_rr = svc(
        "rr.example.com",
        "default",
        [("tls", 8443, Protocol.TLS)],
        kind="ServiceEntry",
        resolution=Resolution.DNS_ROUND_ROBIN,
    )
    external_none = svc(
        "*.wild.example.com",
        "default",
        [("http", 80, H), ("tcp", 9000, T)],
        kind="ServiceEntry",
        resolution=Resolution.NONE,
    )
    ext_name = svc(
        "extname.default.svc.cluster.local",
        "default",
        [("http", 80, H)],
        external_name="www.example.org",
    )
    udp = svc("dns.default.svc.cluster.local", "default", [("dns", 53, Protocol.UDP)])
    eps = [
        (
            reviews,
            9080,
            [
                ep("10.1.0.5", 9081, 9080, workload="reviews-v1", zone="z1"),
                ep("10.1.0.6", 9081, 9080, workload="reviews-v2", zone="z2", healthy=False),
            ],
        ),
        (reviews, 9090, [ep("10.1.0.5", 9090, 9090, workload="reviews-v1")]),
        (ratings, 9080, [ep("10.2.0.7", 9080, 9080, ns="other", workload="ratings-v1")]),
        (external_dns, 443, [ep("api-1.example.com", 443, 443), ep("api-2.example.com", 443, 443)]),
    ]
    wl = [
        workload("reviews-v1-abc", "default", "10.1.0.5", {"app": "reviews"}, **{"http-app": 9081}),
        workload("ratings-v1-x", "other", "10.2.0.7", {"app": "ratings"}),
    ]
    services = [
        reviews,
        ratings,
        hidden,
        db,
        sniffed,
        headless,
        external_dns,
        external_rr,
        external_none,
        ext_name,
        udp,
    ]
    return snapshot(services, eps, wl)


# ---------------------------------------------------------------- static bootstrap


def _inline_routes(
    listener: listener_pb2.Listener, routes: Mapping[str, route_pb2.RouteConfiguration]
) -> None:
    chains: list[listener_components_pb2.FilterChain] = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            if not f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            if hcm.HasField("rds"):
                name = hcm.rds.route_config_name
                if name not in routes:
                    raise KeyError(f"listener {listener.name}: RDS {name!r} was not generated")
                hcm.route_config.CopyFrom(routes[name])  # clears the rds oneof
                f.typed_config.Pack(hcm)


def static_bootstrap(
    resources: Resources, node_id: str = "sidecar~10.1.0.5~x.default~default.svc.cluster.local"
) -> bootstrap_pb2.Bootstrap:
    clas = {name: msg for name, msg in resources.get(ENDPOINT_TYPE, ())}
    routes = {name: msg for name, msg in resources.get(ROUTE_TYPE, ())}
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = node_id
    boot.node.cluster = "validate"
    boot.admin.address.socket_address.address = "127.0.0.1"
    boot.admin.address.socket_address.port_value = 0
    for name, msg in resources.get(CLUSTER_TYPE, ()):
        cl = cluster_pb2.Cluster()
        cl.CopyFrom(msg)
        if cl.type == cluster_pb2.Cluster.EDS:
            cla = clas.get(cl.eds_cluster_config.service_name or name)
            if cla is None:
                raise KeyError(f"EDS cluster {name} has no ClusterLoadAssignment")
            cl.ClearField("eds_cluster_config")
            cl.type = cluster_pb2.Cluster.STATIC
            cl.load_assignment.CopyFrom(cla)
        boot.static_resources.clusters.append(cl)
    for _name, msg in resources.get(LISTENER_TYPE, ()):
        ls = listener_pb2.Listener()
        ls.CopyFrom(msg)
        _inline_routes(ls, routes)  # type: ignore[arg-type]
        boot.static_resources.listeners.append(ls)
    return boot


def dns_cluster(cl: cluster_pb2.Cluster) -> dns_cluster_pb2.DnsCluster | None:
    """The DnsCluster config of a DNS cluster (cluster_type envoy.cluster.dns), else None."""
    if cl.cluster_type.name != "envoy.cluster.dns":
        return None
    cfg = dns_cluster_pb2.DnsCluster()
    cl.cluster_type.typed_config.Unpack(cfg)
    return cfg


def deprecated_options(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The deprecated fields Envoy warned about while loading a config (its full names)."""
    found = re.findall(r"[Uu]sing deprecated option '([\w.]+)'", result.stdout + result.stderr)
    return sorted(set(found))


def envoy_validate(
    boot: bootstrap_pb2.Bootstrap, workdir: Path
) -> subprocess.CompletedProcess[str]:
    envoy = envoy_binary()
    assert envoy is not None
    path = workdir / "bootstrap.json"
    doc: dict[str, Any] = json_format.MessageToDict(boot, preserving_proto_field_name=True)
    path.write_text(json.dumps(doc, indent=1))
    return subprocess.run(
        [
            envoy,
            "--mode",
            "validate",
            "-c",
            str(path),
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
