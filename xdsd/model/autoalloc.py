"""IP auto-allocation for ServiceEntry hosts without addresses (istiod's ipallocate).

A TCP ServiceEntry without addresses cannot get a listener of its own: every such
entry on a port shares the one `0.0.0.0_PORT` listener and only one of them is
reachable. istiod gives each host an address from the reserved 240.240.0.0/16 (and
2001:2::/48) ranges; a proxy whose agent captures DNS resolves the host to it and
gets a listener on it. istiod writes the addresses into the ServiceEntry's
`status.addresses`; xdsd reads them back where they exist (so a mesh moving from
istiod keeps what its apps resolved) and otherwise allocates them itself.

The allocation is a function of the ServiceEntries alone, so every xdsd replica
and every restart gives the same answer: each host hashes (CRC-32 of
`namespace/host`) to a slot and probes forward past taken ones, oldest entry
first, so a new entry never moves the address of an older one.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping

from xdsd.model.objects import ServiceEntryConfig

# 254 usable last octets (1-254) in each of 256 third octets of 240.240.0.0/16.
SLOTS = 256 * 254
V4_PREFIX = ipaddress.IPv4Network("240.240.0.0/16")
V6_PREFIX = ipaddress.IPv6Network("2001:2::/48")

HostKey = tuple[str, str]  # (namespace, host)


def slot_addresses(slot: int) -> tuple[str, str]:
    """The IPv4 and IPv6 address of a slot: 240.240.T.F and 2001:2::f0f0:T:F."""
    third, fourth = divmod(slot, 254)
    fourth += 1
    v4 = V4_PREFIX.network_address + (third << 8) + fourth
    v6 = V6_PREFIX.network_address + (0xF0F0 << 32) + (third << 16) + fourth
    return str(v4), str(v6)


def _slot_of(address: str) -> int | None:
    """The slot an address of ours occupies, or None if it is outside both ranges."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        if ip not in V4_PREFIX:
            return None
        third, fourth = divmod(int(ip) - int(V4_PREFIX.network_address), 256)
    else:
        if ip not in V6_PREFIX:
            return None
        rest = int(ip) - int(V6_PREFIX.network_address) - (0xF0F0 << 32)
        third, fourth = divmod(rest, 1 << 16)
    if not (0 <= third < 256 and 1 <= fourth <= 254):
        return None
    return third * 254 + fourth - 1


def eligible_hosts(entry: ServiceEntryConfig) -> list[str]:
    """The hosts of an entry that get an address: not wildcards (their names are not
    known, so no DNS answer could carry the address)."""
    if not entry.auto_allocate:
        return []
    return [s.hostname for s in entry.services if not s.hostname.startswith("*")]


def allocate(
    entries: Iterable[ServiceEntryConfig], taken: Iterable[str] = ()
) -> Mapping[HostKey, tuple[str, ...]]:
    """(namespace, host) -> its allocated addresses, for every eligible host.

    `taken`: addresses already in use elsewhere (ServiceEntry addresses, ClusterIPs),
    never handed out. Addresses from status.addresses are kept as written.
    """
    used: set[int] = set()
    for a in taken:
        try:
            slot = _slot_of(a)
        except ValueError:
            continue  # a CIDR or a name: cannot collide with one address of ours
        if slot is not None:
            used.add(slot)
    out: dict[HostKey, tuple[str, ...]] = {}
    pending: list[tuple[str, str, str, str]] = []
    for entry in entries:
        written = dict(entry.allocated)
        for host in eligible_hosts(entry):
            key = (entry.ref.namespace, host)
            if key in out:
                continue  # one host in two entries of a namespace: the build keeps one
            mine = written.get(host, ())
            if mine:
                out[key] = mine
                for a in mine:
                    slot = _slot_of(a)
                    if slot is not None:
                        used.add(slot)
            else:
                pending.append((entry.created, entry.ref.namespace, entry.ref.name, host))
    for _created, namespace, _name, host in sorted(pending):
        key = (namespace, host)
        if key in out:
            continue
        if len(used) >= SLOTS:
            break  # out of addresses: the rest stay without, as istiod's allocator
        slot = zlib.crc32(f"{namespace}/{host}".encode()) % SLOTS
        while slot in used:
            slot = (slot + 1) % SLOTS
        used.add(slot)
        out[key] = slot_addresses(slot)
    return out
