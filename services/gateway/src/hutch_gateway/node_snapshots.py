"""The gateway's snapshot calls to node-agents: take a snapshot of a sandbox, drop a node's copy."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Literal

import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc
from hutch.core.nodes import NodeDirectory, NodeInfo
from hutch.internal.v1 import node_agent_pb2
from hutch.internal.v1 import snapshot_store_pb2 as store_pb2
from hutch_gateway.dataplane import NodeChannels

log = logging.getLogger(__name__)

Purpose = Literal["user", "pause", "fork"]

_PURPOSES: dict[Purpose, store_pb2.SnapshotPurpose.ValueType] = {
    "user": store_pb2.SNAPSHOT_PURPOSE_USER,
    "pause": store_pb2.SNAPSHOT_PURPOSE_PAUSE,
    "fork": store_pb2.SNAPSHOT_PURPOSE_FORK,
}
# Dropping a copy is housekeeping: a node that does not answer soon is skipped.
_DROP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TakenSnapshot:
    snapshot_id: str
    # Holds memory and processes (gVisor) rather than only the filesystem.
    memory: bool
    # The snapshot-store holds it already (else the node is still uploading it).
    stored: bool
    logical_bytes: int


@dataclass(frozen=True)
class SnapshotRequest:
    purpose: Purpose
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # Release the sandbox on its node once captured (a pause).
    stop: bool = False
    # Answer once the store holds it, not as soon as the node's own copy exists.
    wait_stored: bool = False
    # A sleep: only if the sandbox has stayed idle since its node reported it (else FailedPrecondition).
    only_if_idle: bool = False


class NodeSnapshotCalls:
    def __init__(self, channels: NodeChannels, nodes: NodeDirectory, timeout_s: float) -> None:
        self._channels = channels
        self._nodes = nodes
        self._timeout_s = timeout_s

    async def take(self, node: NodeInfo, sandbox_id: str, request: SnapshotRequest) -> TakenSnapshot:
        message = node_agent_pb2.SnapshotSandboxRequest(
            sandbox=sandbox_id,
            name=request.name,
            purpose=_PURPOSES[request.purpose],
            stop=request.stop,
            wait_stored=request.wait_stored,
            labels=request.labels,
            only_if_idle=request.only_if_idle,
        )
        try:
            response = await self._channels.stub(node.address).Snapshot(
                message, metadata=self._channels.metadata(), timeout=self._timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {node.node_id}") from exc
        return TakenSnapshot(
            snapshot_id=response.snapshot_id,
            memory=response.kind == store_pb2.SNAPSHOT_KIND_MEMORY,
            stored=response.stored,
            logical_bytes=response.logical_bytes,
        )

    async def drop_everywhere(self, snapshot_id: str) -> None:
        """Asks every live node to forget its copy; a node that fails is only logged."""
        await asyncio.gather(*(self._drop(node, snapshot_id) for node in self._nodes.alive()))

    async def _drop(self, node: NodeInfo, snapshot_id: str) -> None:
        try:
            await self._channels.stub(node.address).DropSnapshot(
                node_agent_pb2.DropSnapshotRequest(snapshot_id=snapshot_id),
                metadata=self._channels.metadata(),
                timeout=_DROP_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, f"node {node.node_id}")
            if not isinstance(error, errors.NotFound):
                log.warning("node %s did not drop snapshot %s: %s", node.node_id, snapshot_id, error.message)
