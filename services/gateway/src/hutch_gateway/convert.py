"""Conversions between the public protobuf messages and the gateway's domain types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2
from hutch.v1 import network_pb2, sandbox_pb2, snapshot_pb2
from hutch_gateway.domain import SandboxRecord, State

_STATE_TO_PROTO = {
    State.PENDING: sandbox_pb2.SANDBOX_STATE_PENDING,
    State.RUNNING: sandbox_pb2.SANDBOX_STATE_RUNNING,
    State.STOPPING: sandbox_pb2.SANDBOX_STATE_STOPPING,
    State.KILLED: sandbox_pb2.SANDBOX_STATE_KILLED,
    State.FAILED: sandbox_pb2.SANDBOX_STATE_FAILED,
    State.PAUSED: sandbox_pb2.SANDBOX_STATE_PAUSED,
}
_PROTO_TO_STATE: dict[int, State] = {int(v): k for k, v in _STATE_TO_PROTO.items()}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def sandbox(record: SandboxRecord, idle_since: datetime | None = None) -> sandbox_pb2.Sandbox:
    return sandbox_pb2.Sandbox(
        id=record.id,
        name=record.name,
        template=record.template,
        state=_STATE_TO_PROTO[record.state],
        resources=sandbox_pb2.Resources(cpu_millis=record.cpu_millis, memory_mb=record.memory_mb),
        metadata=record.metadata,
        created_at=_timestamp(record.created_at),
        started_at=_timestamp(record.started_at),
        ended_at=_timestamp(record.ended_at),
        timeout_seconds=record.timeout_seconds,
        state_reason=record.state_reason,
        region=record.region,
        isolation=record.isolation,
        public_ports=list(record.public_ports),
        expires_at=_timestamp(record.expires_at),
        network=network_pb2.NetworkPolicy(**record.network),
        source_snapshot=record.source_snapshot,
        forked_from=record.forked_from,
        # Only while the snapshot holds it: after a resume the sandbox is its own again.
        paused_snapshot=record.paused_snapshot if record.state == State.PAUSED or record.resuming else "",
        auto_sleep_after_seconds=record.auto_sleep_after_s,
        asleep=record.asleep and record.state == State.PAUSED,
        memory_ceiling_mb=record.memory_ceiling_mb,
        idle_since=_timestamp(idle_since) if record.state == State.RUNNING else None,
    )


def states(values: list[int]) -> list[State]:
    result = []
    for value in values:
        if value not in _PROTO_TO_STATE:
            raise errors.InvalidArgument(f"unknown sandbox state {value}")
        result.append(_PROTO_TO_STATE[value])
    return result


# The store's enums and the public ones share their numbers; named here so a drift fails loudly.
_KIND_TO_PUBLIC = {
    snapshot_store_pb2.SNAPSHOT_KIND_FILESYSTEM: snapshot_pb2.SNAPSHOT_KIND_FILESYSTEM,
    snapshot_store_pb2.SNAPSHOT_KIND_MEMORY: snapshot_pb2.SNAPSHOT_KIND_MEMORY,
}
_PURPOSE_TO_PUBLIC = {
    snapshot_store_pb2.SNAPSHOT_PURPOSE_USER: snapshot_pb2.SNAPSHOT_PURPOSE_USER,
    snapshot_store_pb2.SNAPSHOT_PURPOSE_PAUSE: snapshot_pb2.SNAPSHOT_PURPOSE_PAUSE,
    snapshot_store_pb2.SNAPSHOT_PURPOSE_FORK: snapshot_pb2.SNAPSHOT_PURPOSE_FORK,
}
PURPOSE_TO_STORE: dict[int, snapshot_store_pb2.SnapshotPurpose.ValueType] = {
    int(public): internal for internal, public in _PURPOSE_TO_PUBLIC.items()
}


def snapshot(
    manifest: snapshot_store_pb2.SnapshotManifest, template: str, isolation: str, region: str
) -> snapshot_pb2.Snapshot:
    """The public view of a stored snapshot (`template` and `isolation` read from its spec)."""
    message = snapshot_pb2.Snapshot(
        region=region,
        id=manifest.id,
        name=manifest.name,
        sandbox_id=manifest.sandbox_id,
        kind=_KIND_TO_PUBLIC.get(manifest.kind, snapshot_pb2.SNAPSHOT_KIND_UNSPECIFIED),
        purpose=_PURPOSE_TO_PUBLIC.get(manifest.purpose, snapshot_pb2.SNAPSHOT_PURPOSE_UNSPECIFIED),
        template=template,
        isolation=isolation,
        size_bytes=manifest.logical_bytes,
        stored_bytes=manifest.new_stored_bytes,
        labels=dict(manifest.labels),
    )
    if manifest.HasField("created_at"):
        message.created_at.CopyFrom(manifest.created_at)
    return message


def purposes(values: list[int]) -> list[snapshot_store_pb2.SnapshotPurpose.ValueType]:
    """The store's purposes for the public ones a List asks for (USER when none)."""
    result = []
    for value in values or [snapshot_pb2.SNAPSHOT_PURPOSE_USER]:
        if value not in PURPOSE_TO_STORE:
            raise errors.InvalidArgument(f"unknown snapshot purpose {value}")
        result.append(PURPOSE_TO_STORE[value])
    return result
