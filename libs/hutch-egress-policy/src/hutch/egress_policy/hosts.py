"""Host names and host patterns ("api.example.com", "*.example.com", "*"), with optional ports.

Pure: shared by the gateway (validation), the secrets-broker (grant hosts) and the egress-proxy
(matching). Names are compared in lowercase without a trailing dot; only ASCII names are accepted
(internationalised names go in their `xn--` form), so two spellings of one host never diverge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hutch.egress_policy.errors import PolicyError

MAX_NAME = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
ANY_HOST = "*"


def normalize_name(name: str) -> str:
    """A host name in its one comparable form; raises PolicyError when it is not a host name."""
    value = name.strip().lower().rstrip(".")
    if not value:
        raise PolicyError("a host name is empty")
    if len(value) > MAX_NAME:
        raise PolicyError(f"host name {name!r} is longer than {MAX_NAME} characters")
    for label in value.split("."):
        if not _LABEL.match(label):
            raise PolicyError(
                f"host name {name!r} is not valid: each dot-separated part needs 1-63 letters, digits, "
                "'-' or '_' (not starting or ending with '-')"
            )
    return value


def looks_like_address(value: str) -> bool:
    """True for an IPv4 or IPv6 literal (which a host pattern never matches)."""
    return ":" in value or bool(re.fullmatch(r"[0-9.]+", value))


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def parse_ports(text: str, entry: str) -> PortRange:
    match = _PORTS.match(text)
    if not match:
        raise PolicyError(f"{entry!r}: {text!r} is not a port or a range of ports such as 443 or 8000-8100")
    low = int(match[1])
    high = int(match[2]) if match[2] else low
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise PolicyError(f"{entry!r}: port {port} is out of range (1-65535)")
    if low > high:
        raise PolicyError(f"{entry!r}: the range {low}-{high} is empty")
    return PortRange(low, high)


@dataclass(frozen=True)
class HostPattern:
    """One host, every host below a domain (`*.example.com`), or any host (`*`), on some ports."""

    # "" for any host; the domain after "*." for a wildcard; else the host itself.
    name: str
    wildcard: bool
    ports: PortRange | None = None

    def matches(self, host: str, port: int | None = None) -> bool:
        """Whether `host` (already normalized) on `port` is covered; None: any port will do."""
        if self.ports is not None and port is not None and port not in self.ports:
            return False
        if looks_like_address(host):
            return False
        if self.wildcard:
            return not self.name or host.endswith("." + self.name)
        return host == self.name

    def __str__(self) -> str:
        host = ANY_HOST if self.wildcard and not self.name else (f"*.{self.name}" if self.wildcard else self.name)
        return host if self.ports is None else f"{host}:{self.ports}"


def parse_host_pattern(entry: str) -> HostPattern:
    """ "api.example.com", "*.example.com", "*", each optionally followed by ":PORT" or ":LOW-HIGH"."""
    text = entry.strip()
    ports = None
    if ":" in text:
        text, _, port_text = text.rpartition(":")
        ports = parse_ports(port_text, entry)
    if text == ANY_HOST:
        return HostPattern("", True, ports)
    if text.startswith("*."):
        rest = text[2:]
        if not rest or "*" in rest:
            raise PolicyError(f"{entry!r}: a wildcard needs a domain after '*.' (such as *.example.com)")
        return HostPattern(normalize_name(rest), True, ports)
    if "*" in text:
        raise PolicyError(f"{entry!r}: '*' may only stand alone or as the first label ('*.example.com')")
    if not text:
        raise PolicyError(f"{entry!r}: the host is empty")
    name = normalize_name(text)
    if looks_like_address(name):
        raise PolicyError(f"{entry!r} is an address, not a host name")
    return HostPattern(name, False, ports)
