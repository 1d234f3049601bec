"""NDS: the DNS name table xdsd serves to pilot-agent (istiod's BuildNameTable)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format

from tests.meshgen import istio_config, pod, service, write_docs
from xdsd.cache.resources import NAME_TABLE, WILDCARD_TYPES, Resource, ResourceSet
from xdsd.model.autoalloc import SLOTS, slot_addresses
from xdsd.model.proxy import parse_proxy
from xdsd.offline import load_snapshot
from xdsd.server import protocol as p
from xdsd.translate import name_table
from xdsd.translate.generate import NAME_TABLE_TYPE, SERVED_TYPES, parts, proxy_context

REPO = Path(__file__).resolve().parent.parent
NODE = "sidecar~127.0.0.1~client-0.shop~shop.svc.cluster.local"
META = {"NAMESPACE": "shop", "INTERCEPTION_MODE": "NONE", "DNS_CAPTURE": "true"}
# xdsd.model.autoalloc: the slot CRC-32("shop/web.example.com") mod 65024 picks.
WEB_AUTO_V4 = slot_addresses(zlib.crc32(b"shop/web.example.com") % SLOTS)[0]


def test_descriptor_matches_the_proto_file(tmp_path: Path) -> None:
    """protos/istio_nds.proto compiled by grpcio-tools == the descriptor built in code."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "nds.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protos'}",
            f"--descriptor_set_out={out}",
            str(REPO / "protos" / "istio_nds.proto"),
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    assert compiled == name_table.file_descriptor()


def test_wire_format_is_istios() -> None:
    """Field numbers as pkg/dns/proto/nds.proto: table=1 (map), ips=1, registry=2,
    shortname=3, namespace=4."""
    msg = name_table.name_table_class()()
    entry = msg.table["a.b.svc.cluster.local"]
    entry.ips.append("10.0.0.1")
    entry.registry = "Kubernetes"
    entry.shortname = "a"
    entry.namespace = "b"
    host = b"a.b.svc.cluster.local"
    info = b"\x0a\x0810.0.0.1" + b"\x12\x0aKubernetes" + b"\x1a\x01a" + b"\x22\x01b"
    map_entry = b"\x0a" + bytes([len(host)]) + host + b"\x12" + bytes([len(info)]) + info
    assert msg.SerializeToString() == b"\x0a" + bytes([len(map_entry)]) + map_entry
    assert NAME_TABLE == NAME_TABLE_TYPE and NAME_TABLE_TYPE in SERVED_TYPES
    assert NAME_TABLE in WILDCARD_TYPES  # istiod: Istio's own types are wildcard


