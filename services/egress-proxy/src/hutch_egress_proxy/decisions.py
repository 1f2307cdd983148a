"""Whether a sandbox's connection or request may go out, and to which address. Pure logic.

The order of checks, for a request that names a host (HTTP Host, TLS SNI):

1. the policy, by name (deny entries first; a name no entry covers is refused before any lookup);
2. the proxy's own resolution of the name; addresses in the platform's deny set are dropped, and a
   name left with none is refused (so a name pointed at 127.0.0.1 or a metadata address, rebinding
   or not, reaches nothing);
3. the address the sandbox actually connected to must be one the proxy handed out for that name: a
   Host header or SNI naming an allowed host on a connection to some other address is forged. A
   connection to the sentinel address (what the DNS responder answers for names the sandbox may not
   reach) is not forged: it is sent to the proxy's own answer once the name is allowed;
4. the policy again with the chosen address (address deny entries apply to named hosts too).

A connection that names no host (raw TCP, an address in the Host header) is judged by its address
alone: the platform's deny set, then the policy's address entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from hutch.egress_policy import PolicyError, normalize_name, platform_refuses
from hutch.egress_policy.hosts import looks_like_address
from hutch.egress_policy.networks import NetworkPattern
from hutch.egress_policy.platform import Network
from hutch_egress_proxy.registry import SandboxEntry
from hutch_egress_proxy.resolver import Resolution

# The IANA "dummy" address (RFC 7600): never routed anywhere, so a connection to it can only ever
# come from a name the proxy's DNS refused; the node's firewall sends it to the proxy.
SENTINEL = IPv4Address("192.0.0.8")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    # Where to connect when allowed.
    target: IPv4Address | None = None

    @classmethod
    def refuse(cls, reason: str) -> Verdict:
        return cls(False, reason)


def refuse_destination(dst: IPv4Address, extra_deny: Sequence[Network]) -> str | None:
    """At accept time: a connection whose original destination no sandbox may reach."""
    if dst == SENTINEL:
        return None
    return platform_refuses(dst, extra_deny)


def host_of(authority: str) -> str:
    """The host part of a Host header or SNI ("[::1]:80" -> "::1", "a.example:8080" -> "a.example")."""
    text = authority.strip()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


def may_resolve(entry: SandboxEntry, name: str) -> bool:
    """Whether the DNS responder should look `name` up for this sandbox (on any port)."""
    policy = entry.policy
    if any(isinstance(rule, NetworkPattern) for rule in policy.allow):
        return True  # an address entry may cover whatever the name resolves to
    for rule in policy.deny:
        if not isinstance(rule, NetworkPattern) and rule.ports is None and rule.matches(name):
            return False
    return any(not isinstance(rule, NetworkPattern) and rule.matches(name) for rule in policy.allow)


def decide_address(
    entry: SandboxEntry, address: str | IPv4Address, port: int, extra_deny: Sequence[Network]
) -> Verdict:
    try:
        ip = ip_address(address)
    except ValueError:
        return Verdict.refuse(f"{address!r} is not an address")
    if not isinstance(ip, IPv4Address):
        return Verdict.refuse(f"{ip} is IPv6; sandboxes reach IPv4 only")
    refused = platform_refuses(ip, extra_deny)
    if refused:
        return Verdict.refuse(refused)
    decision = entry.policy.check_address(ip, port)
    return Verdict(decision.allowed, decision.reason, ip if decision.allowed else None)


def decide_named(
    entry: SandboxEntry,
    host: str,
    port: int,
    dst: IPv4Address,
    resolution: Resolution | None,
    handed_out: Callable[[str, IPv4Address], bool],
    extra_deny: Sequence[Network],
) -> Verdict:
    """A request for `host` on a connection the sandbox opened to `dst`:`port`.

    `resolution` is the proxy's answer for `host` (None: not looked up, because the policy refuses
    the name anyway; see `needs_resolution`).
    """
    try:
        name = normalize_name(host)
    except PolicyError as exc:
        return Verdict.refuse(f"the request's host is not valid: {exc}")
    if looks_like_address(name):
        if dst != SENTINEL and str(dst) != name:
            return Verdict.refuse(f"the request names {name} but was sent to {dst}")
        return decide_address(entry, name, port, extra_deny)
    by_name = entry.policy.check_host(name, port)
    if resolution is None:
        return Verdict.refuse(by_name.reason)
    if not resolution.addresses:
        return Verdict.refuse(f"{name} could not be resolved ({resolution.error or 'no address'})")
    usable = [a for a in resolution.addresses if not platform_refuses(a, extra_deny)]
    if not usable:
        shown = ", ".join(str(a) for a in resolution.addresses)
        return Verdict.refuse(f"{name} resolves only to addresses sandboxes may never reach ({shown})")
    if dst == SENTINEL:
        candidates = usable
    elif dst in usable or (handed_out(name, dst) and not platform_refuses(dst, extra_deny)):
        candidates = [dst]
    else:
        return Verdict.refuse(
            f"the request names {name}, but the connection went to {dst}, which is not an address of {name} "
            "(a forged Host header or SNI)"
        )
    last = by_name
    for candidate in candidates:
        decision = entry.policy.check_host(name, port, candidate)
        if decision.allowed:
            return Verdict(True, decision.reason, candidate)
        last = decision
    return Verdict.refuse(last.reason)


def needs_resolution(entry: SandboxEntry, host: str, port: int) -> bool:
    """Whether the answer can depend on the name's addresses (else decide_named refuses without one)."""
    try:
        name = normalize_name(host)
    except PolicyError:
        return False
    if looks_like_address(name):
        return False
    if entry.policy.check_host(name, port).allowed:
        return True
    return any(isinstance(rule, NetworkPattern) for rule in entry.policy.allow)
