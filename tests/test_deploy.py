"""deploy/ and the Dockerfile: every kustomize base renders offline and is valid.

- `kubectl kustomize deploy/<base>` renders each base (no cluster needed);
- the Kubernetes objects validate against the Kubernetes JSON schemas shipped
  in the `kubernetes-validate` package (strict: unknown fields are errors);
- the Istio objects (deploy/ingress) validate against the OpenAPI schemas of
  Istio's CRDs in ../shared/corpus/istio/crd-all.gen.yaml (when present) and
  parse without errors with xdsd's own parser;
- the pieces fit together: Service ports, probes, volumes and the flags given
  to `xdsd serve`, RBAC against the kinds xdsd watches, the ingress routes
  against the Service; the Dockerfile runs a real CLI command as non-root.

Skips (with the reason) when kubectl or kubernetes-validate is not installed.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BASES = ("control-plane", "config-cluster", "ingress", "webhooks")
ISTIO_CRDS = REPO.parent / "shared" / "corpus" / "istio" / "crd-all.gen.yaml"
# Oldest Kubernetes the manifests claim (HPA autoscaling/v2 and PDB policy/v1 are GA since
# 1.23 and 1.21); kubernetes-validate picks its newest schemas not newer than this.
KUBERNETES_VERSIONS = ("1.30.0", "1.32.0")
ISTIO_GROUPS = frozenset({"networking.istio.io", "security.istio.io"})
NAMESPACE = "external-istiod"

# `xdsd serve` flags the Deployment may use before they exist in xdsd/cli.py (none now).
PENDING_SERVE_FLAGS: frozenset[str] = frozenset()

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found (Debian: apt-get install kubernetes-client)"
)


@functools.cache
def _render(base: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / base)],
        capture_output=True,
        text=True,
        timeout=120,
        # Offline: kustomize reads only the folder; no kubeconfig or cluster is involved.
        env={**os.environ, "KUBECONFIG": os.devnull},
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize deploy/{base} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d is not None)
    assert docs, f"deploy/{base} rendered nothing"
    return docs


def render(base: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(base)))


def group_of(doc: dict[str, Any]) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def where(doc: dict[str, Any]) -> str:
    return f"{doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


# -- rendering and schemas ----------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_base_renders_offline(base: str) -> None:
    docs = render(base)
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"duplicate objects in deploy/{base}: {keys}"
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    for doc in docs:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], where(doc)
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, where(doc)


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("base", BASES)
def test_kubernetes_objects_match_schemas(base: str, version: str) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install '.[test]')"
    )
    problems = []
    checked = 0
    for doc in render(base):
        if group_of(doc) in ISTIO_GROUPS:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{where(doc)}: {e.message} at {'/'.join(map(str, e.path))}")
        except kv.SchemaNotFoundError:
            problems.append(f"{where(doc)}: no schema for {doc['apiVersion']} in {version}")
        checked += 1
    assert not problems, "\n".join(problems)
    if base != "ingress":
        assert checked, f"deploy/{base} has no Kubernetes objects"


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> the CRD's versions by name."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with ISTIO_CRDS.open() as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            out[(spec["group"], spec["names"]["kind"])] = {v["name"]: v for v in spec["versions"]}
    return out


def _structural(schema: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, with Kubernetes' field validation.

    The API server rejects unknown fields (kubectl's default --validate=strict), so an
    object with `properties` and no `additionalProperties` or
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`;
    `nullable` becomes a null type. CEL rules (x-kubernetes-validations) are not checked.
    """
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def istio_docs() -> Iterator[dict[str, Any]]:
    for base in BASES:
        for doc in render(base):
            if group_of(doc) in ISTIO_GROUPS:
                yield doc


