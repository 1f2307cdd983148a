"""The sandboxes this proxy serves, by source address: what its node-agent registered.

A connection is attributed to a sandbox by its source address alone; the node's firewall makes sure
no sandbox can send from another's address. Nothing registered at an address means no egress.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from hutch.core import errors
from hutch.egress_policy import Policy, PolicyError, parse_policy


@dataclass(frozen=True)
class SandboxEntry:
    sandbox_id: str
    tenant_id: str
    address: IPv4Address
    policy: Policy
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_id: str = ""


def entry(
    sandbox_id: str,
    tenant_id: str,
    address: str,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    passthrough: Iterable[str] = (),
    name: str = "",
    labels: Mapping[str, str] | None = None,
    node_id: str = "",
) -> SandboxEntry:
    """A checked registration; raises InvalidArgument for a bad address or policy."""
    if not sandbox_id or not tenant_id:
        raise errors.InvalidArgument("a registration names the sandbox and its tenant")
    try:
        ip = IPv4Address(address)
        policy = parse_policy(list(allow), list(deny), list(passthrough))
    except PolicyError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    except ValueError:
        raise errors.InvalidArgument(f"{address!r} is not an IPv4 address") from None
    return SandboxEntry(sandbox_id, tenant_id, ip, policy, name, dict(labels or {}), node_id)


class Registry:
    def __init__(self) -> None:
        # Changes at every start: a node-agent that sees a new epoch registers everything again.
        self.epoch = secrets.token_hex(8)
        self._by_id: dict[str, SandboxEntry] = {}
        self._by_address: dict[IPv4Address, SandboxEntry] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def lookup(self, address: str | IPv4Address) -> SandboxEntry | None:
        try:
            return self._by_address.get(IPv4Address(address))
        except ValueError:
            return None  # IPv6 or garbage: never a sandbox

    def entries(self) -> list[SandboxEntry]:
        return list(self._by_id.values())

    def get(self, sandbox_id: str) -> SandboxEntry | None:
        return self._by_id.get(sandbox_id)

    def register(self, new: SandboxEntry) -> None:
        self.unregister(new.sandbox_id)
        holder = self._by_address.get(new.address)
        if holder is not None:  # the address was handed on: the old sandbox is gone
            self._by_id.pop(holder.sandbox_id, None)
        self._by_id[new.sandbox_id] = new
        self._by_address[new.address] = new

    def unregister(self, sandbox_id: str) -> None:
        old = self._by_id.pop(sandbox_id, None)
        if old is not None and self._by_address.get(old.address) is old:
            del self._by_address[old.address]

    def sync(self, node_id: str, entries: Iterable[SandboxEntry]) -> None:
        """Replaces every registration of `node_id` with `entries`."""
        for stale in [e for e in self._by_id.values() if e.node_id == node_id]:
            self.unregister(stale.sandbox_id)
        for new in entries:
            self.register(new)
