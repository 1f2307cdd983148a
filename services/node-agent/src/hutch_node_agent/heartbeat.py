"""Publishes this node's liveness and capacity to the region's node KV bucket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.kv import KeyValue

from hutch.events.v1 import node_pb2
from hutch_node_agent.fencing import FenceGuard
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.templates import TemplateStore

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class Heartbeat:
    def __init__(
        self,
        kv: KeyValue,
        options: NodeOptions,
        region: str,
        manager: SandboxManager,
        templates: TemplateStore,
        isolation_classes: list[str],
        changed: asyncio.Event,
        guard: FenceGuard | None = None,
    ) -> None:
        self._kv = kv
        # Checked before every heartbeat: a fenced node stops what it runs before it speaks again.
        self._guard = guard
        self._options = options
        self._region = region
        # host:port of the data plane, known once the gRPC server listens.
        self.address = ""
        self._manager = manager
        self._templates = templates
        self._classes = isolation_classes
        self._started_at = Timestamp()
        self._started_at.FromDatetime(datetime.now(UTC))
        # Set by whoever changes what the node holds, so the next heartbeat goes out at once.
        self._wake = changed

    async def beat(self) -> None:
        """Publishes the node's state now (also called right after its templates change, so that
        placement sees a new template before the import that installed it returns)."""
        await self._kv.put(self._options.id, self.message().SerializeToString())

    async def beat_as_new_run(self) -> None:
        """Heartbeats under a new epoch (started_at): the run the scheduler gave up on is over."""
        self._started_at = Timestamp()
        self._started_at.FromDatetime(datetime.now(UTC))
        await self.beat()

    async def check_fence(self) -> bool:
        """Clears this node's fence if it has one (see `fencing.FenceGuard.clear`)."""
        return self._guard is not None and await self._guard.clear(self.beat_as_new_run)

    def message(self) -> node_pb2.NodeHeartbeat:
        cpu, memory = self._manager.allocated()
        now = datetime.now(UTC)
        sent_at = Timestamp()
        sent_at.FromDatetime(now)
        beat = node_pb2.NodeHeartbeat(
            node_id=self._options.id,
            region=self._region,
            address=self.address,
            cpu_millis_total=self._options.measured_cpu_millis(),
            memory_mb_total=self._options.measured_memory_mb(),
            cpu_millis_allocated=cpu,
            memory_mb_allocated=memory,
            sandboxes=len(self._manager.all()),
            templates=self._templates.names(),
            isolation_classes=self._classes,
            started_at=self._started_at,
            sent_at=sent_at,
            version=VERSION,
        )
        for sandbox in self._manager.all():
            if sandbox.status == "running":
                idle_s = self._manager.activity.idle_for(sandbox.id)
                beat.idle_since[sandbox.id].FromDatetime(now - timedelta(seconds=idle_s))
        return beat

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if not await self.check_fence():
                    await self.beat()
            except Exception as exc:  # NATS away: keep trying; missed beats are what node loss means
                log.warning("heartbeat failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._options.heartbeat_interval_s)
            self._wake.clear()
