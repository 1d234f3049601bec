"""Several control planes in one external cluster (issue 15): `--revision`.

Two xdsd instances with revisions blue and green read the same config cluster (the
Kubernetes API test server, through the real client). Istio config labelled
`istio.io/rev` for the other revision never reaches an instance: not its store, not
/debug/configz, not its proxies' config; unlabelled config is everybody's (istiod's
LabelsInRevision). Remote-cluster Secrets and root-cert namespaces follow the same rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kube.apiserver import KubeApiServer
from tests.kube_harness import kube_settings
from tests.meshgen import service
from tests.test_admin_cli import fetch
from xdsd.app import XdsdApp
from xdsd.demo import poll
from xdsd.model.parse import in_revision, parse_documents
from xdsd.model.proxy import parse_proxy
from xdsd.sources.kube.rootcert import namespace_in_revision
from xdsd.translate.generate import ROUTE_TYPE, generate_all

NS = "shop"


def vs(name: str, host: str, rev: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if rev is not None:
        meta["labels"] = {"istio.io/rev": rev}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {
            "hosts": [host],
            "http": [{"route": [{"destination": {"host": host}}], "timeout": f"{len(name)}s"}],
        },
    }


def test_labels_in_revision_as_istiod() -> None:
    assert in_revision({}, "blue") and in_revision({"istio.io/rev": "blue"}, "blue")
    assert not in_revision({"istio.io/rev": "green"}, "blue")
    assert in_revision({"istio.io/rev": "green"}, None)  # no revision: everything
    assert namespace_in_revision({"istio.io/rev": "blue"}, "blue")
    assert not namespace_in_revision({}, "blue")
    assert namespace_in_revision({"istio-injection": "enabled"}, "default")
    assert namespace_in_revision({}, None)
    # Kubernetes objects are never filtered by revision (pods carry the label too).
    pod = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "a", "namespace": NS, "labels": {"istio.io/rev": "green"}},
        "spec": {"ports": [{"port": 80}]},
    }
    assert len(parse_documents([pod], "x", revision="blue").objects) == 1


async def test_two_revisions_read_only_their_own_config(tmp_path: Path) -> None:
    async with KubeApiServer() as api:
        api.apply(service("reviews", NS, [("http", 9080)], cluster_ip="10.96.0.7"))
        api.apply(service("ratings", NS, [("http", 9080)], cluster_ip="10.96.0.8"))
        api.apply(vs("blue-reviews", "reviews", "blue"))
        api.apply(vs("green-reviews-x", "reviews", "green"))
        api.apply(vs("shared-ratings", "ratings", None))
        (tmp_path / "blue").mkdir()
        (tmp_path / "green").mkdir()
        blue_s = kube_settings(tmp_path / "blue", api, revision="blue")
        green_s = kube_settings(tmp_path / "green", api, revision="green")
        async with XdsdApp(blue_s) as blue, XdsdApp(green_s) as green:
            for app in (blue, green):
                await poll(_ready(app), timeout=15, what="synced")

            def names(app: XdsdApp) -> set[str]:
                return {o.name for o in app.snapshot.configs_of("VirtualService")}

            assert names(blue) == {"blue-reviews", "shared-ratings"}
            assert names(green) == {"green-reviews-x", "shared-ratings"}
            _, configz = await fetch(blue.admin_port, "/debug/configz")
            listed = {o["object"] for o in configz["objects"]}
            assert "VirtualService shop/blue-reviews" in listed
            assert not any("green" in o for o in listed)

            # The proxies of each revision: the route timeout tells whose VS they got.
            proxy = parse_proxy(
                f"sidecar~10.1.0.5~c-0.{NS}~{NS}.svc.cluster.local", {"NAMESPACE": NS}
            )

            def reviews_timeout(app: XdsdApp) -> float:
                for _, rc in generate_all(app.snapshot, proxy)[ROUTE_TYPE]:
                    for vh in rc.virtual_hosts:
                        if vh.name.startswith("reviews."):
                            return float(vh.routes[0].route.timeout.seconds)
                raise AssertionError("no reviews virtual host")

            assert reviews_timeout(blue) == len("blue-reviews")
            assert reviews_timeout(green) == len("green-reviews-x")

            # Relabelled to green: it leaves blue and joins green.
            api.apply(vs("shared-ratings", "ratings", "green"))

            async def moved() -> bool:
                return "shared-ratings" not in names(blue) and "shared-ratings" in names(green)

            await poll(moved, timeout=15, what="the relabelled VirtualService moving")


def _ready(app: XdsdApp) -> Any:
    async def check() -> bool:
        return app.ready.is_set()

    return check
