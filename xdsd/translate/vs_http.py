"""VirtualService HTTP routing for sidecars and gateways.

(Interface stub: the VirtualService work fills this in.)
"""

from __future__ import annotations

from google.protobuf.message import Message

from xdsd.translate.context import ProxyContext


def gateway_virtual_hosts(
    ctx: ProxyContext,
    *,
    gateways: frozenset[str],
    server_hosts: tuple[str, ...],
    port: int,
) -> list[Message]:
    """VirtualHosts for a gateway server: the VirtualServices bound to any of `gateways`
    ("NAMESPACE/NAME") whose hosts match `server_hosts` ("NS/HOST" as in Gateway
    servers[].hosts), for traffic arriving on `port`. One VirtualHost per host."""
    return []
