"""The node-agent's snapshot calls: capture a running sandbox (or pause it), drop a local copy."""

from __future__ import annotations

import re

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2
from hutch.internal.v1 import snapshot_store_pb2 as store_pb2
from hutch_node_agent.snapshots import NodeSnapshots, Purpose

_PURPOSES: dict[int, Purpose] = {
    store_pb2.SNAPSHOT_PURPOSE_UNSPECIFIED: "user",
    store_pb2.SNAPSHOT_PURPOSE_USER: "user",
    store_pb2.SNAPSHOT_PURPOSE_PAUSE: "pause",
    store_pb2.SNAPSHOT_PURPOSE_FORK: "fork",
}
KINDS = {"filesystem": store_pb2.SNAPSHOT_KIND_FILESYSTEM, "memory": store_pb2.SNAPSHOT_KIND_MEMORY}
_SNAPSHOT_ID = re.compile(r"^snap-[a-z2-7]{20}$")


class SnapshotCalls:
    """The NodeAgent service's snapshot methods."""

    _snapshots: NodeSnapshots

    async def Snapshot(
        self, request: node_agent_pb2.SnapshotSandboxRequest, context: Context
    ) -> node_agent_pb2.SnapshotSandboxResponse:
        purpose = _PURPOSES.get(request.purpose)
        if purpose is None:
            raise errors.InvalidArgument(f"unknown snapshot purpose {request.purpose}")
        record = await self._snapshots.take(
            request.sandbox,
            name=request.name,
            purpose=purpose,
            stop=request.stop,
            wait=request.wait_stored,
            labels=dict(request.labels),
            only_if_idle=request.only_if_idle,
        )
        return node_agent_pb2.SnapshotSandboxResponse(
            snapshot_id=record.id, kind=KINDS[record.kind], stored=record.committed, logical_bytes=record.logical_bytes
        )

    async def DropSnapshot(
        self, request: node_agent_pb2.DropSnapshotRequest, context: Context
    ) -> node_agent_pb2.DropSnapshotResponse:
        if not _SNAPSHOT_ID.match(request.snapshot_id):
            raise errors.InvalidArgument(f"malformed snapshot id {request.snapshot_id!r}")
        await self._snapshots.forget(request.snapshot_id)
        return node_agent_pb2.DropSnapshotResponse()
