"""Addresses no sandbox may reach, whatever its policy says.

Loopback, private (RFC 1918 and IPv6 unique-local), link-local (where cloud metadata services
live: 169.254.169.254, fd00:ec2::254), carrier-grade NAT (RFC 6598, where sandbox networks and some
clouds' metadata services live), "this network", multicast and reserved space. The egress-proxy adds
the node's own addresses; the node's firewall refuses the IPv4 part before a packet reaches the
proxy. 198.18.0.0/15 (benchmark networks) is deliberately not in the set: it is routable in
practice and the test suites' fake internet lives there.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

PLATFORM_DENY_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
PLATFORM_DENY_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(n) for n in ("::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "2001:db8::/32")
)
PLATFORM_DENY: tuple[Network, ...] = (*PLATFORM_DENY_V4, *PLATFORM_DENY_V6)


def embedded_ipv4(address: Address) -> IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, -compatible or NAT64 IPv6 address."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in IPv6Network("64:ff9b::/96"):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def platform_refuses(address: str | Address, extra: Iterable[Network] = ()) -> str | None:
    """Why `address` is off limits for every sandbox, or None when a policy may allow it."""
    found = ip_address(address) if isinstance(address, str) else address
    candidates: list[Address] = [found]
    inner = embedded_ipv4(found)
    if inner is not None:
        candidates.append(inner)
    for candidate in candidates:
        for network in (*PLATFORM_DENY, *extra):
            if candidate.version == network.version and candidate in network:
                return f"{found} lies in {network}, which sandboxes may never reach"
    return None


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Operator-given CIDRs (settings), strict about host bits."""
    return tuple(ip_network(value.strip(), strict=True) for value in values)
