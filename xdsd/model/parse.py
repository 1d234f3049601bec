"""Turn YAML documents (already loaded into dicts) into typed model objects.

Never raises on bad input: every problem becomes a ConfigError naming the
document (`file#index`, 0-based), the object (`Kind ns/name`) and the field
path (`spec.ports[1].port`). A document with an error-severity problem yields
no object; its key goes to `ParseResult.failed` so the store can keep serving
the last good version of that object.

Kinds:
- v1 Service -> `Service`; v1 Pod -> `Workload`; discovery.k8s.io/v1
  EndpointSlice and v1 Endpoints -> `EndpointSet`; v1 Node -> `NodeInfo`
  (its topology labels only);
- networking.istio.io ServiceEntry -> `ServiceEntryConfig`, WorkloadEntry ->
  `Workload`;
- other Istio kinds and v1 Secret / ConfigMap / Namespace -> `ConfigObject`;
- v1 List -> its items; anything else -> a warning, skipped.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from xdsd.model import fields as f
from xdsd.model.credentials import pem_problems
from xdsd.model.fields import Issues
from xdsd.model.istio.authorizationpolicy import AuthorizationPolicy
from xdsd.model.istio.registry import PARSERS
from xdsd.model.istio.workload_selector import parse_selector
from xdsd.model.objects import (
    EndpointAddress,
    EndpointPort,
    EndpointSet,
    EndpointSubset,
    NodeInfo,
    ObjectKey,
    ParsedObject,
    SecretData,
    ServiceEntryConfig,
    key_of,
    object_label,
)
from xdsd.model.protocol import parse_protocol, protocol_for
from xdsd.model.types import (
    ConfigError,
    ConfigObject,
    Locality,
    Location,
    ObjectRef,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    Workload,
    frozen_map,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER_ID = "Kubernetes"  # istiod's default cluster id
DEFAULT_DOMAIN_SUFFIX = "cluster.local"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
REVISION_LABEL = "istio.io/rev"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_ISTIO_KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # group: (versions, kinds kept as ConfigObject)
    "networking.istio.io": (
        frozenset({"v1", "v1beta1", "v1alpha3"}),
        frozenset(
            {
                "VirtualService",
                "DestinationRule",
                "Gateway",
                "Sidecar",
                "EnvoyFilter",
                "WorkloadGroup",
                "ProxyConfig",
            }
        ),
    ),
    "security.istio.io": (
        frozenset({"v1", "v1beta1"}),
        frozenset({"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"}),
    ),
    "telemetry.istio.io": (frozenset({"v1", "v1alpha1"}), frozenset({"Telemetry"})),
    "extensions.istio.io": (frozenset({"v1alpha1"}), frozenset({"WasmPlugin"})),
}
# Istio kinds xdsd reads but does not translate: every object says so (never dropped
# silently), as a warning in logs, `xdsd validate`, /debug/configz and status.
UNTRANSLATED_KINDS = frozenset(
    {"Telemetry", "EnvoyFilter", "WorkloadGroup", "ProxyConfig", "WasmPlugin"}
)
_NETWORKING_VERSIONS = _ISTIO_KINDS["networking.istio.io"][0]

# Common kinds that are fine to find in a manifest folder but mean nothing here.
_IGNORED_KINDS = frozenset(
    {
        "ServiceAccount",
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "Ingress",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    }
)


@dataclass(frozen=True)
class ParseResult:
    objects: tuple[ParsedObject, ...] = ()
    errors: tuple[ConfigError, ...] = ()
    # Objects whose document names them but is invalid (keep their last good version).
    failed: frozenset[ObjectKey] = frozenset()
    # False when the file could not be read to its end (YAML syntax error):
    # objects it held before that are missing now were not removed, just unread.
    complete: bool = True
    # Served in place of a failed object that has no last good version: a broken
    # AuthorizationPolicy denies everything it selects (fail closed, never open).
    fallbacks: tuple[ParsedObject, ...] = ()

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(o.ref.kind for o in self.objects) | {k[0] for k in self.failed}


@dataclass(frozen=True)
class _Options:
    default_namespace: str
    domain_suffix: str
    # The Kubernetes cluster the documents come from: tags Services, Pods,
    # EndpointSlices/Endpoints, WorkloadEntries and Nodes. None keeps the defaults.
    cluster_id: str | None = None
    # This control plane's revision (`--revision`): Istio config labelled for another
    # revision is not ours (istiod's LabelsInRevision). None: every object is.
    revision: str | None = None


def in_revision(labels: Mapping[str, str], revision: str | None) -> bool:
    """istiod's LabelsInRevision: unlabelled objects are everybody's."""
    rev = labels.get(REVISION_LABEL)
    return rev is None or not revision or rev == revision


@dataclass
class _Out:
    objects: list[ParsedObject]
    errors: list[ConfigError]
    failed: set[ObjectKey]
    fallbacks: list[ParsedObject] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class _Meta:
    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generation: int
    deleting: bool
    owner_kind: str
    owner_name: str
    created: str = ""


def parse_documents(
    documents: Iterable[object],
    source: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
    complete: bool = True,
    cluster_id: str | None = None,
    revision: str | None = None,
) -> ParseResult:
    """Parse the documents of one file; document i is named `source#i`.

    `cluster_id` names the Kubernetes cluster the documents were read from;
    `revision`: Istio config labelled `istio.io/rev` for another revision is skipped
    (it belongs to another control plane).
    """
    opts = _Options(default_namespace, domain_suffix, cluster_id, revision)
    out = _Out([], [], set())
    for i, doc in enumerate(documents):
        _parse_one(doc, f"{source}#{i}", "", opts, out)
    return _result(out, complete)


def parse_document(
    document: object,
    source: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
    cluster_id: str | None = None,
) -> ParseResult:
    """Parse one document; `source` names it in refs and errors (e.g. `a.yaml#0`)."""
    out = _Out([], [], set())
    opts = _Options(default_namespace, domain_suffix, cluster_id)
    _parse_one(document, source, "", opts, out)
    return _result(out, True)


def _result(out: _Out, complete: bool) -> ParseResult:
    return ParseResult(
        tuple(out.objects),
        tuple(out.errors),
        frozenset(out.failed),
        complete,
        tuple(out.fallbacks),
    )


_Parser = Callable[
    [Issues, Mapping[Any, Any], _Meta, ObjectRef, _Options, str], ParsedObject | None
]


def _parse_one(doc: object, source: str, base: str, opts: _Options, out: _Out) -> None:
    iss = Issues(source)
    try:
        _dispatch(iss, doc, source, base, opts, out)
    except RecursionError:
        iss.error(base, "the document is nested too deeply")
    out.errors.extend(iss.errors)


def _dispatch(iss: Issues, doc: object, source: str, base: str, opts: _Options, out: _Out) -> None:
    if doc is None:  # an empty document ("---" with nothing after it)
        return
    if not isinstance(doc, Mapping):
        iss.error(base, f"a document must be a mapping, not a {f.type_name(doc)}")
        return
    api_version = f.get_str(iss, doc, "apiVersion", base, required=True)
    kind = f.get_str(iss, doc, "kind", base, required=True)
    if api_version is None or kind is None:
        return
    group, _, version = api_version.rpartition("/")
    if group == "" and version == "v1" and kind == "List":
        for where, item in f.items(iss, f.get_list(iss, doc, "items", base), f.join(base, "items")):
            _parse_one(item, source, where, opts, out)
        return
    found = _lookup(group, version, kind)
    if found is None:
        why = "is not used by xdsd" if kind in _IGNORED_KINDS else "is unknown"
        iss.warn(base, f"kind {kind} ({api_version}) {why}: skipped")
        return
    parser, namespaced, name_check = found
    meta = _metadata(iss, doc, kind, base, namespaced, name_check, opts)
    if meta is None:
        return
    if group.endswith("istio.io") and not in_revision(meta.labels, opts.revision):
        return  # another revision's object: that control plane serves and reports it
    ref = ObjectRef(kind, meta.namespace, meta.name, source)
    iss.obj = object_label(key_of(ref))
    obj = parser(iss, doc, meta, ref, opts, base)
    if iss.failed:
        out.failed.add(key_of(ref))
        if kind == "AuthorizationPolicy" and group == "security.istio.io":
            out.fallbacks.append(_deny_all_fallback(iss, doc, meta, ref, base))
    elif obj is not None:
        out.objects.append(obj)


def _lookup(group: str, version: str, kind: str) -> tuple[_Parser, bool, str] | None:
    """(parser, namespaced, name rule) for a known apiVersion/kind."""
    if group == "" and version == "v1":
        core: dict[str, tuple[_Parser, bool, str]] = {
            "Service": (_service, True, "dns1035"),
            "Pod": (_pod, True, "subdomain"),
            "Endpoints": (_endpoints, True, "subdomain"),
            "Secret": (_secret, True, "subdomain"),
            "ConfigMap": (_config_map, True, "subdomain"),
            "Namespace": (_namespace, False, "label"),
            "Node": (_node, False, "subdomain"),
        }
        return core.get(kind)
    if group == "discovery.k8s.io" and version == "v1" and kind == "EndpointSlice":
        return (_endpoint_slice, True, "subdomain")
    if group == "networking.istio.io" and version in _NETWORKING_VERSIONS:
        if kind == "ServiceEntry":
            return (_service_entry, True, "subdomain")
        if kind == "WorkloadEntry":
            return (_workload_entry, True, "subdomain")
    versions_kinds = _ISTIO_KINDS.get(group)
    if versions_kinds is not None and version in versions_kinds[0] and kind in versions_kinds[1]:
        return (_istio_config, True, "subdomain")
    return None


_NAME_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "dns1035": (f.is_dns1035_label, "a DNS-1035 label (lowercase letters, digits, '-')"),
    "label": (f.is_dns1123_label, "a DNS-1123 label (lowercase letters, digits, '-')"),
    "subdomain": (f.is_dns1123_subdomain, "a DNS-1123 subdomain (lowercase, digits, '-', '.')"),
}


def _metadata(
    iss: Issues,
    doc: Mapping[Any, Any],
    kind: str,
    base: str,
    namespaced: bool,
    name_check: str,
    opts: _Options,
) -> _Meta | None:
    mp = f.join(base, "metadata")
    meta = f.get_map(iss, doc, "metadata", base, required=True)
    if meta is None:
        return None
    name = f.get_str(iss, meta, "name", mp, required=True)
    if name is None:
        return None
    check, rule = _NAME_CHECKS[name_check]
    if not check(name):
        iss.error(f.join(mp, "name"), f"{name!r} must be {rule}")
        return None
    namespace = ""
    if namespaced:
        namespace = f.get_str(iss, meta, "namespace", mp) or opts.default_namespace
        if not f.is_dns1123_label(namespace):
            iss.error(f.join(mp, "namespace"), f"{namespace!r} must be a DNS-1123 label")
            return None
    labels = f.get_str_map(iss, meta, "labels", mp)
    annotations = f.get_str_map(iss, meta, "annotations", mp)
    generation = f.get_int(iss, meta, "generation", mp, lo=0, hi=2**63 - 1) or 0
    created = meta.get("creationTimestamp")
    owner_kind = owner_name = ""
    for where, owner in f.items(
        iss, f.get_list(iss, meta, "ownerReferences", mp), f.join(mp, "ownerReferences")
    ):
        o_kind = f.get_str(iss, owner, "kind", where)
        o_name = f.get_str(iss, owner, "name", where)
        if o_kind and o_name and (not owner_kind or owner.get("controller") is True):
            owner_kind, owner_name = o_kind, o_name
    return _Meta(
        name=name,
        namespace=namespace,
        labels=frozen_map(labels),
        annotations=frozen_map(annotations),
        generation=generation,
        deleting=meta.get("deletionTimestamp") is not None,
        owner_kind=owner_kind,
        owner_name=owner_name,
        # RFC 3339 UTC ("2024-01-02T03:04:05Z") compares in time order as text; YAML
        # may have read it as a datetime.
        created=_timestamp(created),
    )


def _timestamp(value: object) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return ""


def _spec(
    iss: Issues, doc: Mapping[Any, Any], base: str, *, required: bool
) -> Mapping[Any, Any] | None:
    return f.get_map(iss, doc, "spec", base, required=required)


def _export_to(iss: Issues, values: Iterable[str], where: str) -> frozenset[str]:
    out: set[str] = set()
    for v in values:
        v = v.strip()
        if v in ("*", ".", "~") or f.is_dns1123_label(v):
            out.add(v)
        else:
            iss.error(where, f"exportTo value {v!r} must be '*', '.', '~' or a namespace")
    return frozenset(out) or frozenset({"*"})


def _locality(text: str) -> Locality:
    parts = [p.strip() for p in text.split("/", 2)] + ["", ""]
    return Locality(parts[0], parts[1], parts[2])


# -- Kubernetes Service -----------------------------------------------------------------

_SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
_K8S_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})


def _target_port(iss: Issues, port: Mapping[Any, Any], where: str) -> int | str | None:
    value = port.get("targetPort")
    tp = f.join(where, "targetPort")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 65535:
            return value
        iss.error(tp, f"{value} is out of range 1..65535")
        return None
    if isinstance(value, str) and f.is_port_name(value):
        return value
    if isinstance(value, str):
        iss.error(tp, f"{value!r} must be a port number or a port name (IANA_SVC_NAME)")
    else:
        iss.error(tp, f"must be a number or a port name, not a {f.type_name(value)}")
    return None


def _service(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> Service | None:
    spec = _spec(iss, doc, base, required=True)
    if spec is None:
        return None
    sp = f.join(base, "spec")
    svc_type = f.get_str(iss, spec, "type", sp) or "ClusterIP"
    if svc_type not in _SERVICE_TYPES:
        iss.error(
            f.join(sp, "type"), f"{svc_type!r} must be one of {', '.join(sorted(_SERVICE_TYPES))}"
        )
    ports: list[ServicePort] = []
    names: set[str] = set()
    raw_ports = f.get_list(iss, spec, "ports", sp)
    for where, p in f.items(iss, raw_ports, f.join(sp, "ports")):
        number = f.get_port(iss, p, "port", where, required=True)
        name = f.get_str(iss, p, "name", where) or ""
        if name and not f.is_dns1123_label(name):
            iss.error(f.join(where, "name"), f"{name!r} must be a DNS-1123 label")
        elif name in names:
            iss.error(f.join(where, "name"), f"duplicate port name {name!r}")
        elif not name and len(raw_ports or ()) > 1:
            iss.error(f.join(where, "name"), "is required when a service has several ports")
        names.add(name)
        k8s_protocol = f.get_str(iss, p, "protocol", where) or "TCP"
        if k8s_protocol not in _K8S_PROTOCOLS:
            iss.error(f.join(where, "protocol"), f"{k8s_protocol!r} must be TCP, UDP or SCTP")
        app_protocol = f.get_str(iss, p, "appProtocol", where)
        target = _target_port(iss, p, where)
        if number is not None:
            proto = protocol_for(name, app_protocol, k8s_protocol, port=number)
            ports.append(ServicePort(name, number, proto, target))
    cluster_ip = f.get_str(iss, spec, "clusterIP", sp)
    cluster_ips = f.get_str_list(iss, spec, "clusterIPs", sp)
    candidates = cluster_ips or ([cluster_ip] if cluster_ip else [])
    headless = "None" in candidates
    addresses: list[str] = []
    for ip in candidates:
        if ip == "None":
            continue
        if f.is_ip(ip):
            addresses.append(ip)
        else:
            field_name = "clusterIPs" if cluster_ips else "clusterIP"
            iss.error(f.join(sp, field_name), f"{ip!r} is not an IP address")
    external_name: str | None = None
    resolution = Resolution.NONE if headless else Resolution.STATIC
    location = Location.MESH_INTERNAL
    if svc_type == "ExternalName":
        external_name = f.get_str(iss, spec, "externalName", sp, required=True)
        if external_name is not None and not f.is_hostname(external_name):
            iss.error(f.join(sp, "externalName"), f"{external_name!r} is not a DNS name")
        # istiod: an ExternalName service is an external host resolved by DNS.
        resolution, location = Resolution.DNS, Location.MESH_EXTERNAL
    selector = f.get_str_map(iss, spec, "selector", sp)
    export_raw = meta.annotations.get(EXPORT_TO_ANNOTATION, "")
    export_to = _export_to(
        iss,
        [v for v in export_raw.split(",") if v.strip()],
        f.join(f.join(f.join(base, "metadata"), "annotations"), EXPORT_TO_ANNOTATION),
    )
    return Service(
        hostname=f"{meta.name}.{meta.namespace}.svc.{opts.domain_suffix}",
        namespace=meta.namespace,
        name=meta.name,
        ports=tuple(ports),
        ref=ref,
        addresses=tuple(addresses),
        resolution=resolution,
        location=location,
        export_to=export_to,
        labels=meta.labels,
        selector=frozen_map(selector) if selector else None,
        external_name=external_name,
        headless=headless,
        clusters=() if opts.cluster_id is None else (opts.cluster_id,),
    )


# -- Pod --------------------------------------------------------------------------------

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
NETWORK_LABEL = "topology.istio.io/network"
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"


def _workload_name(meta: _Meta) -> str:
    """The owning workload (Deployment for ReplicaSet pods), as istiod reports it."""
    if not meta.owner_kind:
        return meta.name
    hash_ = meta.labels.get(POD_TEMPLATE_HASH_LABEL, "")
    if meta.owner_kind == "ReplicaSet" and hash_ and meta.owner_name.endswith(f"-{hash_}"):
        return meta.owner_name[: -len(hash_) - 1]
    return meta.owner_name


def _pod(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> Workload | None:
    sp = f.join(base, "spec")
    spec = _spec(iss, doc, base, required=False) or {}
    service_account = (
        f.get_str(iss, spec, "serviceAccountName", sp)
        or f.get_str(iss, spec, "serviceAccount", sp)
        or "default"
    )
    named_ports: dict[str, int] = {}
    containers = f.get_list(iss, spec, "containers", sp)
    for cw, container in f.items(iss, containers, f.join(sp, "containers")):
        for pw, port in f.items(iss, f.get_list(iss, container, "ports", cw), f.join(cw, "ports")):
            number = f.get_port(iss, port, "containerPort", pw, required=True)
            name = f.get_str(iss, port, "name", pw)
            if name is not None and not f.is_port_name(name):
                iss.error(f.join(pw, "name"), f"{name!r} must be an IANA_SVC_NAME")
            elif name is not None and number is not None:
                named_ports.setdefault(name, number)
    stp = f.join(base, "status")
    status = f.get_map(iss, doc, "status", base) or {}
    address = f.get_str(iss, status, "podIP", stp) or ""
    if address and not f.is_ip(address):
        iss.error(f.join(stp, "podIP"), f"{address!r} is not an IP address")
    for where, entry in f.items(iss, f.get_list(iss, status, "podIPs", stp), f.join(stp, "podIPs")):
        ip = f.get_str(iss, entry, "ip", where, required=True)
        if ip is not None and not f.is_ip(ip):
            iss.error(f.join(where, "ip"), f"{ip!r} is not an IP address")
        elif ip is not None and not address:
            address = ip
    conditions = list(
        f.items(iss, f.get_list(iss, status, "conditions", stp), f.join(stp, "conditions"))
    )
    ready = bool(address)
    if conditions:
        ready = False
        for where, cond in conditions:
            c_type = f.get_str(iss, cond, "type", where, required=True)
            c_status = f.get_str(iss, cond, "status", where, required=True)
            if c_status is not None and c_status not in ("True", "False", "Unknown"):
                iss.error(f.join(where, "status"), f"{c_status!r} must be True, False or Unknown")
            if c_type == "Ready" and c_status == "True":
                ready = bool(address)
    phase = f.get_str(iss, status, "phase", stp)
    if phase in ("Succeeded", "Failed") or meta.deleting:
        ready = False
    labels = meta.labels
    return Workload(
        name=meta.name,
        namespace=meta.namespace,
        address=address,
        ref=ref,
        labels=labels,
        service_account=service_account,
        ready=ready,
        named_ports=MappingProxyType(named_ports),
        network=labels.get(NETWORK_LABEL, ""),
        locality=Locality(
            labels.get(REGION_LABEL, ""), labels.get(ZONE_LABEL, ""), labels.get(SUBZONE_LABEL, "")
        ),
        workload_name=_workload_name(meta),
        node_name=f.get_str(iss, spec, "nodeName", sp) or "",
        cluster_id=_cluster(opts),
    )


def _cluster(opts: _Options) -> str:
    """The cluster id to tag objects with (the model's default when untagged)."""
    return DEFAULT_CLUSTER_ID if opts.cluster_id is None else opts.cluster_id


# -- Node -------------------------------------------------------------------------------


def _node(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> NodeInfo | None:
    labels = meta.labels
    locality = Locality(
        labels.get(REGION_LABEL, ""), labels.get(ZONE_LABEL, ""), labels.get(SUBZONE_LABEL, "")
    )
    return NodeInfo(ref, locality, _cluster(opts))


# -- EndpointSlice / Endpoints ----------------------------------------------------------


def _endpoint_ports(iss: Issues, raw: list[Any] | None, path: str) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    for where, p in f.items(iss, raw, path):
        name = f.get_str(iss, p, "name", where) or ""
        # A slice port without a number means "all ports": nothing to route to.
        number = f.get_port(iss, p, "port", where)
        protocol = f.get_str(iss, p, "protocol", where) or "TCP"
        if protocol not in _K8S_PROTOCOLS:
            iss.error(f.join(where, "protocol"), f"{protocol!r} must be TCP, UDP or SCTP")
        app_protocol = f.get_str(iss, p, "appProtocol", where) or ""
        if number is not None:
            ports.append(EndpointPort(name, number, protocol, app_protocol))
    return tuple(ports)


def _target_ref(
    iss: Issues, parent: Mapping[Any, Any], where: str, namespace: str
) -> ObjectRef | None:
    tr = f.get_map(iss, parent, "targetRef", where)
    if tr is None:
        return None
    tp = f.join(where, "targetRef")
    kind = f.get_str(iss, tr, "kind", tp) or ""
    name = f.get_str(iss, tr, "name", tp) or ""
    ns = f.get_str(iss, tr, "namespace", tp) or namespace
    return ObjectRef(kind, ns, name) if kind and name else None


def _endpoint_slice(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> EndpointSet | None:
    service_name = meta.labels.get(SERVICE_NAME_LABEL, "")
    if not service_name:
        iss.warn(
            f.join(f.join(f.join(base, "metadata"), "labels"), SERVICE_NAME_LABEL),
            "is missing: the slice belongs to no service, skipped",
        )
        return None
    address_type = f.get_str(iss, doc, "addressType", base) or "IPv4"
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        iss.error(f.join(base, "addressType"), f"{address_type!r} must be IPv4, IPv6 or FQDN")
    valid: Callable[[str], bool] = f.is_hostname if address_type == "FQDN" else f.is_ip
    ports = _endpoint_ports(iss, f.get_list(iss, doc, "ports", base), f.join(base, "ports"))
    endpoints: list[EndpointAddress] = []
    raw = f.get_list(iss, doc, "endpoints", base)
    for where, ep in f.items(iss, raw, f.join(base, "endpoints")):
        addresses = f.get_str_list(iss, ep, "addresses", where, required=True)
        for i, a in enumerate(addresses):
            if not valid(a):
                iss.error(
                    f"{f.join(where, 'addresses')}[{i}]",
                    f"{a!r} is not a valid {address_type} address",
                )
        cw = f.join(where, "conditions")
        conditions = f.get_map(iss, ep, "conditions", where) or {}
        ready = f.get_bool(iss, conditions, "ready", cw)
        terminating = f.get_bool(iss, conditions, "terminating", cw)
        f.get_bool(iss, conditions, "serving", cw)
        endpoints.append(
            EndpointAddress(
                addresses=tuple(addresses),
                # Kubernetes: a nil ready condition means "unknown, assume ready".
                ready=ready is not False and terminating is not True,
                target_ref=_target_ref(iss, ep, where, meta.namespace),
                zone=f.get_str(iss, ep, "zone", where) or "",
                node_name=f.get_str(iss, ep, "nodeName", where) or "",
                hostname=f.get_str(iss, ep, "hostname", where) or "",
            )
        )
    subset = EndpointSubset(ports, tuple(endpoints))
    return EndpointSet(ref, service_name, (subset,), _cluster(opts))


def _endpoint_addresses(
    iss: Issues, parent: Mapping[Any, Any], key: str, where: str, namespace: str, ready: bool
) -> list[EndpointAddress]:
    out: list[EndpointAddress] = []
    for aw, a in f.items(iss, f.get_list(iss, parent, key, where), f.join(where, key)):
        ip = f.get_str(iss, a, "ip", aw, required=True)
        if ip is None:
            continue
        if not f.is_ip(ip):
            iss.error(f.join(aw, "ip"), f"{ip!r} is not an IP address")
            continue
        out.append(
            EndpointAddress(
                addresses=(ip,),
                ready=ready,
                target_ref=_target_ref(iss, a, aw, namespace),
                node_name=f.get_str(iss, a, "nodeName", aw) or "",
                hostname=f.get_str(iss, a, "hostname", aw) or "",
            )
        )
    return out


def _endpoints(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> EndpointSet | None:
    subsets: list[EndpointSubset] = []
    for where, s in f.items(iss, f.get_list(iss, doc, "subsets", base), f.join(base, "subsets")):
        ports = _endpoint_ports(iss, f.get_list(iss, s, "ports", where), f.join(where, "ports"))
        addresses = _endpoint_addresses(iss, s, "addresses", where, meta.namespace, True)
        addresses += _endpoint_addresses(iss, s, "notReadyAddresses", where, meta.namespace, False)
        subsets.append(EndpointSubset(ports, tuple(addresses)))
    return EndpointSet(ref, meta.name, tuple(subsets), _cluster(opts))


# -- ServiceEntry / WorkloadEntry --------------------------------------------------------

_RESOLUTIONS = {r.value: r for r in Resolution}
_LOCATIONS = {loc.value: loc for loc in Location}


def _entry_address_ok(address: str, *, allow_hostname: bool) -> bool:
    if address.startswith("unix://"):
        return len(address) > len("unix://")
    return f.is_ip(address) or (allow_hostname and f.is_hostname(address))


def _workload_spec(
    iss: Issues,
    m: Mapping[Any, Any],
    where: str,
    *,
    name: str,
    namespace: str,
    ref: ObjectRef,
    allow_hostname: bool = True,
    cluster_id: str = DEFAULT_CLUSTER_ID,
) -> Workload:
    """A WorkloadEntry spec, also the shape of a ServiceEntry inline endpoint."""
    address = f.get_str(iss, m, "address", where) or ""
    if address and not _entry_address_ok(address, allow_hostname=allow_hostname):
        what = (
            "an IP address or unix:// path"
            if not allow_hostname
            else "an IP, hostname or unix:// path"
        )
        iss.error(f.join(where, "address"), f"{address!r} must be {what}")
    weight = f.get_int(iss, m, "weight", where, lo=0, hi=2**32 - 1) or 1
    return Workload(
        name=name,
        namespace=namespace,
        address=address,
        ref=ref,
        labels=frozen_map(f.get_str_map(iss, m, "labels", where)),
        # Unset stays "": no identity to check (istiod leaves it empty too).
        service_account=f.get_str(iss, m, "serviceAccount", where) or "",
        ready=True,
        port_overrides=MappingProxyType(f.get_port_map(iss, m, "ports", where)),
        network=f.get_str(iss, m, "network", where) or "",
        locality=_locality(f.get_str(iss, m, "locality", where) or ""),
        weight=weight,
        cluster_id=cluster_id,
    )


def _workload_entry(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> Workload | None:
    spec = _spec(iss, doc, base, required=True)
    if spec is None:
        return None
    return _workload_spec(
        iss,
        spec,
        f.join(base, "spec"),
        name=meta.name,
        namespace=meta.namespace,
        ref=ref,
        cluster_id=_cluster(opts),
    )


def _enum(
    iss: Issues,
    spec: Mapping[Any, Any],
    key: str,
    path: str,
    values: Mapping[str, Any],
    default: str,
) -> Any:
    text = f.get_str(iss, spec, key, path) or default
    if text not in values:
        iss.error(f.join(path, key), f"{text!r} must be one of {', '.join(sorted(values))}")
        return values[default]
    return values[text]


def _service_entry(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> ServiceEntryConfig | None:
    spec = _spec(iss, doc, base, required=True)
    if spec is None:
        return None
    sp = f.join(base, "spec")
    hosts = f.get_str_list(iss, spec, "hosts", sp, required=True)
    if "hosts" in spec and not hosts and isinstance(spec.get("hosts"), list):
        iss.error(f.join(sp, "hosts"), "must name at least one host")
    for i, h in enumerate(hosts):
        if h == "*" or not f.is_hostname(h, wildcard=True):
            iss.error(f"{f.join(sp, 'hosts')}[{i}]", f"{h!r} is not a valid host")
    addresses = f.get_str_list(iss, spec, "addresses", sp)
    for i, a in enumerate(addresses):
        if not f.is_ip_or_cidr(a):
            iss.error(f"{f.join(sp, 'addresses')}[{i}]", f"{a!r} is not an IP address or CIDR")
    ports: list[ServicePort] = []
    names: set[str] = set()
    numbers: set[int] = set()
    for where, p in f.items(iss, f.get_list(iss, spec, "ports", sp), f.join(sp, "ports")):
        number = f.get_port(iss, p, "number", where, required=True)
        name = f.get_str(iss, p, "name", where) or ""
        if name and name in names:
            iss.error(f.join(where, "name"), f"duplicate port name {name!r}")
        elif name and not f.is_dns1123_label(name):
            iss.error(f.join(where, "name"), f"invalid port name: {name}")
        elif not name:
            # istiod rejects unnamed ServiceEntry ports; we accept them to stay lenient.
            iss.warn(f.join(where, "name"), "is required by istiod (invalid port name)")
        names.add(name)
        if number is not None and number in numbers:
            iss.error(f.join(where, "number"), f"duplicate port number {number}")
        proto_text = f.get_str(iss, p, "protocol", where)
        protocol = Protocol.AUTO
        if proto_text is not None:
            protocol = parse_protocol(proto_text)
            if protocol is Protocol.AUTO:
                iss.error(f.join(where, "protocol"), f"unknown protocol {proto_text!r}")
        target = f.get_port(iss, p, "targetPort", where)
        if number is not None:
            numbers.add(number)
            ports.append(ServicePort(name, number, protocol, target))
    location: Location = _enum(iss, spec, "location", sp, _LOCATIONS, "MESH_EXTERNAL")
    resolution: Resolution = _enum(iss, spec, "resolution", sp, _RESOLUTIONS, "NONE")
    endpoints: list[Workload] = []
    ep_path = f.join(sp, "endpoints")
    for where, ep in f.items(iss, f.get_list(iss, spec, "endpoints", sp), ep_path):
        w = _workload_spec(
            iss,
            ep,
            where,
            name=f"{meta.name}[{len(endpoints)}]",
            namespace=meta.namespace,
            ref=ref,
            allow_hostname=resolution is not Resolution.STATIC,
            cluster_id=_cluster(opts),
        )
        if not w.address:
            iss.error(f.join(where, "address"), "is required")
        endpoints.append(w)
    ws = f.get_map(iss, spec, "workloadSelector", sp)
    selector = f.get_str_map(iss, ws, "labels", f.join(sp, "workloadSelector")) if ws else {}
    # istiod ValidateServiceEntry: resolution-specific rules.
    if resolution is Resolution.NONE and endpoints:
        iss.error(ep_path, "no endpoints should be provided for resolution type NONE")
    if resolution is Resolution.NONE and ws is not None:
        iss.warn(f.join(sp, "workloadSelector"), "should not be set when resolution mode is NONE")
    if resolution not in (Resolution.NONE, Resolution.STATIC):
        for i, a in enumerate(addresses):
            if "/" in a:
                iss.error(
                    f"{f.join(sp, 'addresses')}[{i}]",
                    "CIDR addresses are allowed only for NONE/STATIC resolution types",
                )
    multi_host_l4 = any(
        not (p.protocol.is_http or p.protocol in (Protocol.HTTPS, Protocol.TLS)) for p in ports
    )
    if resolution is not Resolution.NONE and len(hosts) > 1 and multi_host_l4:
        iss.error(f.join(sp, "hosts"), "multiple hosts provided with non-HTTP, non-TLS ports")
    for i, w in enumerate(endpoints):
        where = f"{ep_path}[{i}]"
        for port_name in w.port_overrides:
            if port_name not in names:
                iss.error(
                    f.join(f.join(where, "ports"), port_name),
                    "endpoint port is not defined by the service entry",
                )
        if w.address.startswith("unix://") and (w.port_overrides or len(ports) != 1):
            iss.error(
                f.join(where, "address"),
                "a unix endpoint must not include ports and needs exactly 1 service port",
            )
    if ws is not None and endpoints:
        iss.error(f.join(sp, "workloadSelector"), "cannot be used together with endpoints")
    if resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not endpoints and not ws:
        for i, h in enumerate(hosts):
            if h.startswith("*"):
                iss.error(
                    f"{f.join(sp, 'hosts')}[{i}]",
                    f"wildcard host {h!r} cannot be resolved with {resolution.value} without endpoints",
                )
    if resolution is Resolution.DNS_ROUND_ROBIN and len(endpoints) > 1:
        iss.error(ep_path, "DNS_ROUND_ROBIN allows at most one endpoint")
    export_to = _export_to(iss, f.get_str_list(iss, spec, "exportTo", sp), f.join(sp, "exportTo"))
    allocated = _allocated_addresses(iss, doc, base)
    services = tuple(
        Service(
            hostname=h,
            namespace=meta.namespace,
            name=meta.name,
            ports=tuple(ports),
            ref=ref,
            addresses=tuple(addresses),
            resolution=resolution,
            location=location,
            export_to=export_to,
            labels=meta.labels,
            selector=frozen_map(selector) if ws is not None else None,
        )
        for h in dict.fromkeys(hosts)
    )
    # istiod (ShouldV2AutoAllocateIP): hosts of a ServiceEntry without addresses get an
    # allocated address unless its resolution is NONE (the original destination would
    # be lost) or the label opts out.
    opt_out = meta.labels.get(AUTOALLOCATE_LABEL, "").lower() == "false"
    auto = not addresses and resolution is not Resolution.NONE and not opt_out
    return ServiceEntryConfig(
        ref,
        services,
        tuple(endpoints),
        auto_allocate=auto,
        allocated=allocated,
        created=meta.created,
    )


# A ServiceEntry label: "false" opts its hosts out of IP auto-allocation.
AUTOALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"


def _allocated_addresses(
    iss: Issues, doc: Mapping[Any, Any], base: str
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """status.addresses ([{host, value}]): addresses istiod's IP allocator wrote for the
    hosts, kept so that a mesh moving from istiod keeps the addresses its apps resolved."""
    stp = f.join(base, "status")
    status = f.get_map(iss, doc, "status", base) or {}
    by_host: dict[str, list[str]] = {}
    where = f.join(stp, "addresses")
    for at, item in f.items(iss, f.get_list(iss, status, "addresses", stp), where):
        host = f.get_str(iss, item, "host", at) or ""
        value = f.get_str(iss, item, "value", at) or ""
        if not f.is_ip(value):
            iss.warn(f.join(at, "value"), f"{value!r} is not an IP address; ignored")
            continue
        by_host.setdefault(host, []).append(value)
    return tuple((h, tuple(v)) for h, v in by_host.items())


# -- ConfigObject kinds ------------------------------------------------------------------


def _config(
    ref: ObjectRef, meta: _Meta, group: str, version: str, spec: Mapping[str, Any]
) -> ConfigObject:
    return ConfigObject(
        ref=ref,
        group=group,
        version=version,
        spec=spec,
        labels=meta.labels,
        annotations=meta.annotations,
        generation=meta.generation,
        created=meta.created,
    )


def _frozen_spec(iss: Issues, value: Any, where: str) -> Mapping[str, Any] | None:
    try:
        frozen = f.deep_freeze(value)
    except f.FreezeError as e:
        iss.error(where, str(e))
        return None
    assert isinstance(frozen, Mapping)
    return frozen


def _api(doc: Mapping[Any, Any]) -> tuple[str, str]:
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    return group, version


def _istio_config(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> ConfigObject | None:
    raw = _spec(iss, doc, base, required=False)
    if raw is None and "spec" in doc and doc["spec"] is not None:
        return None  # not a mapping: already reported
    spec = _frozen_spec(iss, raw or {}, f.join(base, "spec"))
    if spec is None:
        return None
    group, version = _api(doc)
    if ref.kind in UNTRANSLATED_KINDS:
        iss.warn(
            f.join(base, "spec"),
            f"{ref.kind} is not translated by xdsd: this object has no effect on any proxy",
        )
    typed = None
    parser = PARSERS.get(ref.kind)
    if parser is not None and group in ("networking.istio.io", "security.istio.io"):
        typed = parser(iss, spec, f.join(base, "spec"), ref)
        if iss.failed:
            return None
    return dataclasses.replace(_config(ref, meta, group, version, spec), typed=typed)


def _deny_all_fallback(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, base: str
) -> ConfigObject:
    """An invalid AuthorizationPolicy, where it has no last good version, denies every
    request to the workloads it (as far as can be read) selects: istiod denies what it
    cannot represent, and a policy must never fail open."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), Mapping) else {}
    scratch = Issues(iss.source, iss.obj)
    selector = parse_selector(scratch, spec or {}, f.join(base, "spec"))
    if scratch.failed:
        selector = None  # an unreadable selector: the whole namespace
    iss.warn(
        f.join(base, "spec"),
        "invalid AuthorizationPolicy with no last good version: it denies all requests to "
        "the workloads it selects until fixed",
    )
    group, version = _api(doc)
    typed = AuthorizationPolicy(selector, "ALLOW", "", ())
    config = _config(ref, meta, group, version, MappingProxyType({}))
    return dataclasses.replace(config, typed=typed)


def _secret(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> ConfigObject | None:
    # Error messages name keys only: secret values must never reach a log.
    data = f.get_str_map(iss, doc, "data", base)
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            iss.error(f.join(f.join(base, "data"), key), "is not valid base64")
    # Kubernetes merges stringData into data on write; do the same.
    for key, value in f.get_str_map(iss, doc, "stringData", base).items():
        data[key] = base64.b64encode(value.encode()).decode("ascii")
    secret_type = f.get_str(iss, doc, "type", base) or "Opaque"
    spec = MappingProxyType({"type": secret_type, "data": SecretData(data)})
    # Gateway credentials: certificate/key entries must be PEM (SDS skips the Secret otherwise).
    for key, problem in pem_problems(SecretData(data)):
        iss.warn(f.join(f.join(base, "data"), key), f"{problem}: not served over SDS")
    return _config(ref, meta, "", "v1", spec)


def _config_map(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> ConfigObject | None:
    data = f.get_str_map(iss, doc, "data", base)
    binary = f.get_str_map(iss, doc, "binaryData", base)
    spec = MappingProxyType({"data": frozen_map(data), "binaryData": frozen_map(binary)})
    return _config(ref, meta, "", "v1", spec)


def _namespace(
    iss: Issues, doc: Mapping[Any, Any], meta: _Meta, ref: ObjectRef, opts: _Options, base: str
) -> ConfigObject | None:
    spec = _frozen_spec(iss, _spec(iss, doc, base, required=False) or {}, f.join(base, "spec"))
    return None if spec is None else _config(ref, meta, "", "v1", spec)
