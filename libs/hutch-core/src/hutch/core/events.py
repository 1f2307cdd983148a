"""The event envelope, the event catalogue and the subjects events travel on.

Every event is one protobuf message from `proto/hutch/events/v1` in the body of a NATS message; its
envelope rides in headers:

    Nats-Msg-Id        the event id; JetStream drops a second publish with the same id
    Hutch-Event-Type   e.g. "sandbox.started"; selects the payload's message type
    Hutch-Event-Time   RFC 3339, when the event happened
    Hutch-Tenant       the tenant the event concerns ("" for node-level events)
    Hutch-Sandbox      the sandbox the event concerns ("" when none)
    traceparent        W3C trace context (added by hutch.core.telemetry)

This module knows no NATS client: it turns envelopes into (subject, body, headers) and back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from hutch.events.v1 import egress_pb2, node_pb2, sandbox_pb2, usage_pb2

MSG_ID: Final = "Nats-Msg-Id"
EVENT_TYPE: Final = "Hutch-Event-Type"
EVENT_TIME: Final = "Hutch-Event-Time"
TENANT: Final = "Hutch-Tenant"
SANDBOX: Final = "Hutch-Sandbox"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class EventKind(Generic[M]):
    """One kind of event: its type name and payload message."""

    name: str
    message: type[M]

    def subject(self, region: str) -> str:
        return f"hutch.{region}.{self.name}"


SANDBOX_REQUESTED: Final = EventKind("sandbox.requested", sandbox_pb2.SandboxRequested)
SANDBOX_PLACED: Final = EventKind("sandbox.placed", sandbox_pb2.SandboxPlaced)
SANDBOX_STARTED: Final = EventKind("sandbox.started", sandbox_pb2.SandboxStarted)
SANDBOX_FAILED: Final = EventKind("sandbox.failed", sandbox_pb2.SandboxFailed)
SANDBOX_STOPPED: Final = EventKind("sandbox.stopped", sandbox_pb2.SandboxStopped)
SANDBOX_KILL_REQUESTED: Final = EventKind("sandbox.kill_requested", sandbox_pb2.SandboxKillRequested)
SANDBOX_TIMEOUT_WARNING: Final = EventKind("sandbox.timeout_warning", sandbox_pb2.SandboxTimeoutWarning)
SANDBOX_PAUSED: Final = EventKind("sandbox.paused", sandbox_pb2.SandboxPaused)
SANDBOX_IDLE: Final = EventKind("sandbox.idle", sandbox_pb2.SandboxIdle)
SANDBOX_MEMORY_CAPPED: Final = EventKind("sandbox.memory_capped", sandbox_pb2.SandboxMemoryCapped)
SANDBOX_NEEDS_ROOM: Final = EventKind("sandbox.needs_room", sandbox_pb2.SandboxNeedsRoom)
SANDBOX_RESIZED: Final = EventKind("sandbox.resized", sandbox_pb2.SandboxResized)
NODE_COMMAND: Final = EventKind("node.command", node_pb2.NodeCommand)
# Usage reports (one message type, one kind per reporter): node-agents report CPU and memory; the
# snapshot store and the egress proxy report stored and sent bytes on their own kinds.
USAGE_COMPUTE: Final = EventKind("usage.compute", usage_pb2.UsageReport)
USAGE_STORAGE: Final = EventKind("usage.storage", usage_pb2.UsageReport)
USAGE_EGRESS: Final = EventKind("usage.egress", usage_pb2.UsageReport)
# The egress-proxy's bytes per destination (the tenant's view) and its refusals and injections.
EGRESS_TRAFFIC: Final = EventKind("egress.traffic", egress_pb2.EgressTraffic)
EGRESS_AUDIT: Final = EventKind("egress.audit", egress_pb2.EgressAudit)

CATALOGUE: Final[Mapping[str, EventKind[Any]]] = {
    kind.name: kind
    for kind in (
        SANDBOX_REQUESTED,
        SANDBOX_PLACED,
        SANDBOX_STARTED,
        SANDBOX_FAILED,
        SANDBOX_STOPPED,
        SANDBOX_KILL_REQUESTED,
        SANDBOX_TIMEOUT_WARNING,
        SANDBOX_PAUSED,
        SANDBOX_IDLE,
        SANDBOX_MEMORY_CAPPED,
        SANDBOX_NEEDS_ROOM,
        SANDBOX_RESIZED,
        NODE_COMMAND,
        USAGE_COMPUTE,
        USAGE_STORAGE,
        USAGE_EGRESS,
        EGRESS_TRAFFIC,
        EGRESS_AUDIT,
    )
}


def node_command_subject(region: str, node_id: str) -> str:
    """Commands for one node travel on their own subject, so each node consumes only its own."""
    return f"hutch.{region}.node.{node_id}.cmd"


def sandbox_event_id(sandbox_id: str, what: str, incarnation: str = "") -> str:
    """The deterministic id of a sandbox's event: `<sandbox>.<what>`, plus `.<incarnation>` when it
    started from a snapshot. A resumed sandbox starts again under the same id, and JetStream drops a
    repeated id for 10 minutes, so each start (its incarnation: the snapshot it starts from) needs
    ids of its own."""
    return f"{sandbox_id}.{what}.{incarnation}" if incarnation else f"{sandbox_id}.{what}"


def incarnation_of(event_id: str, sandbox_id: str) -> str | None:
    """The incarnation a `sandbox_event_id` names ("" for a plain start); None for an id of another shape."""
    prefix = f"{sandbox_id}."
    if not sandbox_id or not event_id.startswith(prefix):
        return None
    _, _, incarnation = event_id[len(prefix) :].partition(".")
    return incarnation


class UndecodableEvent(ValueError):
    """Raised for a message that is not a valid Hutch event; consumers terminate it (never retried)."""


@dataclass(frozen=True)
class Envelope(Generic[M]):
    """An event: a payload plus the metadata every consumer needs without decoding it."""

    kind: EventKind[M]
    payload: M
    tenant: str = ""
    sandbox: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def headers(self) -> dict[str, str]:
        return {
            MSG_ID: self.id,
            EVENT_TYPE: self.kind.name,
            EVENT_TIME: self.time.isoformat(),
            TENANT: self.tenant,
            SANDBOX: self.sandbox,
        }

    def body(self) -> bytes:
        return self.payload.SerializeToString()


def decode(body: bytes, headers: Mapping[str, str] | None) -> Envelope[Message]:
    """Rebuilds an envelope from a message's body and headers."""
    headers = headers or {}
    kind = CATALOGUE.get(headers.get(EVENT_TYPE, ""))
    if kind is None:
        raise UndecodableEvent(f"unknown event type {headers.get(EVENT_TYPE)!r}")
    payload = kind.message()
    try:
        payload.ParseFromString(body)
        time = datetime.fromisoformat(headers[EVENT_TIME])
        event_id = headers[MSG_ID]
    except (DecodeError, KeyError, ValueError) as exc:
        raise UndecodableEvent(f"malformed {kind.name} event: {exc}") from exc
    return Envelope(
        kind=kind,
        payload=payload,
        tenant=headers.get(TENANT, ""),
        sandbox=headers.get(SANDBOX, ""),
        id=event_id,
        time=time,
    )
