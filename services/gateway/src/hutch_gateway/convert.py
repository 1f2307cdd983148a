"""Conversions between the public protobuf messages and the gateway's domain types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.v1 import sandbox_pb2
from hutch_gateway.domain import SandboxRecord, State

_STATE_TO_PROTO = {
    State.PENDING: sandbox_pb2.SANDBOX_STATE_PENDING,
    State.RUNNING: sandbox_pb2.SANDBOX_STATE_RUNNING,
    State.STOPPING: sandbox_pb2.SANDBOX_STATE_STOPPING,
    State.KILLED: sandbox_pb2.SANDBOX_STATE_KILLED,
    State.FAILED: sandbox_pb2.SANDBOX_STATE_FAILED,
}
_PROTO_TO_STATE: dict[int, State] = {int(v): k for k, v in _STATE_TO_PROTO.items()}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def sandbox(record: SandboxRecord) -> sandbox_pb2.Sandbox:
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
    )


def states(values: list[int]) -> list[State]:
    result = []
    for value in values:
        if value not in _PROTO_TO_STATE:
            raise errors.InvalidArgument(f"unknown sandbox state {value}")
        result.append(_PROTO_TO_STATE[value])
    return result
