"""Handles the commands the scheduler and gateway send to this node."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import cast

from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.events import Envelope
from hutch.events.v1 import node_pb2
from hutch_node_agent.convert import request_from_spec
from hutch_node_agent.egress_registrar import EgressRegistrar, policy_from
from hutch_node_agent.events_out import NodeEvents
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.snapshots import NodeSnapshots

log = logging.getLogger(__name__)


class CommandHandler:
    def __init__(
        self,
        manager: SandboxManager,
        snapshots: NodeSnapshots,
        events: NodeEvents,
        changed: asyncio.Event,
        egress: EgressRegistrar | None = None,
    ) -> None:
        self._egress = egress
        self._manager = manager
        self._snapshots = snapshots
        self._events = events
        self._changed = changed

    async def __call__(self, envelope: Envelope[Message]) -> None:
        command = cast(node_pb2.NodeCommand, envelope.payload)
        which = command.WhichOneof("command")
        if which == "create":
            await self._create(command.create)
        elif which == "kill":
            await self._kill(command.kill, envelope.tenant)
        elif which == "set_deadline":
            change = command.set_deadline
            deadline = change.deadline.ToDatetime(tzinfo=UTC) if change.HasField("deadline") else None
            try:
                await self._manager.set_deadline(change.sandbox_id, deadline)
            except errors.HutchError as exc:  # gone meanwhile: nothing left to time out
                log.info("deadline of %s not changed: %s", change.sandbox_id, exc.message)
        elif which == "update_network":
            await self._update_network(command.update_network)
        else:
            log.error("ignoring a node command without a known body (%s)", which)
        self._changed.set()

    async def _create(self, create: node_pb2.CreateSandbox) -> None:
        request = request_from_spec(create.spec)
        try:
            if request.snapshot_id:
                lease = self._snapshots.lease(request.tenant_id, request.snapshot_id, request.isolation)
                async with lease as source:
                    sandbox = await self._manager.create(request, source)
            else:
                sandbox = await self._manager.create(request)
        except errors.Unavailable:
            raise  # redelivered later
        except errors.HutchError as exc:
            log.warning("sandbox %s failed to start: %s", request.sandbox_id, exc.message)
            await self._events.failed(request, exc)
            return
        except Exception as exc:
            log.exception("sandbox %s failed to start", request.sandbox_id)
            await self._events.failed(request, errors.Internal(f"the node could not start the sandbox: {exc}"))
            return
        if self._egress is not None:  # before anyone can run a command in it
            await self._egress.started(sandbox)
        await self._events.started(sandbox)

    async def _update_network(self, change: node_pb2.UpdateSandboxNetwork) -> None:
        if self._egress is None:
            log.warning("network of %s not changed: this node has no egress-proxy", change.sandbox_id)
            return
        try:
            sandbox = self._manager.running(change.sandbox_id)
        except errors.HutchError as exc:  # gone meanwhile: nothing left to change
            log.info("network of %s not changed: %s", change.sandbox_id, exc.message)
            return
        await self._egress.update(sandbox, policy_from(change.network))

    async def _kill(self, kill: node_pb2.KillSandbox, tenant: str) -> None:
        # A sandbox that was running reports its stop through the manager's callback. One that is
        # not here (never started, or already gone) is confirmed stopped right away so that the
        # gateway waiting on the kill is never left hanging.
        if not await self._manager.kill(kill.sandbox_id, kill.reason or "killed"):
            await self._events.stopped(kill.sandbox_id, tenant, kill.reason or "killed")