@needs_kubectl
@pytest.mark.skipif(not ISTIO_CRDS.is_file(), reason=f"{ISTIO_CRDS} not present")
def test_istio_objects_match_crd_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    crds = _crd_schemas()
    problems = []
    docs = list(istio_docs())
    assert {d["kind"] for d in docs} >= {"Gateway", "VirtualService", "DestinationRule"}
    for doc in docs:
        group, version = doc["apiVersion"].split("/")
        versions = crds.get((group, doc["kind"]))
        if versions is None or version not in versions or not versions[version].get("served"):
            problems.append(f"{where(doc)}: {doc['apiVersion']} is not served by Istio's CRDs")
            continue
        spec_schema = versions[version]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        validator = jsonschema.Draft7Validator(_structural(spec_schema))
        for err in validator.iter_errors(doc["spec"]):
            path = "/".join(map(str, err.absolute_path))
            problems.append(f"{where(doc)}: spec/{path}: {err.message}")
    assert not problems, "\n".join(problems)


@needs_kubectl
def test_istio_objects_parse_with_xdsd() -> None:
    from xdsd.model.parse import parse_documents

    docs = list(istio_docs())
    result = parse_documents(docs, "deploy/ingress")
    assert not result.errors, "\n".join(map(str, result.errors))
    assert len(result.objects) == len(docs)


