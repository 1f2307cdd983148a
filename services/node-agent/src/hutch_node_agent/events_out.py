"""The events a node-agent publishes about its sandboxes.

Event ids are derived from the sandbox id and the transition, so a command that is redelivered and
handled twice publishes the same id twice and JetStream keeps one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors, events
from hutch.core.bus import Bus
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.v1.sandbox_pb2 import Resources
from hutch_node_agent.domain import LocalSandbox, SandboxRequest

M = TypeVar("M", bound=Message)


def _timestamp(when: datetime | None = None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return stamp


class NodeEvents:
    def __init__(self, bus: Bus, node_id: str) -> None:
        self._bus = bus
        self._node_id = node_id

    async def _publish(self, kind: events.EventKind[M], event_id: str, tenant: str, sandbox: str, payload: M) -> None:
        envelope = events.Envelope(kind=kind, payload=payload, tenant=tenant, sandbox=sandbox, id=event_id)
        await self._bus.publish(kind.subject(self._bus.region), envelope)

    async def started(self, sandbox: LocalSandbox) -> None:
        payload = ev.SandboxStarted(
            sandbox_id=sandbox.id, node_id=self._node_id, started_at=_timestamp(sandbox.started_at)
        )
        await self._publish(
            events.SANDBOX_STARTED,
            f"{sandbox.id}.started{sandbox.request.incarnation}",
            sandbox.request.tenant_id,
            sandbox.id,
            payload,
        )

    async def failed(self, request: SandboxRequest, error: errors.HutchError) -> None:
        payload = ev.SandboxFailed(
            sandbox_id=request.sandbox_id, node_id=self._node_id, code=error.code, message=error.message
        )
        await self._publish(
            events.SANDBOX_FAILED,
            f"{request.sandbox_id}.failed{request.incarnation}",
            request.tenant_id,
            request.sandbox_id,
            payload,
        )

    async def stopped(self, sandbox_id: str, tenant_id: str, reason: str) -> None:
        payload = ev.SandboxStopped(
            sandbox_id=sandbox_id, node_id=self._node_id, reason=reason, stopped_at=_timestamp()
        )
        await self._publish(events.SANDBOX_STOPPED, f"{sandbox_id}.stopped", tenant_id, sandbox_id, payload)

    async def idle(self, sandbox: LocalSandbox, idle_since: datetime) -> None:
        payload = ev.SandboxIdle(
            sandbox_id=sandbox.id,
            node_id=self._node_id,
            incarnation=sandbox.request.incarnation_name,
            idle_since=_timestamp(idle_since),
        )
        await self._publish(
            events.SANDBOX_IDLE,
            f"{sandbox.id}.idle{sandbox.request.incarnation}.{int(idle_since.timestamp())}",
            sandbox.request.tenant_id,
            sandbox.id,
            payload,
        )

    async def grown(self, sandbox: LocalSandbox, previous_memory_mb: int) -> None:
        """The node raised a sandbox's memory by itself (automatic memory)."""
        now = sandbox.request
        payload = ev.SandboxResized(
            sandbox_id=sandbox.id,
            node_id=self._node_id,
            resources=Resources(cpu_millis=now.cpu_millis, memory_mb=now.memory_mb),
            previous=Resources(cpu_millis=now.cpu_millis, memory_mb=previous_memory_mb),
            resized_at=_timestamp(),
        )
        await self._publish(
            events.SANDBOX_RESIZED,
            f"{sandbox.id}.grown{now.incarnation}.{now.memory_mb}",
            now.tenant_id,
            sandbox.id,
            payload,
        )

    async def memory_capped(self, sandbox: LocalSandbox, reason: str) -> None:
        payload = ev.SandboxMemoryCapped(
            sandbox_id=sandbox.id,
            node_id=self._node_id,
            memory_mb=sandbox.request.memory_mb,
            ceiling_mb=sandbox.request.memory_ceiling_mb,
            reason=reason,
            capped_at=_timestamp(),
        )
        await self._publish(
            events.SANDBOX_MEMORY_CAPPED,
            f"{sandbox.id}.capped{sandbox.request.incarnation}.{sandbox.request.memory_mb}",
            sandbox.request.tenant_id,
            sandbox.id,
            payload,
        )

    async def needs_room(self, sandbox: LocalSandbox, wanted_mb: int) -> None:
        now = sandbox.request
        payload = ev.SandboxNeedsRoom(
            sandbox_id=sandbox.id,
            node_id=self._node_id,
            incarnation=now.incarnation_name,
            memory_mb=now.memory_mb,
            wanted_mb=wanted_mb,
            ceiling_mb=now.memory_ceiling_mb,
        )
        await self._publish(
            events.SANDBOX_NEEDS_ROOM,
            # Asked again after a wait that ended without a move: a new request, not a repeat.
            f"{sandbox.id}.needs_room{now.incarnation}.{wanted_mb}.{int(time.time())}",
            now.tenant_id,
            sandbox.id,
            payload,
        )

    async def timeout_warning(self, sandbox: LocalSandbox, fires_at: datetime) -> None:
        payload = ev.SandboxTimeoutWarning(sandbox_id=sandbox.id, fires_at=_timestamp(fires_at))
        await self._publish(
            events.SANDBOX_TIMEOUT_WARNING, f"{sandbox.id}.warn.{int(fires_at.timestamp())}",
            sandbox.request.tenant_id, sandbox.id, payload,
        )  # fmt: skip