def service_entry(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return istio_config("ServiceEntry", name, ns, spec)


async def table_for(tmp_path: Path, docs: list[dict[str, Any]], meta: Any = None) -> Any:
    write_docs(tmp_path / "mesh.yaml", docs)
    snapshot = await load_snapshot(tmp_path)
    errors = [e for e in snapshot.errors if e.severity == "error"]
    assert not errors, errors
    ctx = proxy_context(snapshot, parse_proxy(NODE, meta or META))
    resources = [r for part in parts(ctx, NAME_TABLE_TYPE) for r in part.generate(ctx)]
    assert [name for name, _ in resources] == [name_table.RESOURCE_NAME]
    return json_format.MessageToDict(resources[0][1])["table"]


async def test_services_with_their_addresses_as_istiod_builds_them(tmp_path: Path) -> None:
    docs = [
        service("reviews", "shop", [("http", 9080)], cluster_ip="10.96.0.10"),
        # Headless: the ready endpoints' addresses.
        service("db", "shop", [("tcp", 5432)], cluster_ip="None", selector={"app": "db"}),
        pod("db-0", "shop", "10.1.0.7", {"app": "db"}),
        pod("db-1", "shop", "10.1.0.8", {"app": "db"}),
        # A headless service without endpoints has nothing to answer: left out.
        service("empty", "shop", [("tcp", 1)], cluster_ip="None", selector={"app": "x"}),
        # ServiceEntries: registry External, no short names; IPs only (no CIDRs).
        service_entry(
            "api",
            "shop",
            {
                "hosts": ["api.example.com"],
                "addresses": ["192.0.2.10", "192.0.2.0/28"],
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                "resolution": "STATIC",
                "endpoints": [{"address": "192.0.2.11"}],
            },
        ),
        # Without addresses: the address allocated to it (this proxy captures DNS,
        # IPv4 only: the IPv4 one), as istiod's IP auto-allocation.
        service_entry(
            "web",
            "shop",
            {
                "hosts": ["web.example.com"],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
            },
        ),
        # Not exported to the proxy's namespace: not in its table.
        service(
            "hidden",
            "other",
            [("http", 80)],
            cluster_ip="10.96.0.20",
            annotations={"networking.istio.io/exportTo": "."},
        ),
    ]
    table = await table_for(tmp_path, docs)
    assert table == {
        "reviews.shop.svc.cluster.local": {
            "ips": ["10.96.0.10"],
            "registry": "Kubernetes",
            "shortname": "reviews",
            "namespace": "shop",
        },
        "db.shop.svc.cluster.local": {
            "ips": ["10.1.0.7", "10.1.0.8"],
            "registry": "Kubernetes",
            "shortname": "db",
            "namespace": "shop",
        },
        "api.example.com": {"ips": ["192.0.2.10"], "registry": "External"},
        "web.example.com": {"ips": [WEB_AUTO_V4], "registry": "External"},
    }
    # Without DNS capture the allocated address is not used: the agent would send the
    # name upstream.
    plain = await table_for(tmp_path, docs, {**META, "DNS_CAPTURE": "false"})
    assert "web.example.com" not in plain and "api.example.com" in plain


async def test_the_sidecar_scope_decides_what_is_in_the_table(tmp_path: Path) -> None:
    docs = [
        service("reviews", "shop", [("http", 9080)], cluster_ip="10.96.0.10"),
        service("ratings", "other", [("http", 9080)], cluster_ip="10.96.0.11"),
        istio_config("Sidecar", "default", "shop", {"egress": [{"hosts": ["./*"]}]}),
    ]
    table = await table_for(tmp_path, docs)
    assert sorted(table) == ["reviews.shop.svc.cluster.local"]


async def test_a_kubernetes_service_wins_over_a_service_entry_of_its_host(
    tmp_path: Path,
) -> None:
    docs = [
        service("reviews", "shop", [("http", 9080)], cluster_ip="10.96.0.10"),
        # (one in the service's own namespace is dropped when parsed; another's stays)
        service_entry(
            "reviews-alias",
            "other",
            {
                "hosts": ["reviews.shop.svc.cluster.local"],
                "addresses": ["192.0.2.30"],
                "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                "resolution": "STATIC",
                "endpoints": [{"address": "192.0.2.31"}],
            },
        ),
    ]
    table = await table_for(tmp_path, docs)
    assert table["reviews.shop.svc.cluster.local"] == {
        "ips": ["10.96.0.10"],
        "registry": "Kubernetes",
        "shortname": "reviews",
        "namespace": "shop",
    }


async def test_routers_get_no_table(tmp_path: Path) -> None:
    write_docs(
        tmp_path / "mesh.yaml", [service("a", "shop", [("http", 80)], cluster_ip="10.0.0.1")]
    )
    snapshot = await load_snapshot(tmp_path)
    router = parse_proxy("router~127.0.0.1~gw-0.shop~shop.svc.cluster.local", {})
    ctx = proxy_context(snapshot, router)
    assert [r for part in parts(ctx, NAME_TABLE_TYPE) for r in part.generate(ctx)] == []


def test_the_agents_request_gets_the_table_on_both_protocols() -> None:
    """pilot-agent's NDS request names nothing (Delta and SotW): a wildcard
    subscription answered with the one unnamed resource, and pushed on changes."""
    msg = name_table.name_table_class()()
    msg.table["a.shop.svc.cluster.local"].ips.append("10.0.0.1")
    res = Resource.from_message("", NAME_TABLE, msg)
    rset = ResourceSet.of(NAME_TABLE, [res])

    state, decision = p.on_delta_request(None, p.DeltaRequest(type_url=NAME_TABLE))
    assert decision.respond and state.wildcard
    state, reply = p.plan_delta(state, rset, nonce="1", force=decision.force)
    assert reply is not None and reply.resources == (res,)

    sotw, decision = p.on_sotw_request(None, p.SotwRequest(type_url=NAME_TABLE, names=()))
    assert decision.respond and sotw.wildcard
    sotw, sreply = p.plan_sotw(sotw, rset, nonce="1", force=decision.force)
    assert sreply is not None and sreply.resources == (res,)