def test_crd_schema_check_catches_mistakes() -> None:
    """The structural conversion turns a misspelled field or a wrong type into an error."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    schema = _structural(
        {
            "type": "object",
            "properties": {
                "tls": {"type": "object", "properties": {"mode": {"type": "string"}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    v = jsonschema.Draft7Validator(schema)
    assert not list(v.iter_errors({"tls": {"mode": "SIMPLE"}, "free": {"x": 1}, "maybe": None}))
    assert list(v.iter_errors({"tls": {"mdoe": "SIMPLE"}}))
    assert list(v.iter_errors({"tls": {"mode": 1}}))


# -- the control-plane cluster ------------------------------------------------------------------


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    container: dict[str, Any] = pod["containers"][0]
    return container


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        name, _, value = arg.partition("=")
        out[name] = value
    return out


@needs_kubectl
def test_deployment_is_locked_down() -> None:
    docs = render("control-plane")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert set(c["resources"]["limits"]) >= {"memory"}
    # Replicas spread over nodes.
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" for t in terms)
    for t in terms:
        assert t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


@needs_kubectl
def test_probes_use_the_admin_port() -> None:
    docs = render("control-plane")
    c = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin_port = int(_flags(c["args"])["--admin-port"])
    assert ports["http-monitoring"] == admin_port == 15014
    assert _flags(c["args"])["--admin-host"] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = c[probe]["httpGet"]["port"]
        assert ports.get(port, port) == admin_port, probe


@needs_kubectl
def test_service_ports_as_istiod() -> None:
    docs = render("control-plane")
    service = one(docs, "Service")
    deployment = one(docs, "Deployment")
    c = _container(docs)
    container_ports = {p["containerPort"] for p in c["ports"]} | {p["name"] for p in c["ports"]}
    mapping = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert mapping == {15010: 15010, 15012: 15012, 443: 15017, 15014: 15014}
    assert all(target in container_ports for target in mapping.values())
    # The plaintext port is not turned on; xDS (TLS) listens on 15012.
    flags = _flags(c["args"])
    assert "--plaintext-port" not in flags
    assert flags["--xds-port"] == "15012"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]


@needs_kubectl
def test_secrets_mounted_where_the_flags_point() -> None:
    docs = render("control-plane")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = _container(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    kubeconfig = volumes["istio-kubeconfig"]["secret"]
    assert kubeconfig["secretName"] == "istio-kubeconfig"
    assert [i["key"] for i in kubeconfig["items"]] == ["config"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"istio-kubeconfig", "xdsd-tls", "cacerts"}
    flags = _flags(c["args"])
    files = {f: Path(v) for f, v in flags.items() if f.endswith(("-file", "kubeconfig"))}
    assert set(files) >= {"--kubeconfig", "--tls-cert-file", "--tls-key-file", "--ca-cert-file"}
    for flag, path in files.items():
        volume = mounts.get(str(path.parent))
        assert volume is not None, f"{flag}={path}: no volume mounted at {path.parent}"
        items = volumes[volume].get("secret", {}).get("items")
        if items is not None:
            assert path.name in {i["path"] for i in items}, f"{flag}={path}"
    for m in c["volumeMounts"]:
        assert m.get("readOnly") or "emptyDir" in volumes[m["name"]], m
    # $(VAR) references in args are defined in the container's env.
    env = {e["name"] for e in c["env"]}
    for arg in c["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, arg


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _entrypoint() -> list[str]:
    entrypoints = [rest for word, rest in _dockerfile() if word == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    argv = json.loads(entrypoints[0])  # exec form: signals reach xdsd, not a shell
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


@needs_kubectl
def test_deployment_args_are_xdsd_serve_flags() -> None:
    """Image entrypoint + Deployment args make an `xdsd serve` command line that parses."""
    from xdsd.cli import _parser

    c = _container(render("control-plane"))
    assert "command" not in c, "the image's entrypoint (xdsd serve) is used"
    argv = [*_entrypoint()[1:], *c["args"]]
    assert argv[0] == "serve"
    args, unknown = _parser().parse_known_args(argv)
    assert args.command == "serve"
    unknown_flags = {u.partition("=")[0] for u in unknown}
    assert unknown_flags <= PENDING_SERVE_FLAGS, f"not flags of xdsd serve: {unknown_flags}"
    assert args.kubeconfig == Path("/var/run/secrets/remote/config")
    assert args.own_namespace == "$(POD_NAMESPACE)"
    assert args.log_format == "json"


def test_dockerfile_runs_xdsd_serve_as_non_root() -> None:
    from xdsd.cli import _parser

    instructions = _dockerfile()
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    # The last USER of the final stage: numeric and not root.
    final = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    users = [rest for word, rest in instructions[final:] if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert any(word == "RUN" and "pip install ." in rest for word, rest in instructions)
    # The entrypoint is the console script of this package and a real subcommand.
    argv = _entrypoint()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts
    assert _parser().parse_args([*argv[1:], "--config-dir", "x"]).command == argv[1] == "serve"
    # What the build copies exists and is not excluded from the build context.
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore is an allowlist"
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/" in ignore, src


# -- the config cluster -------------------------------------------------------------------------


@needs_kubectl
def test_config_cluster_rbac_reads_what_xdsd_watches() -> None:
    from xdsd.sources.kube.client import CORE_TYPES, ISTIO_KINDS

    docs = render("config-cluster")
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    token = one(docs, "Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    token_for = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert token_for == sa["metadata"]["name"]

    def allowed(group: str, resource: str, verb: str, name: str | None = None) -> bool:
        return any(
            group in r["apiGroups"]
            and (resource in r["resources"] or "*" in r["resources"])
            and verb in r["verbs"]
            and (not r.get("resourceNames") or name in r["resourceNames"])
            for r in role["rules"]
        )

    # Every kind the Kubernetes sources list and watch.
    for rtype in CORE_TYPES.values():
        for verb in ("get", "list", "watch"):
            assert allowed(rtype.group, rtype.plural, verb), (rtype.plural, verb)
    for group in ISTIO_KINDS:
        for verb in ("list", "watch"):
            assert allowed(group, "virtualservices", verb), (group, verb)
    assert allowed("authentication.k8s.io", "tokenreviews", "create")
    assert allowed("", "configmaps", "create")
    for verb in ("update", "patch"):
        assert allowed("", "configmaps", verb, "istio-ca-root-cert")
        assert not allowed("", "configmaps", verb, "istio")
    # Nothing else may be written.
    writes = {"create", "update", "patch", "delete", "deletecollection", "*"}
    for rule in role["rules"]:
        written = writes & set(rule["verbs"])
        if not written:
            continue
        targets = {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
        assert targets in ({("authentication.k8s.io", "tokenreviews")}, {("", "configmaps")}), rule
        if written - {"create"}:
            assert rule.get("resourceNames") == ["istio-ca-root-cert"], rule
        assert "*" not in rule["verbs"] and "delete" not in rule["verbs"], rule


# -- exposure through the ingress gateway -------------------------------------------------------


@needs_kubectl
def test_ingress_routes_to_the_xdsd_service_as_istio_documents() -> None:
    docs = render("ingress")
    service = one(render("control-plane"), "Service")
    service_host = (
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    )
    service_ports = {p["port"] for p in service["spec"]["ports"]}

    gateway = one(docs, "Gateway")
    servers = {s["port"]["number"]: s for s in gateway["spec"]["servers"]}
    assert set(servers) == {15012, 15017}
    hosts = set()
    for server in servers.values():
        assert server["tls"]["mode"] == "SIMPLE"
        assert server["tls"]["credentialName"]
        assert server["port"]["protocol"].upper() == "HTTPS"
        hosts |= set(server["hosts"])
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}

    vs = one(docs, "VirtualService")
    assert set(vs["spec"]["hosts"]) == hosts
    assert vs["spec"]["gateways"] == [gateway["metadata"]["name"]]
    routes = {}
    for http in vs["spec"]["http"]:
        (match,) = http["match"]
        (dest,) = http["route"]
        routes[match["port"]] = (dest["destination"]["host"], dest["destination"]["port"]["number"])
    assert routes == {15012: (service_host, 15012), 15017: (service_host, 443)}
    assert {port for _, port in routes.values()} <= service_ports

    dr = one(docs, "DestinationRule")
    assert dr["spec"]["host"] == service_host
    settings = {s["port"]["number"]: s for s in dr["spec"]["trafficPolicy"]["portLevelSettings"]}
    assert set(settings) == {15012, 443}
    assert all(s["tls"]["mode"] == "SIMPLE" for s in settings.values())
    assert settings[15012]["connectionPool"]["http"]["h2UpgradePolicy"] == "UPGRADE"


# -- the webhooks a cluster's API server calls ----------------------------------------------------


@needs_kubectl
def test_webhooks_reach_xdsd_through_the_gateway_as_istio_configures_them() -> None:
    from urllib.parse import urlsplit

    from xdsd.webhooks.admission import ISTIO_GROUPS
    from xdsd.webhooks.inject import parse_inject_path

    docs = render("webhooks")
    gateway = one(render("ingress"), "Gateway")
    hosts = {
        h for s in gateway["spec"]["servers"] if s["port"]["number"] == 15017 for h in s["hosts"]
    }
    mutating = one(docs, "MutatingWebhookConfiguration")
    assert mutating["metadata"]["name"] == "istio-sidecar-injector"
    names = [w["name"] for w in mutating["webhooks"]]
    assert names == [
        f"{p}sidecar-injector.istio.io"
        for p in ("rev.namespace.", "rev.object.", "namespace.", "object.")
    ]
    for hook in mutating["webhooks"]:
        url = urlsplit(hook["clientConfig"]["url"])
        assert (url.scheme, url.hostname, url.port) == ("https", *sorted(hosts), 15017)
        assert parse_inject_path(url.path) == {
            "ISTIO_META_CLUSTER_ID": "cluster1",
            "ISTIO_META_NETWORK": "network1",
        }
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
            }
        ]
        assert hook["failurePolicy"] == "Fail" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
    # A pod that opts out never reaches xdsd; disabled namespaces neither.
    selectors = {
        w["name"].split(".")[0] + "." + w["name"].split(".")[1]: w for w in mutating["webhooks"]
    }
    ns = selectors["namespace.sidecar-injector"]["namespaceSelector"]["matchExpressions"]
    assert ns == [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]
    for hook in mutating["webhooks"]:
        exprs = hook["objectSelector"]["matchExpressions"]
        inject = next(e for e in exprs if e["key"] == "sidecar.istio.io/inject")
        assert inject in (
            {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]},
            {"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]},
        )
    validating = one(docs, "ValidatingWebhookConfiguration")
    (hook,) = validating["webhooks"]
    url = urlsplit(hook["clientConfig"]["url"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "https",
        *sorted(hosts),
        15017,
        "/validate",
    )
    (rule,) = hook["rules"]
    assert set(rule["apiGroups"]) == ISTIO_GROUPS
    assert rule["operations"] == ["CREATE", "UPDATE"] and rule["resources"] == ["*"]
    # The Deployment serves them: the port, and the address injected proxies are given.
    c = _container(render("control-plane"))
    flags = _flags(c["args"])
    assert flags["--webhook-port"] == "15017"
    assert flags["--webhook-discovery-address"] == "$(EXTERNAL_ISTIOD_ADDR):15012"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EXTERNAL_ISTIOD_ADDR"] in hosts


# -- the overlays docs/deploy.md shows ----------------------------------------------------------


def _kubectl_minor() -> int:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    try:
        return int(re.sub(r"\D.*", "", json.loads(out)["clientVersion"]["minor"]) or 0)
    except (ValueError, KeyError):
        return 0


@needs_kubectl
def test_docs_overlays_render(tmp_path: Path) -> None:
    if _kubectl_minor() < 21:
        pytest.skip("the documented overlays need kubectl >= 1.21 (kustomize v4)")
    text = (REPO / "docs" / "deploy.md").read_text()
    overlays = re.findall(r"```yaml\n(# overlays/([\w-]+)/kustomization\.yaml\n.*?)```", text, re.S)
    assert {name for _, name in overlays} == {
        "prod",
        "ingress",
        "blue",
        "ingress-revisions",
        "webhooks",
    }
    (tmp_path / "deploy").symlink_to(DEPLOY)
    rendered = {}
    for body, name in overlays:
        folder = tmp_path / "overlays" / name
        folder.mkdir(parents=True)
        (folder / "kustomization.yaml").write_text(body)
        assert KUBECTL is not None
        proc = subprocess.run(
            [KUBECTL, "kustomize", str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "KUBECONFIG": os.devnull},
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        rendered[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    c = _container(rendered["prod"])
    assert c["image"] == "REGISTRY/xdsd:0.1.0"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CLUSTER_ID"] == "cluster1"
    assert env["EXTERNAL_ISTIOD_ADDR"] == "xdsd.mesh.example.org"
    # The webhooks: every URL names the gateway's host; injection names cluster and network.
    urls = {w["clientConfig"]["url"] for d in rendered["webhooks"] for w in d["webhooks"]}
    assert urls == {
        "https://xdsd.mesh.example.org:15017/inject/cluster/cluster1/net/network1",
        "https://xdsd.mesh.example.org:15017/validate",
    }
    hosts = {
        h
        for d in rendered["ingress"]
        for h in (
            d["spec"].get("hosts", [])
            + [h for s in d["spec"].get("servers", []) for h in s["hosts"]]
        )
    }
    assert hosts == {"xdsd.mesh.example.org"}
    # Several control planes: blue's objects are its own, its pods run --revision=blue
    # and its Service selects only them; the gateway routes blue's host to it.
    blue = rendered["blue"]
    assert not [d for d in blue if d["kind"] == "Namespace"]
    assert {d["metadata"]["name"] for d in blue} == {"xdsd-blue"}
    assert "--revision=blue" in _container(blue)["args"]
    (svc,) = [d for d in blue if d["kind"] == "Service"]
    assert svc["spec"]["selector"] == {"app": "xdsd", "istio.io/rev": "blue"}
    (dep,) = [d for d in blue if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["metadata"]["labels"]["istio.io/rev"] == "blue"
    (vs,) = [d for d in rendered["ingress-revisions"] if d["kind"] == "VirtualService"]
    assert vs["spec"]["hosts"] == ["blue.xdsd.example.org"]
    assert {r["route"][0]["destination"]["host"] for r in vs["spec"]["http"]} == {
        "xdsd-blue.external-istiod.svc.cluster.local"
    }
