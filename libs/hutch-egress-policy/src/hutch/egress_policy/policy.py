"""A sandbox's network policy: default deny, allow and deny lists, pass-through hosts.

    policy = parse_policy(allow=["api.github.com", "*.pypi.org:443", "198.18.0.0/24"], deny=["evil.pypi.org"])
    policy.check_host("files.pypi.org", 443, address)   -> Decision(allowed=True, ...)

Deny entries win over allow entries. A host rule matches names only (never an address given
directly); an address rule matches the address a connection goes to, named or not. The platform's
own deny set (`platform.py`) is checked apart from the policy and before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hutch.egress_policy.errors import PolicyError
from hutch.egress_policy.hosts import HostPattern, normalize_name, parse_host_pattern
from hutch.egress_policy.networks import NetworkPattern, is_network_entry, parse_network_pattern
from hutch.egress_policy.platform import Address

MAX_ENTRIES = 256
MAX_ENTRY_LENGTH = 300

Rule = HostPattern | NetworkPattern


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Why, in words a person can act on; names the rule that decided.
    reason: str


@dataclass(frozen=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    passthrough: tuple[HostPattern, ...] = ()
    # The policy as given, normalized (what is stored and shown).
    entries: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def is_empty(self) -> bool:
        return not self.allow

    def check_host(self, host: str, port: int, address: Address | None = None) -> Decision:
        """A request to `host` (a name) on `port`, going to `address` when known."""
        name = normalize_name(host)
        for rule in self.deny:
            if _matches(rule, name, port, address):
                return Decision(False, f"{name}:{port} is denied by the sandbox's network policy ('{rule}')")
        for rule in self.allow:
            if _matches(rule, name, port, address):
                return Decision(True, f"allowed by '{rule}'")
        return Decision(False, f"{name}:{port} is not in the sandbox's network policy (default deny)")

    def check_address(self, address: Address, port: int) -> Decision:
        """A connection to an address with no host name (raw TCP, or an address in the Host header)."""
        for rule in self.deny:
            if isinstance(rule, NetworkPattern) and rule.matches(address, port):
                return Decision(False, f"{address}:{port} is denied by the sandbox's network policy ('{rule}')")
        for rule in self.allow:
            if isinstance(rule, NetworkPattern) and rule.matches(address, port):
                return Decision(True, f"allowed by '{rule}'")
        return Decision(False, f"{address}:{port} is not in the sandbox's network policy (addresses need a CIDR entry)")

    def is_passthrough(self, host: str, port: int) -> bool:
        name = normalize_name(host)
        return any(rule.matches(name, port) for rule in self.passthrough)

    def to_lists(self) -> dict[str, list[str]]:
        return {key: list(self.entries.get(key, ())) for key in ("allow", "deny", "passthrough")}


def _matches(rule: Rule, name: str, port: int, address: Address | None) -> bool:
    if isinstance(rule, HostPattern):
        return rule.matches(name, port)
    return address is not None and rule.matches(address, port)


def parse_rule(entry: str) -> Rule:
    if not isinstance(entry, str):
        raise PolicyError(f"a policy entry must be a string (got {type(entry).__name__})")
    if not entry.strip():
        raise PolicyError("a policy entry is empty")
    if len(entry) > MAX_ENTRY_LENGTH:
        raise PolicyError(f"policy entry {entry[:40]!r}... is longer than {MAX_ENTRY_LENGTH} characters")
    return parse_network_pattern(entry) if is_network_entry(entry) else parse_host_pattern(entry)


def _parse_list(kind: str, entries: Iterable[str]) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    given = list(entries)
    if len(given) > MAX_ENTRIES:
        raise PolicyError(f"{kind} holds {len(given)} entries; at most {MAX_ENTRIES} are allowed")
    rules: list[Rule] = []
    texts: list[str] = []
    for entry in given:
        try:
            rule = parse_rule(entry)
        except PolicyError as exc:
            raise PolicyError(f"network {kind}: {exc}") from None
        if str(rule) not in texts:
            rules.append(rule)
            texts.append(str(rule))
    return tuple(rules), tuple(texts)


def parse_policy(allow: Sequence[str] = (), deny: Sequence[str] = (), passthrough: Sequence[str] = ()) -> Policy:
    """Checks and normalizes a policy; raises PolicyError naming the first bad entry."""
    allow_rules, allow_texts = _parse_list("allow", allow)
    deny_rules, deny_texts = _parse_list("deny", deny)
    pass_rules, pass_texts = _parse_list("passthrough", passthrough)
    pass_hosts: list[HostPattern] = []
    for rule in pass_rules:
        if not isinstance(rule, HostPattern):
            raise PolicyError(f"network passthrough: '{rule}' is an address; pass-through entries are host names")
        pass_hosts.append(rule)
    return Policy(
        allow_rules,
        deny_rules,
        tuple(pass_hosts),
        {"allow": allow_texts, "deny": deny_texts, "passthrough": pass_texts},
    )
