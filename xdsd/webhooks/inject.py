"""Sidecar injection: which pods get a sidecar, the injected pod, and the JSONPatch to it.

The sidecar is built in Python from the same inputs as Istio's injection template
(manifests/charts/istio-control/istio-discovery/files/injection-template.yaml): the
`values` of the injector ConfigMap, MeshConfig's `defaultConfig`, the pod's labels and
annotations and the webhook path's `cluster`/`net`. Differences from istiod:
native sidecars, probe rewriting, Prometheus annotation merging, user volumes and
custom bootstrap overrides are not done; a container named `istio-proxy` already in
the pod overrides the injected one field by field (istiod merges deeper).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from xdsd.webhooks.config import InjectorConfig, merge, thaw

STATUS_ANNOTATION = "sidecar.istio.io/status"
INJECT_ANNOTATION = "sidecar.istio.io/inject"  # also a label (preferred when both are set)
PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
REV_LABEL = "istio.io/rev"
NAMESPACE_INJECTION_LABEL = "istio-injection"
NETWORK_LABEL = "topology.istio.io/network"
PROXY_CONTAINER = "istio-proxy"
INIT_CONTAINER = "istio-init"
VALIDATION_CONTAINER = "istio-validation"
# Namespaces istiod never injects (pkg/kube/inject: IgnoredNamespaces).
IGNORED_NAMESPACES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
)
# Webhook path keys istiod maps to env names (pkg/kube/inject/webhook.go: URLParameterToEnv).
PATH_ENVS = {"cluster": "ISTIO_META_CLUSTER_ID", "net": "ISTIO_META_NETWORK"}
INTERCEPTION_MODES = ("REDIRECT", "TPROXY", "NONE")


class InjectionError(ValueError):
    """The pod cannot be injected as it asks (a bad annotation): the request is denied."""


def parse_inject_path(path: str) -> dict[str, str]:
    """Env vars from an injection path, `/inject/K1/V1/K2/V2` (istiod's parseInjectEnvs).

    `cluster` and `net` name ISTIO_META_CLUSTER_ID and ISTIO_META_NETWORK; other keys
    are upper-cased; `--slash--` in a value is `/`; a last key without value is dropped.
    """
    parts = path.rstrip("/").split("/", 2)
    if len(parts) < 3 or not parts[2]:
        return {}
    items = parts[2].split("/")
    out: dict[str, str] = {}
    for i in range(0, len(items) - 1, 2):
        key, value = items[i], items[i + 1].replace("--slash--", "/")
        env = PATH_ENVS.get(key, key.upper())
        if env:
            out[env] = value
    return out


@dataclass(frozen=True)
class InjectSettings:
    """What the injected proxy is told about the control plane, beside the ConfigMaps."""

    # The external control plane's xDS/CA address (HOST:PORT), e.g. the ingress gateway's;
    # MeshConfig defaultConfig.discoveryAddress and the pod's proxy.istio.io/config win.
    discovery_address: str = ""
    cluster_id: str = "Kubernetes"  # when neither the path nor the values name one
    trust_domain: str = "cluster.local"  # when neither MeshConfig nor the values name one
    revision: str = ""  # this control plane's istio.io/rev (`--revision`) unless values say
    mesh_id: str = ""  # `--mesh-id`: when neither values nor MeshConfig name one


def effective_revision(config: InjectorConfig, settings: InjectSettings) -> str:
    """The injector's revision: values `revision`, else xdsd's `--revision`, else default."""
    return str(config.value("revision", "")) or settings.revision or "default"


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str = ""


def _selector_value(meta: Mapping[str, Any]) -> str:
    labels = meta.get("labels") or {}
    if INJECT_ANNOTATION in labels:  # the label is the newer API and wins
        return str(labels[INJECT_ANNOTATION])
    return str((meta.get("annotations") or {}).get(INJECT_ANNOTATION, ""))


def injection_required(
    pod: Mapping[str, Any],
    namespace: str,
    config: InjectorConfig,
    namespace_labels: Mapping[str, str] | None,
    revision: str = "default",
) -> Decision:
    """Whether to inject, as istiod's injectRequired plus the webhooks' selectors.

    `namespace_labels` is the namespace as the config store knows it (None: unknown;
    then the remote API server's namespaceSelector already chose to call us).
    """
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if STATUS_ANNOTATION in annotations:
        return Decision(False, "already injected (sidecar.istio.io/status is set)")
    if spec.get("hostNetwork"):
        return Decision(False, "hostNetwork pod")
    if namespace in IGNORED_NAMESPACES:
        return Decision(False, f"namespace {namespace} is never injected")
    if namespace_labels is not None:
        ns_inject = namespace_labels.get(NAMESPACE_INJECTION_LABEL)
        ns_rev = namespace_labels.get(REV_LABEL)
        if ns_inject == "disabled":
            return Decision(False, f"namespace {namespace} has istio-injection=disabled")
        if ns_inject == "enabled" and revision != "default":
            # istio-injection=enabled selects the default revision (Istio's selectors).
            return Decision(False, f"namespace {namespace} is for the default revision")
        if ns_inject != "enabled" and ns_rev is not None and ns_rev != revision:
            return Decision(False, f"namespace {namespace} is for revision {ns_rev}")
    pod_rev = labels.get(REV_LABEL)
    if pod_rev is not None and pod_rev != revision:
        return Decision(False, f"pod is for revision {pod_rev}")
    selector = _selector_value(meta)
    use_default = selector not in ("true", "false")
    inject = selector == "true"
    if use_default:
        plain = {str(k): str(v) for k, v in labels.items()}
        if any(s.selects(plain) for s in config.never_inject):
            use_default, inject = False, False
        elif any(s.selects(plain) for s in config.always_inject):
            use_default, inject = False, True
    if config.policy == "enabled":
        required = True if use_default else inject
    elif config.policy == "disabled":
        required = False if use_default else inject
    else:
        return Decision(False, f"injection policy {config.policy!r} is not valid")
    if required:
        return Decision(True)
    if not use_default and not inject:
        return Decision(False, "the pod asks not to be injected")
    return Decision(False, "policy disabled and the pod does not ask for injection")


# -- annotation checks (istiod validates them before rendering) --------------------------


def _check_ranges(name: str, value: str) -> None:
    if value in ("", "*"):
        return
    for part in value.split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise InjectionError(f"{name}: {part.strip()!r} is not a CIDR") from None


def _check_ports(name: str, value: str, star: bool) -> None:
    if value == "" or (star and value == "*"):
        return
    for part in value.split(","):
        p = part.strip()
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise InjectionError(f"{name}: {p!r} is not a port number")


def _annotation(annotations: Mapping[str, str], key: str, default: Any) -> str:
    value = annotations.get(key)
    return str(default if value is None else value)


# -- the injected pod -------------------------------------------------------------------


def _deploy_meta(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    """(workload name, owner apiVersion, owner kind), as istiod's GetDeployMetaFromPod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = str(meta.get("name") or "")
    api_version, kind = "v1", "Pod"
    if meta.get("generateName"):
        for ref in meta.get("ownerReferences") or ():
            if isinstance(ref, Mapping) and ref.get("controller"):
                api_version = str(ref.get("apiVersion", ""))
                kind = str(ref.get("kind", ""))
                name = str(ref.get("name", ""))
                pth = str(labels.get("pod-template-hash", ""))
                if kind == "ReplicaSet" and pth and name.endswith(pth):
                    name, kind = name[: -len(pth) - 1], "Deployment"
                elif kind == "Job" and (m := re.fullmatch(r"(.+)-\d{8,10}", name)):
                    name, kind, api_version = m.group(1), "CronJob", "batch/v1"
                break
    if not name:
        name = str(meta.get("name") or meta.get("generateName") or "")
    if "service.istio.io/workload-name" in labels:
        name = str(labels["service.istio.io/workload-name"])
    return name, api_version, kind


def _image(config: InjectorConfig, name_path: str, annotations: Mapping[str, str]) -> str:
    override = annotations.get("sidecar.istio.io/proxyImage", "")
    if "/" in override:
        return override
    name = str(config.value(name_path, "proxyv2"))
    if "/" in name:
        return name
    hub = str(config.value("global.hub", ""))
    tag = str(config.value("global.tag", ""))
    variant = annotations.get("sidecar.istio.io/proxyImageType") or str(
        config.value("global.variant", "")
    )
    suffix = f"-{variant}" if variant and variant != "default" else ""
    return f"{hub}/{name}:{tag}{suffix}" if hub else f"{name}:{tag}{suffix}"


def _resources(config: InjectorConfig, annotations: Mapping[str, str]) -> dict[str, Any]:
    keys = {
        ("requests", "cpu"): "sidecar.istio.io/proxyCPU",
        ("requests", "memory"): "sidecar.istio.io/proxyMemory",
        ("limits", "cpu"): "sidecar.istio.io/proxyCPULimit",
        ("limits", "memory"): "sidecar.istio.io/proxyMemoryLimit",
    }
    if any(a in annotations for a in keys.values()):
        out: dict[str, Any] = {}
        for (kind, res), a in keys.items():
            if a in annotations:
                out.setdefault(kind, {})[res] = str(annotations[a])
        return out
    values = config.value("global.proxy.resources", {})
    return thaw(values) if isinstance(values, Mapping) else {}


def proxy_config(
    config: InjectorConfig, settings: InjectSettings, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """ProxyConfig (PROXY_CONFIG): Istio's defaults, MeshConfig defaultConfig, the pod's."""
    ns = str(config.value("global.istioNamespace", "istio-system"))
    base: dict[str, Any] = {
        "configPath": "./etc/istio/proxy",
        "binaryPath": "/usr/local/bin/envoy",
        "serviceCluster": "istio-proxy",
        "drainDuration": "45s",
        "terminationDrainDuration": "5s",
        "proxyAdminPort": 15000,
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "discoveryAddress": settings.discovery_address or f"istiod.{ns}.svc:15012",
        "statNameLength": 189,
        "statusPort": 15020,
    }
    default_config = config.mesh.get("defaultConfig")
    if isinstance(default_config, Mapping):
        base = merge(base, default_config)
    text = annotations.get(PROXY_CONFIG_ANNOTATION)
    if text:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, Mapping):
            raise InjectionError(f"{PROXY_CONFIG_ANNOTATION}: not a YAML/JSON ProxyConfig")
        base = merge(base, thaw(doc))
    return base


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource_env(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": "1"}}}


def _exclude_inbound(status_port: str, excluded: str) -> str:
    """The status port added to the excluded inbound ports (istiod's excludeInboundPort)."""
    port = status_port.strip()
    if not port or port == "0":
        return excluded
    ports = [p.strip() for p in excluded.split(",") if p.strip()]
    if port in ports:
        return excluded
    return ",".join([port, *ports])


def _canonical(labels: Mapping[str, Any], workload: str) -> tuple[str, str]:
    name = str(
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload
    )[:63].strip("-_.")
    revision = str(
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return name, revision


@dataclass(frozen=True)
class Injected:
    pod: dict[str, Any]
    patch: list[dict[str, Any]] = field(default_factory=list)


def inject_pod(
    pod: Mapping[str, Any],
    namespace: str,
    config: InjectorConfig,
    settings: InjectSettings,
    path_envs: Mapping[str, str],
) -> Injected:
    """The pod with Istio's sidecar, and the JSONPatch (RFC 6902) from `pod` to it."""
    original = thaw(pod)
    out = copy.deepcopy(original)
    meta = out.setdefault("metadata", {})
    if not meta.get("namespace"):
        meta["namespace"] = namespace
    labels = meta.setdefault("labels", {}) or {}
    meta["labels"] = labels
    annotations: dict[str, str] = meta.setdefault("annotations", {}) or {}
    meta["annotations"] = annotations
    spec = out.setdefault("spec", {})
    v = config.value

    pc = proxy_config(config, settings, annotations)
    mode = _annotation(
        annotations, "sidecar.istio.io/interceptionMode", pc.get("interceptionMode", "REDIRECT")
    )
    if mode not in INTERCEPTION_MODES:
        raise InjectionError(
            f"sidecar.istio.io/interceptionMode: {mode!r} is not one of "
            + ", ".join(INTERCEPTION_MODES)
        )
    include_ranges = _annotation(
        annotations,
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        v("global.proxy.includeIPRanges", "*"),
    )
    exclude_ranges = _annotation(
        annotations,
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        v("global.proxy.excludeIPRanges", ""),
    )
    include_ports = _annotation(
        annotations,
        "traffic.sidecar.istio.io/includeInboundPorts",
        v("global.proxy.includeInboundPorts", "*"),
    )
    exclude_ports = _annotation(
        annotations,
        "traffic.sidecar.istio.io/excludeInboundPorts",
        v("global.proxy.excludeInboundPorts", ""),
    )
    include_out = _annotation(
        annotations,
        "traffic.sidecar.istio.io/includeOutboundPorts",
        v("global.proxy.includeOutboundPorts", ""),
    )
    exclude_out = _annotation(
        annotations,
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        v("global.proxy.excludeOutboundPorts", ""),
    )
    _check_ranges("traffic.sidecar.istio.io/includeOutboundIPRanges", include_ranges)
    _check_ranges("traffic.sidecar.istio.io/excludeOutboundIPRanges", exclude_ranges)
    _check_ports("traffic.sidecar.istio.io/includeInboundPorts", include_ports, star=True)
    _check_ports("traffic.sidecar.istio.io/excludeInboundPorts", exclude_ports, star=False)
    _check_ports("traffic.sidecar.istio.io/includeOutboundPorts", include_out, star=False)
    _check_ports("traffic.sidecar.istio.io/excludeOutboundPorts", exclude_out, star=False)

    status_port = _annotation(
        annotations, "status.sidecar.istio.io/port", v("global.proxy.statusPort", 15020)
    )
    excluded_inbound = _exclude_inbound(status_port, exclude_ports)
    cni = bool(v("pilot.cni.enabled", False))
    tproxy = mode == "TPROXY"
    privileged = bool(v("global.proxy.privileged", False))
    resources = _resources(config, annotations)
    pull_policy = str(v("global.imagePullPolicy", ""))
    agent_log = _annotation(
        annotations, "sidecar.istio.io/agentLogLevel", v("global.logging.level", "default:info")
    )
    log_json = bool(v("global.logAsJson", False))
    revision = effective_revision(config, settings)
    workload, owner_api, owner_kind = _deploy_meta(out)
    containers = [c for c in spec.get("containers") or () if isinstance(c, Mapping)]
    app_names = [str(c.get("name", "")) for c in containers if c.get("name") != PROXY_CONTAINER]

    # -- metadata
    canonical_name, canonical_rev = _canonical(labels, workload)
    labels.setdefault("security.istio.io/tlsMode", "istio")
    labels["service.istio.io/canonical-name"] = canonical_name
    labels["service.istio.io/canonical-revision"] = canonical_rev
    new_annotations = {REV_LABEL: revision}
    if app_names:
        for key in (
            "kubectl.kubernetes.io/default-logs-container",
            "kubectl.kubernetes.io/default-container",
        ):
            if key not in annotations:
                new_annotations[key] = app_names[0]
    if cni:
        # The CNI plugin reads the capture settings from the pod's annotations.
        new_annotations["sidecar.istio.io/interceptionMode"] = mode
        if include_ranges:
            new_annotations["traffic.sidecar.istio.io/includeOutboundIPRanges"] = include_ranges
        if exclude_ranges:
            new_annotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = exclude_ranges
        new_annotations["traffic.sidecar.istio.io/includeInboundPorts"] = include_ports
        new_annotations["traffic.sidecar.istio.io/excludeInboundPorts"] = excluded_inbound
        if include_out:
            new_annotations["traffic.sidecar.istio.io/includeOutboundPorts"] = include_out
        if exclude_out:
            new_annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] = exclude_out
    annotations.update(new_annotations)

    # -- init container (none in NONE mode; istio-validation with the CNI plugin)
    init: dict[str, Any] | None = None
    if mode != "NONE":
        args = [
            "istio-iptables",
            "-p", str(pc.get("proxyListenPort") or config.mesh.get("proxyListenPort") or 15001),
            "-z", str(config.mesh.get("proxyInboundListenPort") or 15006),
            "-u", "1337",
            "-m", mode,
            "-i", include_ranges,
            "-x", exclude_ranges,
            "-b", include_ports,
            "-d", f"15090,15021,{excluded_inbound}" if excluded_inbound else "15090,15021",
        ]  # fmt: skip
        if include_out:
            args += ["-q", include_out]
        if exclude_out:
            args += ["-o", exclude_out]
        for key, flag in (
            ("istio.io/reroute-virtual-interfaces", "-k"),
            ("traffic.sidecar.istio.io/excludeInterfaces", "-c"),
        ):
            if key in annotations:
                args += [flag, annotations[key]]
        args.append(f"--log_output_level={agent_log}")
        if log_json:
            args.append("--log_as_json")
        if cni:
            args += ["--run-validation", "--skip-rule-apply"]
        elif v("global.proxy_init.forceApplyIptables", False):
            args.append("--force-apply")
        if v("global.nativeNftables", False):
            args.append("--native-nftables")
        security: dict[str, Any] = {
            "allowPrivilegeEscalation": privileged,
            "privileged": privileged,
            "capabilities": {"drop": ["ALL"]}
            if cni
            else {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        }
        if cni:
            security.update(
                readOnlyRootFilesystem=True, runAsGroup=1337, runAsUser=1337, runAsNonRoot=True
            )
        else:
            security.update(
                readOnlyRootFilesystem=False, runAsGroup=0, runAsNonRoot=False, runAsUser=0
            )
        init = {
            "name": VALIDATION_CONTAINER if cni else INIT_CONTAINER,
            "image": _image(config, "global.proxy_init.image", annotations),
            "args": args,
            "resources": resources,
            "securityContext": security,
        }
        if pull_policy:
            init["imagePullPolicy"] = pull_policy
        # ProxyConfig's proxyMetadata reaches istio-iptables too (as Istio's template
        # does): ISTIO_META_DNS_CAPTURE there makes it capture DNS for the agent.
        init_meta = pc.get("proxyMetadata")
        if isinstance(init_meta, Mapping) and init_meta:
            init["env"] = [_env(str(k), init_meta[k]) for k in sorted(init_meta)]

    # -- the proxy
    cluster_id = (
        path_envs.get("ISTIO_META_CLUSTER_ID")
        or str(v("global.multiCluster.clusterName", ""))
        or settings.cluster_id
    )
    network = labels.get(NETWORK_LABEL) or str(v("global.network", ""))
    trust_domain = (
        str(config.mesh.get("trustDomain") or "")
        or str(v("global.trustDomain", ""))
        or settings.trust_domain
    )
    ca_addr = str(v("global.caAddress", "")) or str(pc["discoveryAddress"])
    pod_ports = [
        p for c in containers for p in c.get("ports") or () if isinstance(p, Mapping) and p
    ]
    env = [
        _env("PILOT_CERT_PROVIDER", v("global.pilotCertProvider", "istiod")),
        _env("CA_ADDR", ca_addr),
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"),
        _resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        _env("PROXY_CONFIG", json.dumps(pc, separators=(",", ":"))),
        _env("ISTIO_META_POD_PORTS", json.dumps(pod_ports, separators=(",", ":"))),
        _env("ISTIO_META_APP_CONTAINERS", ",".join(app_names)),
        _resource_env("GOMEMLIMIT", "limits.memory"),
        _env("ISTIO_META_CLUSTER_ID", cluster_id),
        _field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        _env("ISTIO_META_INTERCEPTION_MODE", mode),
    ]
    if network:
        env.append(_env("ISTIO_META_NETWORK", network))
    if workload:
        env.append(_env("ISTIO_META_WORKLOAD_NAME", workload))
        ns = meta["namespace"] or "default"
        env.append(
            _env(
                "ISTIO_META_OWNER",
                f"kubernetes://apis/{owner_api}/namespaces/{ns}/{owner_kind.lower()}s/{workload}",
            )
        )
    # istiod: values global.meshID, else MeshConfig meshId, else the trust domain.
    mesh_id = (
        str(v("global.meshID", ""))
        or str(config.mesh.get("meshId") or "")
        or settings.mesh_id
        or trust_domain
    )
    env.append(_env("ISTIO_META_MESH_ID", mesh_id))
    env.append(_env("TRUST_DOMAIN", trust_domain))
    metadata_env = pc.get("proxyMetadata")
    if isinstance(metadata_env, Mapping):
        env.extend(_env(str(k), val) for k, val in metadata_env.items())
    if path_envs:  # the webhook path's values replace the template's (istiod's updateClusterEnvs)
        env = [e for e in env if e["name"] not in path_envs]
        env.extend(_env(k, path_envs[k]) for k in sorted(path_envs))
    cluster_domain = str(v("global.proxy.clusterDomain", "cluster.local"))
    proxy: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": _image(config, "global.proxy.image", annotations),
        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "args": [
            "proxy",
            "sidecar",
            "--domain",
            f"$(POD_NAMESPACE).svc.{cluster_domain}",
            "--proxyLogLevel="
            + _annotation(
                annotations, "sidecar.istio.io/logLevel", v("global.proxy.logLevel", "warning")
            ),
            "--proxyComponentLogLevel="
            + _annotation(
                annotations,
                "sidecar.istio.io/componentLogLevel",
                v("global.proxy.componentLogLevel", "misc:error"),
            ),
            f"--log_output_level={agent_log}",
            *(["--log_as_json"] if log_json else []),
        ],
        "env": env,
    }
    if pull_policy:
        proxy["imagePullPolicy"] = pull_policy
    hold = bool(pc.get("holdApplicationUntilProxyStarts")) or bool(
        v("global.proxy.holdApplicationUntilProxyStarts", False)
    )
    if hold:
        proxy["lifecycle"] = {"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}}
    if status_port != "0":
        if v("global.proxy.startupProbe.enabled", True):
            proxy["startupProbe"] = {
                "httpGet": {"path": "/healthz/ready", "port": 15021},
                "initialDelaySeconds": 0,
                "periodSeconds": 1,
                "timeoutSeconds": 3,
                "failureThreshold": int(v("global.proxy.startupProbe.failureThreshold", 600)),
            }
        proxy["readinessProbe"] = {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "initialDelaySeconds": int(
                _annotation(
                    annotations,
                    "readiness.status.sidecar.istio.io/initialDelaySeconds",
                    v("global.proxy.readinessInitialDelaySeconds", 0),
                )
            ),
            "periodSeconds": int(
                _annotation(
                    annotations,
                    "readiness.status.sidecar.istio.io/periodSeconds",
                    v("global.proxy.readinessPeriodSeconds", 15),
                )
            ),
            "timeoutSeconds": 3,
            "failureThreshold": int(
                _annotation(
                    annotations,
                    "readiness.status.sidecar.istio.io/failureThreshold",
                    v("global.proxy.readinessFailureThreshold", 4),
                )
            ),
        }
    proxy_security: dict[str, Any] = {
        "allowPrivilegeEscalation": privileged,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]} if tproxy else {"drop": ["ALL"]},
        "privileged": privileged,
        "readOnlyRootFilesystem": True,
    }
    if tproxy:
        proxy_security.update(runAsNonRoot=False, runAsUser=0, runAsGroup=1337)
    else:
        proxy_security.update(runAsNonRoot=True, runAsUser=1337, runAsGroup=1337)
    proxy["securityContext"] = proxy_security
    proxy["resources"] = resources
    istiod_certs = v("global.pilotCertProvider", "istiod") == "istiod"
    proxy["volumeMounts"] = [
        {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
        {"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"},
        {"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"},
        *(
            [
                {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
                {"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"},
            ]
            if istiod_certs
            else []
        ),
        {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
        {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
        {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
        {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "credential-socket", "emptyDir": {}},
        {"name": "workload-certs", "emptyDir": {}},
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
        {
            "name": "istio-podinfo",
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        },
        {
            "name": "istio-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "path": "istio-token",
                            "expirationSeconds": 43200,
                            "audience": str(v("global.sds.token.aud", "istio-ca")),
                        }
                    }
                ]
            },
        },
    ]
    if istiod_certs:
        volumes.append(
            {
                "name": "istiod-ca-cert",
                "configMap": {"name": str(v("global.trustBundleName", "") or "istio-ca-root-cert")},
            }
        )
        volumes.append(
            {"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": True}}
        )

    # -- merge into the pod: a user's istio-proxy container overrides ours field by field
    user_proxy = next((c for c in containers if c.get("name") == PROXY_CONTAINER), None)
    if user_proxy is not None:
        proxy = {**proxy, **user_proxy}
    others = [c for c in spec.get("containers") or () if c.get("name") != PROXY_CONTAINER]
    spec["containers"] = [proxy, *others] if hold else [*others, proxy]
    if init is not None:
        inits = [c for c in spec.get("initContainers") or () if c.get("name") != init["name"]]
        # istio-validation first (blocks the app until the CNI set up capture); istio-init
        # last, so other init containers' traffic is not captured.
        spec["initContainers"] = [init, *inits] if cni else [*inits, init]
    have = {vol.get("name") for vol in spec.get("volumes") or () if isinstance(vol, Mapping)}
    spec["volumes"] = [*(spec.get("volumes") or ()), *(x for x in volumes if x["name"] not in have)]
    pull_secrets = v("global.imagePullSecrets", []) or []
    if pull_secrets:
        have_secrets = {s.get("name") for s in spec.get("imagePullSecrets") or ()}
        spec["imagePullSecrets"] = [
            *(spec.get("imagePullSecrets") or ()),
            *({"name": str(s)} for s in pull_secrets if str(s) not in have_secrets),
        ]
    if path_envs.get("ISTIO_META_NETWORK"):
        labels[NETWORK_LABEL] = path_envs["ISTIO_META_NETWORK"]
    annotations[STATUS_ANNOTATION] = json.dumps(
        {
            "initContainers": [init["name"]] if init is not None else None,
            "containers": [PROXY_CONTAINER],
            "volumes": [x["name"] for x in volumes],
            "imagePullSecrets": [str(s) for s in pull_secrets] or None,
            "revision": revision,
        },
        separators=(",", ":"),
    )
    annotations.update(config.injected_annotations)
    return Injected(out, json_patch(original, out))


# -- JSONPatch (RFC 6902) ------------------------------------------------------------------


def _pointer(parts: Sequence[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def json_patch(old: Any, new: Any, at: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Operations that turn `old` into `new`: maps by key, equal-length lists by index,
    other lists (and values) replaced whole; appends to a list as `add .../-`."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for k in old:
            if k not in new:
                ops.append({"op": "remove", "path": _pointer((*at, k))})
        for k, value in new.items():
            if k not in old:
                ops.append({"op": "add", "path": _pointer((*at, k)), "value": value})
            else:
                ops.extend(json_patch(old[k], value, (*at, k)))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        if len(new) >= len(old) and new[: len(old)] == old:
            return [
                {"op": "add", "path": _pointer((*at, "-")), "value": x} for x in new[len(old) :]
            ]
        if len(old) == len(new):
            return [
                op
                for i, (a, b) in enumerate(zip(old, new, strict=True))
                for op in json_patch(a, b, (*at, i))
            ]
    return [{"op": "replace", "path": _pointer(at), "value": new}]
