"""Sleep on idle: the gateway's consumer of sandbox.idle.

A node reports a sandbox idle once it has gone its `auto_sleep_after` seconds without an API call,
an open session (terminal, process stream, file watch, preview connection) or more than a trickle
of CPU. The gateway then pauses it as a sleep (SandboxSnapshots.sleep): the node takes the pause
snapshot only if the sandbox is still idle at that moment, so a request that raced the report wins
and the sandbox stays up. Waking is the other half: any data-plane call to a sleeping sandbox
resumes it first (SandboxService.running).
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
        durable="gateway-sleep",
        filter_subjects=(events.SANDBOX_IDLE.subject(region),),
        max_in_flight=8,
    )


class SleepConsumer:
    def __init__(self, snapshots: SandboxSnapshots) -> None:
        self._snapshots = snapshots

    async def __call__(self, envelope: Envelope[Message]) -> None:
        idle = cast(ev.SandboxIdle, envelope.payload)
        try:
            await self._snapshots.sleep(idle)
        except errors.Unavailable:
            raise  # redelivered: its node or the snapshot-store may be back soon
        except errors.HutchError as exc:
            # Not retried: the node reports the sandbox idle again if it stays so.
            log.warning("sandbox %s could not go to sleep: %s", idle.sandbox_id, exc.message)
