"""Istio tasks "Accessing External Services" and "Egress": with the mesh-wide
outboundTrafficPolicy REGISTRY_ONLY (a root-namespace Sidecar), an unknown host
is blocked, and a ServiceEntry (MESH_EXTERNAL) opens one: STATIC endpoints on
loopback or DNS resolution. A VirtualService timeout applies to it too."""

from __future__ import annotations

from tests.meshgen import pod, service
from tests.traffic.harness import GATEWAY_NS, Traffic, fqdn, make_tls

NS = "bookinfo"
API = "api.external.example"


def registry_only(traffic: Traffic) -> None:
    traffic.istio("mesh-sidecar.yaml", "Sidecar", "default", GATEWAY_NS, {
        "egress": [{"hosts": ["*/*"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    })  # fmt: skip


def static_entry(port: int, ip: str) -> dict[str, object]:
    return {
        "hosts": [API],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "endpoints": [{"address": ip}],
    }


async def test_service_entry_opens_an_external_host(traffic: Traffic) -> None:
    port = traffic.port()
    await traffic.workloads("reviews", NS, port, ("v1",))  # something in the registry
    external = await traffic.backend("external-api", port)
    registry_only(traffic)
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")

    # Not in the registry: REGISTRY_ONLY answers 502 (BlackHole), nothing leaves.
    blocked = await traffic.get(port, API)
    assert blocked.status == 502
    assert external.count == 0
    # The in-mesh service still works.
    assert (await traffic.get(port, f"reviews.{NS}")).backend == "reviews-v1"

    traffic.istio("se.yaml", "ServiceEntry", "external-api", NS, static_entry(port, external.ip))
    ok = await traffic.until_answers(
        port, API, lambda r: r.status == 200, "ServiceEntry host reachable"
    )
    assert ok.backend == "external-api"
    assert external.requests[-1].host == API
    # Still blocked: another unknown host on the same port.
    assert (await traffic.get(port, "other.external.example")).status == 502
    await traffic.no_rejections()


async def test_service_entry_dns_resolution(traffic: Traffic) -> None:
    port, target = traffic.port(), traffic.port()
    # DNS resolution of "localhost" (from /etc/hosts) to 127.0.0.1 at the endpoint port.
    external = await traffic.backend("dns-api", target, ip="127.0.0.1")
    traffic.istio("se.yaml", "ServiceEntry", "dns-api", NS, {
        "hosts": ["dns.external.example"],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS",
        "endpoints": [{"address": "localhost", "ports": {"http": target}}],
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")
    ok = await traffic.until_answers(
        port, "dns.external.example", lambda r: r.status == 200, "DNS ServiceEntry reachable"
    )
    assert ok.backend == "dns-api"
    assert external.count >= 1
    await traffic.no_rejections()


async def test_timeout_on_external_host(traffic: Traffic) -> None:
    port = traffic.port()
    external = await traffic.backend("external-api", port)
    traffic.istio("se.yaml", "ServiceEntry", "external-api", NS, static_entry(port, external.ip))
    traffic.istio("vs.yaml", "VirtualService", "external-api", NS, {
        "hosts": [API],
        "http": [{"timeout": "0.3s", "route": [{"destination": {"host": API}, "weight": 100}]}],
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")
    fast = await traffic.get(port, API)
    assert (fast.status, fast.backend) == (200, "external-api")
    slow = await traffic.get(port, API, headers={"x-delay": "1.0"})
    assert slow.status == 504
    assert slow.body == "upstream request timeout"
    await traffic.no_rejections()


async def test_tls_origination_by_destination_rule(traffic: Traffic) -> None:
    """Istio task "Egress TLS Origination": the app speaks plain HTTP, the sidecar
    opens TLS (with the DestinationRule's SNI) to the external HTTPS server."""
    port, tls_port = traffic.port(), traffic.port()
    host = "secure-api.external.example"
    external = await traffic.backend("secure-api", tls_port, tls=make_tls([host]))
    traffic.istio("se.yaml", "ServiceEntry", "secure-api", NS, {
        "hosts": [host],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "endpoints": [{"address": external.ip, "ports": {"http": tls_port}}],
    })  # fmt: skip
    traffic.istio("dr.yaml", "DestinationRule", "secure-api", NS, {
        "host": host,
        # Not caCertificates: istiod (and xdsd) hand CA files to istio-agent's SDS
        # (cluster sds-grpc), which a bare Envoy has not.
        "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": host, "insecureSkipVerify": True}},
    })  # fmt: skip
    await traffic.sidecar(NS, {"app": "sleep"}, name="sleep")
    reply = await traffic.get(port, host, "/get")
    assert (reply.status, reply.backend) == (200, "secure-api")
    assert external.sni and set(external.sni) == {host}
    assert external.requests[-1].path == "/get"
    await traffic.no_rejections()


async def test_egress_gateway(traffic: Traffic) -> None:
    """Istio task "Egress Gateways": mesh traffic to the external host goes to the
    egress gateway (VirtualService bound to `mesh`), which sends it out (bound to
    the Gateway)."""
    ext_port, gw_port, gw_target = traffic.port(), traffic.port(), traffic.port()
    external = await traffic.backend("edition", ext_port)
    host = "edition.external.example"
    egress = fqdn("istio-egressgateway", GATEWAY_NS)
    traffic.istio("se.yaml", "ServiceEntry", "edition", NS, static_entry(ext_port, external.ip) | {
        "hosts": [host],
    })  # fmt: skip
    # The egress gateway's Service: port gw_port -> its pod (this machine) at gw_target,
    # so the gateway binds 0.0.0.0:gw_target and the sidecar 127.0.0.1:gw_port.
    traffic.write("egressgateway.yaml", [
        service("istio-egressgateway", GATEWAY_NS, [("http", gw_port, gw_target)],
                selector={"istio": "egressgateway"}),
        pod("istio-egressgateway-0", GATEWAY_NS, "127.0.0.1", {"istio": "egressgateway"}),
    ])  # fmt: skip
    traffic.istio("gw.yaml", "Gateway", "istio-egressgateway", NS, {
        "selector": {"istio": "egressgateway"},
        "servers": [{"port": {"number": gw_port, "name": "http", "protocol": "HTTP"},
                     "hosts": [host]}],
    })  # fmt: skip
    traffic.istio("vs.yaml", "VirtualService", "direct-through-egress-gateway", NS, {
        "hosts": [host],
        "gateways": ["istio-egressgateway", "mesh"],
        "http": [
            {"match": [{"gateways": ["mesh"], "port": ext_port}],
             "route": [{"destination": {"host": egress, "port": {"number": gw_port}}}]},
            {"match": [{"gateways": ["istio-egressgateway"], "port": gw_port}],
             "route": [{"destination": {"host": host, "port": {"number": ext_port}}}]},
        ],
    })  # fmt: skip
    gateway = await traffic.gateway("istio-egressgateway", {"istio": "egressgateway"})
    sidecar = await traffic.sidecar(NS, {"app": "curl"}, name="curl")

    ok = await traffic.until_answers(
        ext_port, host, lambda r: r.status == 200, "external host through the egress gateway"
    )
    assert ok.backend == "edition"
    assert external.requests[-1].host == host
    through_gateway = await traffic.cluster_stats(gateway, f"|{ext_port}||{host}")
    from_sidecar = await traffic.cluster_stats(sidecar, f"|{gw_port}||{egress}")
    direct = await traffic.cluster_stats(sidecar, f"|{ext_port}||{host}")
    assert through_gateway.get("upstream_rq_total", 0) == external.count
    assert from_sidecar.get("upstream_rq_total", 0) == external.count
    assert direct.get("upstream_rq_total", 0) == 0
    await traffic.no_rejections()
