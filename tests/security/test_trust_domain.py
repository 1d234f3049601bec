"""A mesh whose trust domain is not cluster.local, and trust domain aliases (Istio's
"trust domain migration" task: istio.io/latest/docs/tasks/security/authorization/
authz-td-migration).

xdsd's CA issues identities in `--trust-domain`; MeshConfig `trustDomain` names the
mesh's, and `trustDomainAliases` the domains it still accepts. An AuthorizationPolicy
principal written `cluster.local/ns/NS/sa/SA` means the local trust domain, whatever
its name, and matches in every alias too, as istiod rewrites it; a principal of a
foreign trust domain is kept as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from tests.meshgen import istio_config, pod, service
from tests.security.harness import Mesh, Reply, spiffe
from xdsd.model.build import build_snapshot
from xdsd.model.parse import parse_documents
from xdsd.model.proxy import parse_proxy
from xdsd.model.store import ConfigStore
from xdsd.translate.checks import config_problems
from xdsd.translate.trust_domain import principal_variants, trust_domains

TD = "example.org"


def mesh_configmap(mesh: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump(dict(mesh))},
    }


@pytest.mark.parametrize(
    "principal, expected",
    [
        # cluster.local stands for the local trust domain: every domain of the bundle.
        ("cluster.local/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
        ("td1/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
        ("td2/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
        ("other/ns/foo/sa/bar", ["other/ns/foo/sa/bar"]),  # a foreign domain: as written
        ("*/ns/foo/sa/bar", ["*/ns/foo/sa/bar"]),  # no domain enforced
        ("*td2/ns/foo/sa/bar", ["*td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
        ("foo/sa/bar", ["foo/sa/bar"]),  # not of the SPIFFE shape
    ],
)
def test_principal_variants_as_istiod(principal: str, expected: list[str]) -> None:
    assert principal_variants(principal, ("td2", "td1")) == expected


def snapshot_of(*docs: dict[str, Any], trust_domain: str = "cluster.local") -> Any:
    store = ConfigStore()
    store.apply_file("m.yaml", parse_documents(list(docs), "m.yaml"))
    return build_snapshot(store, generation=1, trust_domain=trust_domain)


def test_the_bundle_and_the_mismatch_warning() -> None:
    snap = snapshot_of(trust_domain=TD)
    assert trust_domains(snap) == (TD,)
    cm = mesh_configmap({"trustDomain": "td2", "trustDomainAliases": ["td1", "td2"]})
    snap = snapshot_of(cm, trust_domain="td2")
    assert trust_domains(snap) == ("td2", "td1")
    assert config_problems(snap) == []
    # The CA issues cluster.local identities while the mesh says td2: said, with the fix.
    (problem,) = config_problems(snapshot_of(cm))
    assert problem.path == "data.mesh.trustDomain" and "--trust-domain td2" in problem.message


def test_istio_mutual_sans_name_every_domain() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    from xdsd.translate._common import CLUSTER_TYPE
    from xdsd.translate.generate import generate_all

    docs = [
        mesh_configmap({"trustDomain": "td2", "trustDomainAliases": ["td1"]}),
        service("web", "shop", [("http", 80)], selector={"app": "web"}, cluster_ip="10.0.0.9"),
        pod("web-0", "shop", "10.1.0.9", {"app": "web"}, service_account="web"),
        istio_config(
            "DestinationRule",
            "web",
            "shop",
            {"host": "web", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
        ),
    ]
    snap = snapshot_of(*docs, trust_domain="td2")
    proxy = parse_proxy("sidecar~10.1.0.5~c-0.shop~shop.svc.cluster.local", {"NAMESPACE": "shop"})
    clusters = dict(generate_all(snap, proxy)[CLUSTER_TYPE])
    cl = clusters["outbound|80||web.shop.svc.cluster.local"]
    tls = tls_pb2.UpstreamTlsContext()
    cl.transport_socket.typed_config.Unpack(tls)
    validation = tls.common_tls_context.combined_validation_context.default_validation_context
    sans = [m.matcher.exact for m in validation.match_typed_subject_alt_names]
    assert sans == ["spiffe://td1/ns/shop/sa/web", "spiffe://td2/ns/shop/sa/web"]


# -- traffic ---------------------------------------------------------------------------------


def policy(principals: list[str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "httpbin", "namespace": "foo"},
            "spec": {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": principals}}]}],
            },
        }
    )


def allowed(r: Reply) -> bool:
    return r.status == 200 and r.backend == "httpbin"


async def test_policies_follow_the_mesh_trust_domain_and_its_aliases(tmp_path: Any) -> None:
    mesh = Mesh(tmp_path, trust_domain=TD)
    try:
        httpbin = await mesh.server("httpbin", "foo")
        sleep = await mesh.client("sleep", "foo")
        other = await mesh.client("sleep", "bar")
        mesh.apply("mesh.yaml", yaml.safe_dump(mesh_configmap({"trustDomain": TD})))
        await mesh.up()
        # The certificates carry the mesh's trust domain.
        assert await mesh.cert_uris(sleep) == [spiffe("foo", "sleep", TD)]

        # Written with cluster.local, the principal means this mesh's trust domain.
        mesh.apply("policy.yaml", policy(["cluster.local/ns/foo/sa/sleep"]))
        await mesh.synced()
        assert allowed(await mesh.request(sleep, httpbin, "/ip"))
        assert (await mesh.request(other, httpbin, "/ip")).status == 403

        # A foreign trust domain's principal matches nobody here...
        mesh.apply("policy.yaml", policy(["old.example/ns/foo/sa/sleep"]))
        await mesh.synced()
        assert (await mesh.request(sleep, httpbin, "/ip")).status == 403
        # ...until it is an alias of this one (a migration from old.example).
        aliased = {"trustDomain": TD, "trustDomainAliases": ["old.example"]}
        mesh.apply("mesh.yaml", yaml.safe_dump(mesh_configmap(aliased)))
        await mesh.synced()
        assert allowed(await mesh.request(sleep, httpbin, "/ip"))
        assert (await mesh.request(other, httpbin, "/ip")).status == 403
        await mesh.done()
    finally:
        await mesh.close()
