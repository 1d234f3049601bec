"""Messages of Istio's certificate service, built from a descriptor at runtime.

`protos/istio_ca.proto` is the source of truth for the wire format. Rather than
generating Python from it (a build step that a plain `pip install -e .` would
skip, or an import-time side effect), the same FileDescriptorProto is written
out here and registered in protobuf's default pool on first use; message
classes come from `message_factory`. `tests/test_ca_proto.py` compiles the
.proto with grpcio-tools and checks that both descriptors are identical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
METHOD = "CreateCertificate"
FILE_NAME = "istio_ca.proto"

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of protos/istio_ca.proto."""
    fd = descriptor_pb2.FileDescriptorProto(
        name=FILE_NAME,
        package=PACKAGE,
        dependency=["google/protobuf/struct.proto"],
        syntax="proto3",
    )
    req = fd.message_type.add(name="IstioCertificateRequest")
    req.field.add(
        name="csr", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING, json_name="csr"
    )
    req.field.add(
        name="validity_duration",
        number=3,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_INT64,
        json_name="validityDuration",
    )
    req.field.add(
        name="metadata",
        number=4,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".google.protobuf.Struct",
        json_name="metadata",
    )
    req.reserved_range.add(start=2, end=3)
    resp = fd.message_type.add(name="IstioCertificateResponse")
    resp.field.add(
        name="cert_chain",
        number=1,
        label=_F.LABEL_REPEATED,
        type=_F.TYPE_STRING,
        json_name="certChain",
    )
    svc = fd.service.add(name="IstioCertificateService")
    svc.method.add(
        name=METHOD,
        input_type=f".{PACKAGE}.IstioCertificateRequest",
        output_type=f".{PACKAGE}.IstioCertificateResponse",
    )
    return fd


@dataclass(frozen=True)
class Messages:
    request: Any  # IstioCertificateRequest class
    response: Any  # IstioCertificateResponse class


@functools.cache
def messages() -> Messages:
    """The message classes (registered in the default descriptor pool once)."""
    pool = descriptor_pool.Default()
    _ = struct_pb2.Struct  # google/protobuf/struct.proto is in the pool
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.Add(file_descriptor())
    return Messages(
        request=message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest")
        ),
        response=message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse")
        ),
    )
