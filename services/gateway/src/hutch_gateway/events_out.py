"""The events and node commands the gateway emits, built from its records."""

from __future__ import annotations

from datetime import UTC, datetime

from hutch.core import events
from hutch.core.events import Envelope, sandbox_event_id
from hutch.events.v1 import node_pb2
from hutch.events.v1 import sandbox_pb2 as ev
from hutch.v1 import network_pb2, sandbox_pb2
from hutch_gateway.domain import CreateRequest, SandboxRecord, start_snapshot


def requested(
    record: SandboxRecord, request: CreateRequest, template_key: str, *, prefer_node: str = ""
) -> Envelope[ev.SandboxRequested]:
    """Asks for a start of the sandbox: its first, or (with an incarnation) one from a snapshot."""
    timeout = record.timeout_seconds if record.timeout_left_s is None else record.timeout_left_s
    spec = ev.SandboxSpec(
        sandbox_id=record.id,
        tenant_id=record.tenant_id,
        name=record.name,
        template=template_key,
        resources=sandbox_pb2.Resources(cpu_millis=record.cpu_millis, memory_mb=record.memory_mb),
        envs=request.envs,
        metadata=record.metadata,
        timeout_seconds=timeout,
        region=record.region,
        isolation=record.isolation,
        snapshot_id=start_snapshot(record.incarnation),
        incarnation=record.incarnation,
        prefer_node=prefer_node,
        network=network_pb2.NetworkPolicy(**request.network),
        auto_sleep_after_seconds=record.auto_sleep_after_s,
        memory_ceiling_mb=record.memory_ceiling_mb,
    )
    return Envelope(
        kind=events.SANDBOX_REQUESTED,
        payload=ev.SandboxRequested(spec=spec),
        tenant=record.tenant_id,
        sandbox=record.id,
        id=sandbox_event_id(record.id, "requested", record.incarnation),
    )


def paused(record: SandboxRecord, node_id: str, snapshot_id: str) -> Envelope[ev.SandboxPaused]:
    payload = ev.SandboxPaused(sandbox_id=record.id, node_id=node_id, snapshot_id=snapshot_id)
    payload.paused_at.FromDatetime(datetime.now(UTC))
    return Envelope(
        kind=events.SANDBOX_PAUSED,
        payload=payload,
        tenant=record.tenant_id,
        sandbox=record.id,
        id=sandbox_event_id(record.id, "paused", snapshot_id),
    )


def kill_requested(record: SandboxRecord) -> Envelope[ev.SandboxKillRequested]:
    return Envelope(
        kind=events.SANDBOX_KILL_REQUESTED,
        payload=ev.SandboxKillRequested(sandbox_id=record.id),
        tenant=record.tenant_id,
        sandbox=record.id,
        id=f"{record.id}.kill_requested",
    )


def kill_command(record: SandboxRecord, reason: str = "killed") -> Envelope[node_pb2.NodeCommand]:
    command = node_pb2.NodeCommand(kill=node_pb2.KillSandbox(sandbox_id=record.id, reason=reason))
    return Envelope(
        kind=events.NODE_COMMAND,
        payload=command,
        tenant=record.tenant_id,
        sandbox=record.id,
        id=f"{record.id}.kill",
    )


def deadline_command(record: SandboxRecord) -> Envelope[node_pb2.NodeCommand]:
    """Tells the sandbox's node when it now expires (no deadline when it lives until killed)."""
    deadline = node_pb2.SetSandboxDeadline(sandbox_id=record.id)
    if record.expires_at is not None:
        deadline.deadline.FromDatetime(record.expires_at)
    return Envelope(
        kind=events.NODE_COMMAND, payload=node_pb2.NodeCommand(set_deadline=deadline),
        tenant=record.tenant_id, sandbox=record.id,
    )  # fmt: skip


def network_command(record: SandboxRecord) -> Envelope[node_pb2.NodeCommand]:
    """Tells the sandbox's node (and through it the node's egress-proxy) its new network policy."""
    change = node_pb2.UpdateSandboxNetwork(sandbox_id=record.id, network=network_pb2.NetworkPolicy(**record.network))
    return Envelope(
        kind=events.NODE_COMMAND, payload=node_pb2.NodeCommand(update_network=change),
        tenant=record.tenant_id, sandbox=record.id,
    )  # fmt: skip
