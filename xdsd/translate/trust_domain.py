"""The mesh's trust domain and its aliases (MeshConfig trustDomain, trustDomainAliases).

istiod builds SPIFFE identities `spiffe://TD/ns/NS/sa/SA` in the trust domain of
its MeshConfig, and (pilot/pkg/security/trustdomain) rewrites the principals of
AuthorizationPolicies: a principal `TD/ns/NS/sa/SA` whose TD is the trust domain,
one of its aliases, or `cluster.local` (which stands for the local trust domain)
matches that identity in the trust domain and in every alias; `*` trust domains
and principals not of that shape are kept as written. Upstream SAN checks accept
each endpoint's identity in every domain of the bundle as well.

Here the trust domain is MeshConfig's where it sets one, else the one xdsd's CA
issues (`--trust-domain`); checks.py warns when the two differ.
"""

from __future__ import annotations

from xdsd.model.meshconfig import mesh_config
from xdsd.model.snapshot import MeshSnapshot

LOCAL = "cluster.local"  # in a principal: the local trust domain, whatever its name


def trust_domains(snapshot: MeshSnapshot) -> tuple[str, ...]:
    """The trust domain, then its aliases (istiod's trustdomain.Bundle)."""

    def build(s: MeshSnapshot) -> tuple[str, ...]:
        mesh = mesh_config(s)
        td = mesh.get("trustDomain")
        first = td if isinstance(td, str) and td else s.trust_domain
        aliases = mesh.get("trustDomainAliases") or []
        out = [first]
        if isinstance(aliases, list):
            out += [a for a in aliases if isinstance(a, str) and a and a not in out]
        return tuple(out)

    return snapshot.derived(f"{__name__}:bundle", build)


def principal_variants(principal: str, bundle: tuple[str, ...]) -> list[str]:
    """istiod ReplaceTrustDomainAliases for one principal."""
    if bundle == (LOCAL,):
        return [principal]
    parts = principal.split("/")
    if len(parts) != 5 or parts[0] == "*":
        return [principal]  # no trust domain enforced
    td = parts[0]
    if td != LOCAL and td not in bundle and not any(_suffix_match(t, td) for t in bundle):
        return [principal]  # another mesh's trust domain: kept as written
    out: list[str] = []
    for t in bundle:
        variant = principal if _suffix_match(t, td) else "/".join((t, *parts[1:]))
        if variant not in out:
            out.append(variant)
    return out


def _suffix_match(trust_domain: str, pattern: str) -> bool:
    # A principal's trust domain may be `*suffix`: it already covers the domains it matches.
    return pattern.startswith("*") and trust_domain.endswith(pattern[1:])


def identities(bundle: tuple[str, ...], namespace: str, service_account: str) -> list[str]:
    """The SPIFFE ids of a service account in each domain of the bundle."""
    return [f"spiffe://{t}/ns/{namespace}/sa/{service_account}" for t in bundle]
