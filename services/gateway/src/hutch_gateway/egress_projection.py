"""Consumer of egress.traffic: the egress-proxy's bytes per sandbox and destination, added to the
running totals that Network.GetEgress shows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC
from typing import cast

import asyncpg
from google.protobuf.message import Message

from hutch.core.bus import ConsumerSpec, egress_stream
from hutch.core.events import EGRESS_TRAFFIC, Envelope
from hutch.events.v1 import egress_pb2
from hutch_gateway import egress_store
from hutch_gateway.egress_store import TrafficRow

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0
PRUNE_MARGIN_S = 24 * 3600.0


def consumer(region: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=egress_stream(region),
        durable="gateway-egress",
        filter_subjects=(EGRESS_TRAFFIC.subject(region),),
        max_in_flight=8,
    )


class EgressProjection:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def __call__(self, envelope: Envelope[Message]) -> None:
        traffic = cast(egress_pb2.EgressTraffic, envelope.payload)
        rows = [TrafficRow(c.destination, c.bytes_out, c.bytes_in, c.requests, c.refused) for c in traffic.destinations]
        await egress_store.add_traffic(
            self._db,
            envelope.id,
            traffic.tenant_id or envelope.tenant,
            traffic.sandbox_id or envelope.sandbox,
            traffic.window_start.ToDatetime(tzinfo=UTC),
            traffic.window_end.ToDatetime(tzinfo=UTC),
            rows,
        )


async def prune(db: asyncpg.Pool, region: str, stop: asyncio.Event, every_s: float = PRUNE_EVERY_S) -> None:
    """Keeps egress_events (the ids that make adding exactly-once) as long as the stream could still
    deliver those events, and no longer."""
    keep_s = egress_stream(region).max_age_s + PRUNE_MARGIN_S
    while not stop.is_set():
        try:
            removed = await egress_store.prune_events(db, keep_s)
            if removed:
                log.info("forgot %d egress event ids older than the stream", removed)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not prune egress event ids: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
