"""The region's nodes: what each offers, holds and has free (the fleet view).

    from hutch import Nodes

    for node in Nodes.list():
        print(node.id, node.cpu_free, node.memory_mb_free, node.sandboxes)

Every tenant sees the same capacity figures; `own_sandbox_ids` names only your own sandboxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hutch._config import resolve
from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch.v1 import nodes_pb2, nodes_pb2_grpc

if TYPE_CHECKING:
    from hutch.v1.nodes_pb2_grpc import NodesAsyncStub

__all__ = ["AsyncNodes", "NodeInfo", "Nodes"]


@dataclass(frozen=True)
class NodeInfo:
    """One node of the region.

    Attributes:
        id: The node's id.
        region: The region it serves.
        cpu_total: vCPUs it offers (overcommit included).
        cpu_allocated: vCPUs its sandboxes hold.
        cpu_free: vCPUs still free.
        memory_mb_total: Memory it offers, in MiB.
        memory_mb_allocated: Memory its sandboxes hold, in MiB.
        memory_mb_free: Memory still free, in MiB.
        sandboxes: How many sandboxes it runs, of every tenant.
        own_sandbox_ids: Your sandboxes running on it.
        isolation_classes: The classes it runs, e.g. ["container", "gvisor"].
        last_heartbeat: When it last reported.
        alive: Its last report is recent enough for it to get new sandboxes.
    """

    id: str
    region: str
    cpu_total: float
    cpu_allocated: float
    cpu_free: float
    memory_mb_total: int
    memory_mb_allocated: int
    memory_mb_free: int
    sandboxes: int
    own_sandbox_ids: list[str] = field(default_factory=list)
    isolation_classes: list[str] = field(default_factory=list)
    last_heartbeat: datetime | None = None
    alive: bool = True

    @classmethod
    def from_proto(cls, message: nodes_pb2.Node) -> NodeInfo:
        return cls(
            id=message.id,
            region=message.region,
            cpu_total=message.cpu_millis_total / 1000,
            cpu_allocated=message.cpu_millis_allocated / 1000,
            cpu_free=message.cpu_millis_free / 1000,
            memory_mb_total=message.memory_mb_total,
            memory_mb_allocated=message.memory_mb_allocated,
            memory_mb_free=message.memory_mb_free,
            sandboxes=message.sandboxes,
            own_sandbox_ids=list(message.own_sandbox_ids),
            isolation_classes=list(message.isolation_classes),
            last_heartbeat=message.last_heartbeat.ToDatetime(tzinfo=UTC)
            if message.HasField("last_heartbeat")
            else None,
            alive=message.alive,
        )


class _NodesConnection(Connection):
    @property
    def nodes(self) -> NodesAsyncStub:
        """The Nodes service; opens the channel if needed (call from inside the event loop)."""
        return nodes_pb2_grpc.NodesStub(self._open().channel)

    async def __aenter__(self) -> _NodesConnection:
        return self


class AsyncNodes:
    """The fleet view (coroutines; `Nodes` is the blocking mirror)."""

    @staticmethod
    async def list(
        *, include_unreachable: bool = False, api_key: str | None = None, endpoint: str | None = None
    ) -> list[NodeInfo]:
        """The region's nodes with their capacity, allocation and free room, by id.

        Args:
            include_unreachable: Also nodes that have stopped reporting (they get no new sandboxes).
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.

        Raises:
            HutchError: The gateway could not be asked; the subclass says why.
        """
        request = nodes_pb2.ListNodesRequest(include_unreachable=include_unreachable)
        async with _NodesConnection(resolve(api_key, endpoint, None)) as connection:
            response = await connection.unary("list nodes", connection.nodes.List, request)
        return [NodeInfo.from_proto(message) for message in response.nodes]


class Nodes:
    """The fleet view (blocking; see `AsyncNodes`)."""

    @staticmethod
    def list(
        *, include_unreachable: bool = False, api_key: str | None = None, endpoint: str | None = None
    ) -> list[NodeInfo]:
        """The region's nodes with their capacity, allocation and free room, by id."""
        return PORTAL.run(AsyncNodes.list(include_unreachable=include_unreachable, api_key=api_key, endpoint=endpoint))
