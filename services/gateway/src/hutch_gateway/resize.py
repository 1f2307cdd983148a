"""Live resizes: a running sandbox's CPU and memory, changed in place on its node.

Under the row's lock (so two resizes, or a resize and a kill or pause, never interleave), the
sandbox must be running on a live node; the node is asked (`NodeAgent.Resize`): it alone knows
what it has free right now and what the sandbox uses, and it refuses growth that does not fit
(RESOURCE_EXHAUSTED) and memory below what the sandbox uses (FAILED_PRECONDITION) before changing
anything. Then, in the same transaction, the row takes the new size (Get, List, pauses and resumes
follow it) and `sandbox.resized` is staged, on which the scheduler moves the sandbox's placement
in its ledger to the new size.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
import grpc

from hutch.core import errors, events, outbox
from hutch.core.events import Envelope
from hutch.core.grpc_runtime import error_from_rpc
from hutch.core.nodes import NodeDirectory
from hutch.core.outbox import OutboxRelay
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.internal.v1 import node_agent_pb2
from hutch.v1 import sandbox_pb2
from hutch_gateway import store
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import SandboxRecord, State
from hutch_gateway.resize_rules import Size, target
from hutch_gateway.service import SandboxService
from hutch_gateway.snapshot_rules import not_running

log = logging.getLogger(__name__)

# Writing a few cgroup files: a node that takes longer is in trouble.
RESIZE_TIMEOUT_S = 30.0


def resized_event(record: SandboxRecord, previous: Size) -> Envelope[ev.SandboxResized]:
    payload = ev.SandboxResized(
        sandbox_id=record.id,
        node_id=record.node_id or "",
        resources=sandbox_pb2.Resources(cpu_millis=record.cpu_millis, memory_mb=record.memory_mb),
        previous=sandbox_pb2.Resources(cpu_millis=previous.cpu_millis, memory_mb=previous.memory_mb),
    )
    payload.resized_at.FromDatetime(datetime.now(UTC))
    return Envelope(kind=events.SANDBOX_RESIZED, payload=payload, tenant=record.tenant_id, sandbox=record.id)


class SandboxResizer:
    def __init__(
        self,
        db: asyncpg.Pool,
        relay: OutboxRelay,
        service: SandboxService,
        nodes: NodeDirectory,
        channels: NodeChannels,
        region: str,
    ) -> None:
        self._db = db
        self._relay = relay
        self._service = service
        self._nodes = nodes
        self._channels = channels
        self._region = region

    async def resize(self, tenant_id: str, ref: str, wanted: Size) -> SandboxRecord:
        record = await self._service.get(tenant_id, ref)
        async with self._db.acquire() as conn, conn.transaction():
            locked = await store.lock(conn, record.id)
            if locked is None or locked.state != State.RUNNING or not locked.node_id:
                raise not_running(locked or record)
            current = Size(locked.cpu_millis, locked.memory_mb)
            size = target(current, wanted)
            if size == current:
                return locked
            node = self._nodes.get(locked.node_id)
            if node is None or not self._nodes.is_alive(node):
                raise errors.Unavailable(f"node {locked.node_id}, which runs sandbox {locked.id}, is not answering")
            request = node_agent_pb2.ResizeSandboxRequest(
                sandbox=locked.id, cpu_millis=size.cpu_millis, memory_mb=size.memory_mb
            )
            try:
                answer = await self._channels.stub(node.address).Resize(
                    request, metadata=self._channels.metadata(), timeout=RESIZE_TIMEOUT_S
                )
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, f"node {node.node_id}") from exc
            updated = await store.set_resources(conn, locked.id, answer.cpu_millis, answer.memory_mb)
            await outbox.stage(conn, events.SANDBOX_RESIZED.subject(self._region), resized_event(updated, current))
        self._relay.kick()
        log.info(
            "sandbox %s resized from %d mCPU / %d MB to %d mCPU / %d MB",
            updated.id, current.cpu_millis, current.memory_mb, updated.cpu_millis, updated.memory_mb,
        )  # fmt: skip
        return updated
