"""NDS: the DNS name table pilot-agent's DNS proxy answers from.

A sidecar whose agent proxies DNS (ISTIO_META_DNS_CAPTURE) asks for
`type.googleapis.com/istio.networking.nds.v1.NameTable` on its ADS stream and
reports itself not ready until a table arrives. istiod (pilot/pkg/xds/nds.go,
pkg/dns/server/name_table.go BuildNameTable) answers with one unnamed resource:
every service of the proxy's Sidecar scope that has addresses, hostname ->
IPs; Kubernetes services also carry their name and namespace so the agent
answers `name`, `name.namespace` and `name.namespace.svc` too. Headless
services resolve to their ready endpoints' addresses (as Kubernetes DNS does).

The message is built from a descriptor made in code, as `xdsd.ca.proto` does
(`protos/istio_nds.proto` is the same; a test compares them).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from xdsd.model.types import Resolution, Service
from xdsd.translate._common import NAME_TABLE_TYPE
from xdsd.translate.context import ProxyContext

PACKAGE = "istio.networking.nds.v1"
FILE_NAME = "istio_nds.proto"
# istiod's resource has no name; the agent reads the first resource of a response.
RESOURCE_NAME = ""
# Service registries as istiod names them (provider.Kubernetes, provider.External).
KUBERNETES = "Kubernetes"
EXTERNAL = "External"

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of protos/istio_nds.proto."""
    fd = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    table = fd.message_type.add(name="NameTable")
    info = table.nested_type.add(name="NameInfo")
    for number, name, json_name, repeated in (
        (1, "ips", "ips", True),
        (2, "registry", "registry", False),
        (3, "shortname", "shortname", False),
        (4, "namespace", "namespace", False),
        (5, "alt_hosts", "altHosts", True),
    ):
        field = info.field.add(
            name=name,
            number=number,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            type=_F.TYPE_STRING,
            json_name=json_name,
        )
        if name == "alt_hosts":
            field.options.deprecated = True
    entry = table.nested_type.add(name="TableEntry")
    entry.options.map_entry = True
    entry.field.add(
        name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING, json_name="key"
    )
    entry.field.add(
        name="value",
        number=2,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.NameTable.NameInfo",
        json_name="value",
    )
    table.field.add(
        name="table",
        number=1,
        label=_F.LABEL_REPEATED,
        type=_F.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.NameTable.TableEntry",
        json_name="table",
    )
    return fd


@functools.cache
def name_table_class() -> Any:
    """The NameTable message class (registered in the default descriptor pool once)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.Add(file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.NameTable"))


assert NAME_TABLE_TYPE.endswith(f"/{PACKAGE}.NameTable")


def _ips(addresses: tuple[str, ...]) -> list[str]:
    # istiod leaves out what is not an IP (CIDR addresses of ServiceEntries).
    out = []
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            continue
        out.append(a)
    return out


def _headless_ips(ctx: ProxyContext, service: Service) -> list[str]:
    """Ready endpoint addresses of a headless service, each once, in port order."""
    seen: dict[str, None] = {}
    for port in service.ports:
        for ep in ctx.snapshot.endpoints_for(service, port.port):
            if ep.healthy and _ips((ep.address,)):
                seen.setdefault(ep.address, None)
    return list(seen)


def build_name_table(ctx: ProxyContext) -> Message:
    """istiod's BuildNameTable for this proxy: hostname -> NameInfo."""
    msg = name_table_class()()
    services = ctx.sidecar.services if ctx.sidecar is not None else ctx.services
    for service in services:
        kubernetes = service.ref.kind == "Service"
        addresses = service.addresses_for(ctx.addresses)
        if service.headless or (service.resolution is Resolution.NONE and not addresses):
            ips = _headless_ips(ctx, service) if service.ports else []
        else:
            ips = _ips(addresses)
        if not ips:
            continue  # nothing the agent could answer: the name goes upstream
        if service.hostname in msg.table:
            entry = msg.table[service.hostname]
            if entry.registry == KUBERNETES:
                continue  # a Kubernetes service wins over a ServiceEntry of the same host
            if not kubernetes:
                entry.ips.extend(ips)  # ServiceEntries of one host: addresses merged
                continue
            entry.Clear()
        entry = msg.table[service.hostname]
        entry.ips.extend(ips)
        entry.registry = KUBERNETES if kubernetes else EXTERNAL
        if kubernetes:
            entry.shortname = service.name
            entry.namespace = service.namespace
    out: Message = msg
    return out


def generate_name_table(ctx: ProxyContext) -> list[tuple[str, Message]]:
    """The NDS resources: one unnamed NameTable (sidecars only)."""
    if not ctx.is_sidecar:
        return []
    return [(RESOURCE_NAME, build_name_table(ctx))]
