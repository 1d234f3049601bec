"""Kind -> typed parser. One line per kind, so modules can be added independently."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xdsd.model.fields import Issues
from xdsd.model.istio import (
    authorizationpolicy,
    destinationrule,
    gateway,
    peerauthentication,
    requestauthentication,
    sidecar,
    virtualservice,
)
from xdsd.model.types import ObjectRef

TypedParser = Callable[[Issues, Mapping[str, Any], str, ObjectRef], object | None]

PARSERS: dict[str, TypedParser] = {
    "AuthorizationPolicy": authorizationpolicy.parse,
    "PeerAuthentication": peerauthentication.parse,
    "RequestAuthentication": requestauthentication.parse,
    "DestinationRule": destinationrule.parse,
    "Gateway": gateway.parse,
    "Sidecar": sidecar.parse,
    "VirtualService": virtualservice.parse,
}
