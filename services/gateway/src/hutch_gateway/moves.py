"""Moves for room: the gateway's consumer of sandbox.needs_room.

A gVisor sandbox with automatic memory whose node has no memory left for it to grow asks to be moved
(see the node-agent's memory_autoscaler.py). The gateway pauses it and resumes it at the size it
needs, which the scheduler places on a node with room (SandboxSnapshots.move); its memory and
processes go with it, and a request that arrives meanwhile waits for the resume. When no other node
has the room nothing happens here, and its node caps it once it has waited long enough.
"""

from __future__ import annotations

import logging
from typing import cast

from google.protobuf.message import Message

from hutch.core import errors, events
from hutch.core.bus import ConsumerSpec, sandbox_stream
from hutch.core.events import Envelope
from hutch.events.v1 import sandbox_pb2 as ev
from hutch_gateway.sandbox_snapshots import SandboxSnapshots

log = logging.getLogger(__name__)


def consumer(region: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=sandbox_stream(region),
        durable="gateway-moves",
        filter_subjects=(events.SANDBOX_NEEDS_ROOM.subject(region),),
        max_in_flight=4,
    )


class MoveConsumer:
    def __init__(self, snapshots: SandboxSnapshots) -> None:
        self._snapshots = snapshots

    async def __call__(self, envelope: Envelope[Message]) -> None:
        need = cast(ev.SandboxNeedsRoom, envelope.payload)
        try:
            moved = await self._snapshots.move(need)
        except errors.Unavailable:
            raise  # redelivered: its node or the snapshot-store may be back soon
        except errors.HutchError as exc:
            # Not retried: the node caps the sandbox where it is once its wait is over.
            log.warning("sandbox %s could not be moved to a node with room: %s", need.sandbox_id, exc.message)
            return
        if moved is not None:
            log.info("sandbox %s moved to %s with %d MB", moved.id, moved.node_id, moved.memory_mb)
