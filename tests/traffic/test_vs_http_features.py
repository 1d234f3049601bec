"""VirtualService HTTP features beyond the tasks' examples, shown by their effect on
traffic: uri regex/prefix/exact, method and query parameter matches, uri rewrite,
redirect, request and response header manipulation."""

from __future__ import annotations

from tests.traffic.harness import Traffic, fqdn

NS = "bookinfo"


async def test_matches_rewrite_redirect_and_headers(traffic: Traffic) -> None:
    """The other HTTP match kinds and actions of a VirtualService, by their effect."""
    port = traffic.port()
    page = (await traffic.workloads("productpage", NS, port))["v1"]
    reviews = (await traffic.workloads("reviews", NS, port))["v1"]
    traffic.istio("vs.yaml", "VirtualService", "productpage", NS, {
        "hosts": ["productpage"],
        "http": [
            {   # regex on the path, to another service
                "match": [{"uri": {"regex": "/reviews/[0-9]+"}}],
                "route": [{"destination": {"host": "reviews"}}],
            },
            {   # prefix + method, rewritten, with a response header
                "match": [{"uri": {"prefix": "/api/v1/"}, "method": {"exact": "GET"}}],
                "rewrite": {"uri": "/v1/"},
                "route": [{"destination": {"host": "productpage"}}],
                "headers": {"response": {"add": {"x-route": "api"}}},
            },
            {   # query parameter: tag the request
                "match": [{"queryParams": {"debug": {"exact": "1"}}}],
                "route": [{
                    "destination": {"host": "productpage"},
                    "headers": {"request": {"set": {"x-debug": "on"}}},
                }],
            },
            {"match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new"}},
            {   # everything else, without the client's secret header
                "route": [{"destination": {"host": "productpage"}}],
                "headers": {"request": {"remove": ["x-secret"]}},
            },
        ],
    })  # fmt: skip
    await traffic.sidecar(NS)
    host = fqdn("productpage", NS)

    r = await traffic.get(port, host, "/reviews/42")
    assert (r.status, r.backend) == (200, "reviews-v1")
    assert reviews.requests[-1].path == "/reviews/42"
    assert (await traffic.get(port, host, "/reviews/abc")).backend == "productpage-v1"

    r = await traffic.get(port, host, "/api/v1/products?id=1")
    assert (r.status, r.backend, r.headers.get("x-route")) == (200, "productpage-v1", "api")
    assert page.requests[-1].path == "/v1/products?id=1"

    r = await traffic.get(port, host, "/page?debug=1")
    assert r.backend == "productpage-v1"
    assert page.requests[-1].headers.get("x-debug") == "on"
    await traffic.get(port, host, "/page?debug=0")
    assert "x-debug" not in page.requests[-1].headers

    r = await traffic.get(port, host, "/old", allow_redirects=False)
    assert r.status == 301
    assert r.headers["location"].endswith("/new"), r.headers
    assert page.requests[-1].path != "/old"

    await traffic.get(port, host, "/other", headers={"x-secret": "s3cr3t", "x-kept": "1"})
    seen = page.requests[-1]
    assert seen.path == "/other"
    assert "x-secret" not in {k.lower() for k in seen.headers}
    assert seen.headers.get("x-kept") == "1"
    await traffic.no_rejections()
