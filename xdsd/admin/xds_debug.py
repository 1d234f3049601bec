"""`istio.io/debug` over xDS (`istioctl x internal-debug NAME --xds-address`).

istiod answers a request of type `istio.io/debug` for the one resource name `NAME`
(`syncz`, `config_dump?proxyID=POD.NS`, ...) with the body of its HTTP
`/debug/NAME`, as one resource whose Any has that type and the raw body as value.
xdsd does the same with its admin API's listings, so the answer is what
`/debug/NAME` shows. As istiod: `list` names the listings, an unknown name gets Go's
`404 page not found` (istioctl then asks for `list`), and a caller authenticated
outside the root namespace may only ask for `config_dump` of its own namespace's
proxies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from xdsd.admin.http import DebugView

DEBUG_TYPE = "istio.io/debug"
LISTINGS = ("syncz", "adsz", "configz", "registryz", "clusterz", "push_status")
# What istiod serves callers of other namespaces (its ndsz and edsz xdsd has not).
_NAMESPACED = frozenset({"config_dump"})
NOT_FOUND = b"404 page not found\n"


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def debug_body(
    view: DebugView,
    resource: str,
    *,
    restricted: bool,
    visible: Callable[[str], bool],
) -> bytes:
    """The body istiod would put in the answer for `resource`. `restricted`: the caller
    is outside the root namespace; `visible(proxy_id)`: it may see that proxy."""
    url = urlsplit(resource)
    name = url.path.strip("/")
    if name == "list":
        return _json([*LISTINGS, "config_dump"])
    if name not in (*LISTINGS, "config_dump"):
        return NOT_FOUND
    if restricted and name not in _NAMESPACED:
        return _json({"error": f"the debug info {name!r} is not available for this identity"})
    if name == "config_dump":
        proxy_id = (parse_qs(url.query).get("proxyID") or [""])[0]
        if not proxy_id:
            return _json({"error": "You must provide a proxyID in the query string"})
        dump = view.config_dump(proxy_id) if visible(proxy_id) else None
        if dump is None:
            return _json({"error": f"proxy {proxy_id!r} is not connected"})
        return _json(dump)
    listing: Callable[[], Any] = getattr(view, name)
    return _json(listing())
