"""DestinationRule: which rule applies to a host, and what it does to clusters.

(Interface stub: the DestinationRule work fills this in.)
"""

from __future__ import annotations

from google.protobuf.message import Message

from xdsd.model.types import Service
from xdsd.translate.context import ProxyContext


def route_hash_policy(
    ctx: ProxyContext, service: Service, port: int, subset: str = ""
) -> list[Message]:
    """RouteAction.HashPolicy entries for a consistentHash load balancer (none: [])."""
    return []
