"""What a sandbox may reach, and what it sent where.

A sandbox reaches nothing unless its policy allows it (default deny):

    sandbox = Sandbox.create(network={"allow": ["api.github.com", "*.pypi.org", "198.18.0.0/24:5432"]})
    sandbox.update_network(allow=["api.github.com"], deny=["uploads.github.com"])
    for row in sandbox.egress().destinations:
        print(row.destination, row.bytes_out, row.bytes_in)

Entries: "host", "*.domain" (any host below it), "host:443" or "host:8000-8100" (ports), "*" (any
host name), and addresses: "198.18.0.7", "198.18.0.0/24", with ":PORT" after them. Deny entries win;
`passthrough` names hosts whose TLS is relayed untouched (certificate pinning; no credentials can
be injected there). No policy reaches loopback, private, link-local or metadata addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from hutch._connection import Connection
from hutch.v1 import network_pb2, network_pb2_grpc

if TYPE_CHECKING:
    from hutch.v1.network_pb2_grpc import NetworkAsyncStub


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network policy, as the gateway normalized and stored it."""

    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, message: network_pb2.NetworkPolicy) -> NetworkPolicy:
        return cls(list(message.allow), list(message.deny), list(message.passthrough))


# What `create(network=...)` and `update_network` take: a NetworkPolicy, or a mapping with any of
# "allow", "deny" and "passthrough".
NetworkSpec: TypeAlias = NetworkPolicy | Mapping[str, Iterable[str]]


def policy_message(spec: NetworkSpec | None) -> network_pb2.NetworkPolicy:
    if spec is None:
        return network_pb2.NetworkPolicy()
    if isinstance(spec, NetworkPolicy):
        return network_pb2.NetworkPolicy(allow=spec.allow, deny=spec.deny, passthrough=spec.passthrough)
    unknown = set(spec) - {"allow", "deny", "passthrough"}
    if unknown:
        raise ValueError(f"a network policy has 'allow', 'deny' and 'passthrough'; not {', '.join(sorted(unknown))}")
    for key in ("allow", "deny", "passthrough"):
        if isinstance(spec.get(key), str):
            raise ValueError(f"network {key} is a list of entries, not a string")
    return network_pb2.NetworkPolicy(
        allow=list(spec.get("allow", ())),
        deny=list(spec.get("deny", ())),
        passthrough=list(spec.get("passthrough", ())),
    )


@dataclass(frozen=True)
class EgressDestination:
    """What a sandbox sent to one destination ("host:port", or "address:port" for raw TCP)."""

    destination: str
    bytes_out: int
    bytes_in: int
    requests: int
    refused: int
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True)
class EgressReport:
    """Bytes out and in per destination since the sandbox started (as of the proxy's last report,
    which comes every few seconds)."""

    sandbox_id: str
    destinations: list[EgressDestination]
    bytes_out: int
    bytes_in: int

    @classmethod
    def from_proto(cls, message: network_pb2.EgressReport) -> EgressReport:
        return cls(
            sandbox_id=message.sandbox_id,
            destinations=[
                EgressDestination(
                    destination=d.destination,
                    bytes_out=d.bytes_out,
                    bytes_in=d.bytes_in,
                    requests=d.requests,
                    refused=d.refused,
                    first_seen=d.first_seen.ToDatetime() if d.HasField("first_seen") else None,
                    last_seen=d.last_seen.ToDatetime() if d.HasField("last_seen") else None,
                )
                for d in message.destinations
            ],
            bytes_out=message.bytes_out,
            bytes_in=message.bytes_in,
        )


def _stub(connection: Connection) -> NetworkAsyncStub:
    return network_pb2_grpc.NetworkStub(connection._open().channel)


def merged(
    network: NetworkSpec | None,
    allow: Iterable[str] | None,
    deny: Iterable[str] | None,
    passthrough: Iterable[str] | None,
) -> network_pb2.NetworkPolicy:
    """The policy an update names: `network`, or the keyword lists (not both)."""
    keywords = {
        k: list(v) for k, v in (("allow", allow), ("deny", deny), ("passthrough", passthrough)) if v is not None
    }
    if network is not None and keywords:
        raise ValueError("pass a network policy or allow/deny/passthrough lists, not both")
    return policy_message(network if network is not None else keywords)


async def update_network(connection: Connection, sandbox: str, policy: network_pb2.NetworkPolicy) -> NetworkPolicy:
    message = await connection.unary(
        f"update the network of sandbox {sandbox}",
        _stub(connection).Update,
        network_pb2.UpdateNetworkRequest(sandbox=sandbox, network=policy),
    )
    return NetworkPolicy.from_proto(message)


async def get_network(connection: Connection, sandbox: str) -> NetworkPolicy:
    message = await connection.unary(
        f"get the network of sandbox {sandbox}", _stub(connection).Get, network_pb2.GetNetworkRequest(sandbox=sandbox)
    )
    return NetworkPolicy.from_proto(message)


async def egress(connection: Connection, sandbox: str) -> EgressReport:
    message = await connection.unary(
        f"get the egress of sandbox {sandbox}",
        _stub(connection).GetEgress,
        network_pb2.GetEgressRequest(sandbox=sandbox),
    )
    return EgressReport.from_proto(message)
