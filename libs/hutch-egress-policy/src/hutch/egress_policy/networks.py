"""Address rules of a policy: "198.18.0.0/24", "198.18.0.7", "[2001:db8::/32]:443", with ports."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from hutch.egress_policy.errors import PolicyError
from hutch.egress_policy.hosts import PortRange, parse_ports
from hutch.egress_policy.platform import Address, Network


@dataclass(frozen=True)
class NetworkPattern:
    network: Network
    ports: PortRange | None = None

    def matches(self, address: Address, port: int | None = None) -> bool:
        if self.ports is not None and port is not None and port not in self.ports:
            return False
        return address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        net = str(self.network)
        if self.network.num_addresses == 1:
            net = str(self.network.network_address)
        if self.ports is None:
            return net
        return f"[{net}]:{self.ports}" if self.network.version == 6 else f"{net}:{self.ports}"


def is_network_entry(entry: str) -> bool:
    """Whether an entry names addresses rather than hosts (decided by its first character)."""
    text = entry.strip()
    return text.startswith("[") or (bool(text) and (text[0].isdigit() and _all_v4(text))) or _bare_v6(text)


def _all_v4(text: str) -> bool:
    head = text.split(":", 1)[0].split("/", 1)[0]
    return all(part.isdigit() for part in head.split("."))


def _bare_v6(text: str) -> bool:
    return text.count(":") >= 2 and "[" not in text


def parse_network_pattern(entry: str) -> NetworkPattern:
    text = entry.strip()
    ports = None
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise PolicyError(f"{entry!r}: '[' without ']' (IPv6 with a port is written [2001:db8::/32]:443)")
        rest = text[closing + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise PolicyError(f"{entry!r}: only ':PORT' may follow ']'")
            ports = parse_ports(rest[1:], entry)
        text = text[1:closing]
    elif not _bare_v6(text) and ":" in text:
        text, _, port_text = text.partition(":")
        ports = parse_ports(port_text, entry)
    try:
        network = ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ip_network(text, strict=False)
            raise PolicyError(f"{entry!r} has host bits set: did you mean {loose}?") from None
        try:
            ip_address(text.split("/", 1)[0])
        except ValueError:
            raise PolicyError(f"{entry!r} is not an address or a CIDR such as 198.18.0.0/24") from None
        raise PolicyError(f"{entry!r} is not a valid CIDR: {exc}") from None
    return NetworkPattern(network, ports)
