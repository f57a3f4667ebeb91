"""client.allow_cidrs: which peers may connect at all, decided once per connection at accept.

An empty list allows everyone (no cost). IPv4 clients of a dual-stack listener arrive as
IPv4-mapped IPv6 addresses (::ffff:10.1.2.3) and are matched as the IPv4 address they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address


def peer_allowed(peer: object, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    """Is the transport's peername inside one of `networks`? Not an IP peer (a unix socket,
    unknown): allowed only when no list is set."""
    if not networks:
        return True
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ip_address(str(peer[0]).split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address in network for network in networks)
