"""The address table of the destination policy: what is not public.

Pure standard library (`ipaddress`), so that `DestinationPolicy` costs
nothing to import; the network backends that apply it live in
`offloader._netguard`.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

__all__ = [
    "NON_PUBLIC_NETWORKS",
    "IPAddress",
    "IPNetwork",
    "embedded_ipv4",
    "is_non_public",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Networks that are not the public internet, from the IANA special-purpose
#: registries (RFC 6890 and its updates). Spelled out rather than taken
#: from `ipaddress`'s ``is_global``, whose answers changed between Python
#: 3.10 and 3.13: the policy must mean the same on every version.
NON_PUBLIC_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 included
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata at 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (Oracle metadata too)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, 255.255.255.255 included
        "::/96",  # unspecified, loopback, IPv4-compatible
        # IPv4-mapped, NAT64 and 6to4 addresses are judged by the IPv4
        # address they carry: see embedded_ipv4.
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local, deprecated
        "ff00::/8",  # multicast
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries, if it carries one.

    IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``) and
    6to4 (``2002:AABB:CCDD::``) addresses reach an IPv4 host; they are
    judged by that host's address.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_non_public(address: IPAddress) -> bool:
    """Tell whether *address* is outside the public internet.

    An IPv6 address that carries an IPv4 address is non-public when
    either of the two is.
    """
    inner = embedded_ipv4(address)
    if inner is not None and is_non_public(inner):
        return True
    return any(
        address.version == network.version and address in network
        for network in NON_PUBLIC_NETWORKS
    )
