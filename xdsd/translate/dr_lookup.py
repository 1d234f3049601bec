"""Which DestinationRule applies to a host for a proxy, as istiod decides.

istiod facts (pilot/pkg/model/push_context.go setDestinationRules/destinationRule,
destination_rule.go mergeDestinationRule, sidecar.go SidecarScope.DestinationRule,
config.go MostSpecificHostMatch/ResolveShortnameToFQDN):
- rules are ordered with workloadSelector rules first, then by creation time (we
  have none: name, then namespace, as istiod's tie-break);
- a rule is indexed "namespace local" (visible to proxies of its own namespace)
  unless its exportTo excludes that namespace, and "exported" unless it is
  private (exportTo "." or its own namespace only); private root-namespace rules
  are kept apart; rules with a workloadSelector are private;
- rules for the same host in one index are merged when their exportTo sets are
  equal and both have no selector (or equal selectors): subsets are appended
  (a duplicate subset name keeps the first), the first non-empty trafficPolicy wins;
- lookup: the proxy's namespace (the root namespace's private rules when the
  proxy lives in the root namespace), then rules exported by the service's
  namespace, then rules exported by the root namespace, each time the most
  specific host (exact, else the longest matching wildcard) wins;
- among the candidates, a rule in the proxy's namespace whose workloadSelector
  matches the proxy's labels wins; otherwise the (last) rule without selector.

This module only needs the snapshot, so the context can plan subset clusters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from xdsd.model.istio.destinationrule import DestinationRule, Subset
from xdsd.model.snapshot import MeshSnapshot
from xdsd.model.types import ConfigObject, Service


@dataclass(frozen=True)
class AppliedRule:
    """A (possibly merged) DestinationRule for one host."""

    rule: DestinationRule
    host: str  # resolved FQDN / wildcard
    namespace: str  # of the first rule
    name: str  # of the first rule
    sources: tuple[tuple[str, str], ...]  # (namespace, name) of every merged rule
    export_to: frozenset[str] = frozenset()
    selector: Mapping[str, str] | None = None
    # What merging left out of the later rules, for status output: (namespace, name,
    # field path) of a duplicate subset or of a second top-level trafficPolicy.
    dropped: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    def subset(self, name: str) -> Subset | None:
        for s in self.rule.subsets:
            if s.name == name:
                return s
        return None


@dataclass
class _Hosts:
    specific: dict[str, list[AppliedRule]] = field(default_factory=dict)
    wildcard: dict[str, list[AppliedRule]] = field(default_factory=dict)


@dataclass
class _Index:
    local: dict[str, _Hosts] = field(default_factory=dict)
    exported: dict[str, _Hosts] = field(default_factory=dict)
    root_local: _Hosts = field(default_factory=_Hosts)


def resolve_host(host: str, namespace: str, domain_suffix: str) -> str:
    """istiod ResolveShortnameToFQDN: "reviews" in ns "default" -> reviews.default.svc.DOMAIN."""
    if host == "*" or "." in host:
        return host
    try:
        import ipaddress

        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    return f"{host}.{namespace}.svc.{domain_suffix}"


def _merge(hosts: _Hosts, new: AppliedRule) -> None:
    table = hosts.wildcard if new.host.startswith("*") else hosts.specific
    existing = table.get(new.host)
    if existing is None:
        table[new.host] = [new]
        return
    append = True
    for i, cur in enumerate(existing):
        if new.export_to == cur.export_to:
            append = False
        elif cur.export_to and new.export_to >= cur.export_to:
            append = True
        else:
            append = True
            continue
        both_without = new.selector is None and cur.selector is None
        both_with = new.selector is not None and cur.selector is not None
        if both_with and dict(new.selector or {}) != dict(cur.selector or {}):
            append = True
            continue
        if both_without or both_with:
            append = False
        names = {s.name for s in cur.rule.subsets}
        subsets = list(cur.rule.subsets)
        dropped = list(cur.dropped)
        for i_sub, s in enumerate(new.rule.subsets):
            if s.name in names:
                dropped.append((new.namespace, new.name, f"spec.subsets[{i_sub}]"))
            else:
                subsets.append(s)
                names.add(s.name)
        policy = cur.rule.traffic_policy
        if policy is None:
            policy = new.rule.traffic_policy
        elif new.rule.traffic_policy is not None:  # istiod: the first rule's policy wins
            dropped.append((new.namespace, new.name, "spec.trafficPolicy"))
        existing[i] = replace(
            cur,
            rule=replace(cur.rule, subsets=tuple(subsets), traffic_policy=policy),
            sources=(*cur.sources, (new.namespace, new.name)),
            dropped=tuple(dropped),
        )
    if append:
        existing.append(new)


def _build(snapshot: MeshSnapshot) -> _Index:
    configs: list[tuple[ConfigObject, DestinationRule]] = [
        (c, c.typed)
        for c in snapshot.configs_of("DestinationRule")
        if isinstance(c.typed, DestinationRule)
    ]
    # istiod sortConfigBySelectorAndCreationTime: rules with a selector first, then oldest.
    configs.sort(
        key=lambda p: (p[1].workload_selector is None, p[0].created, p[0].name, p[0].namespace)
    )
    index = _Index()
    root = snapshot.root_namespace
    for cfg, dr in configs:
        ns = cfg.namespace
        host = resolve_host(dr.host, ns, snapshot.domain_suffix)
        export = frozenset({"."}) if dr.workload_selector is not None else frozenset(dr.export_to)
        applied = AppliedRule(
            rule=dr,
            host=host,
            namespace=ns,
            name=cfg.name,
            sources=((ns, cfg.name),),
            export_to=export,
            selector=dr.workload_selector,
        )
        if not export or "*" in export or "." in export or ns in export:
            _merge(index.local.setdefault(ns, _Hosts()), applied)
        # The mesh default exportTo for DestinationRules is "*".
        private = len(export) == 1 and ("." in export or ns in export)
        if not private:
            _merge(index.exported.setdefault(ns, _Hosts()), applied)
        elif ns == root:
            _merge(index.root_local, applied)
    return index


def _more_specific(a: str, b: str) -> bool:
    """istiod host.MoreSpecific for two wildcards: the longer one, then lexical order."""
    if len(a) != len(b):
        return len(a) > len(b)
    return a < b


def _most_specific(host: str, hosts: _Hosts | None) -> list[AppliedRule] | None:
    if hosts is None:
        return None
    if host.startswith("*"):
        if host in hosts.wildcard:
            return hosts.wildcard[host]
        needle = host[1:]
    else:
        if host in hosts.specific:
            return hosts.specific[host]
        needle = host
    best: str | None = None
    for h in hosts.wildcard:
        if needle.endswith(h[1:]) and (best is None or _more_specific(h, best)):
            best = h
    return None if best is None else hosts.wildcard[best]


def _exported(index: _Index, owner: str, host: str, client: str) -> list[AppliedRule]:
    found = _most_specific(host, index.exported.get(owner))
    if not found:
        return []
    return [r for r in found if not r.export_to or "*" in r.export_to or client in r.export_to]


def candidates(snapshot: MeshSnapshot, namespace: str, service: Service) -> list[AppliedRule]:
    """istiod PushContext.destinationRule: the rules that may apply to `service`."""
    index = snapshot.derived(__name__, _build)
    root = snapshot.root_namespace
    if namespace != root:
        found = _most_specific(service.hostname, index.local.get(namespace))
    else:
        found = _most_specific(service.hostname, index.root_local)
    if found:
        return found
    if service.namespace:
        out = _exported(index, service.namespace, service.hostname, namespace)
        if out:
            return out
    return _exported(index, root, service.hostname, namespace)


def rule_for(
    snapshot: MeshSnapshot, namespace: str, labels: Mapping[str, str], service: Service
) -> AppliedRule | None:
    """istiod SidecarScope.DestinationRule (outbound): a matching selector rule, else the catch-all."""
    catch_all: AppliedRule | None = None
    for r in candidates(snapshot, namespace, service):
        if r.selector is None:
            catch_all = r
        elif r.namespace == namespace and all(labels.get(k) == v for k, v in r.selector.items()):
            return r
    return catch_all


def has_rules(snapshot: MeshSnapshot) -> bool:
    return bool(snapshot.configs_of("DestinationRule"))


def all_rules(snapshot: MeshSnapshot) -> list[AppliedRule]:
    """Every (merged) rule of the index, each once (for reporting what merging dropped)."""
    index = snapshot.derived(__name__, _build)
    out: dict[int, AppliedRule] = {}
    for hosts in (*index.local.values(), *index.exported.values(), index.root_local):
        for table in (hosts.specific, hosts.wildcard):
            for rules in table.values():
                for r in rules:
                    out.setdefault(id(r), r)
    return list(out.values())
