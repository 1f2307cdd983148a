"""What the ledger consumes: every region's usage reports and sandbox requests, one independent feed per region.

A region's billing-meter reads its own region's streams and, through the NATS supercluster, those of
every peer region, so each region's ledger holds every tenant's whole bill. The feeds share nothing
but the ledger: a peer region that cannot be reached leaves the others untouched, and its feed
retries in the background until the region is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import asyncpg

from hutch.core import events
from hutch.core.bus import Bus, ConsumerSpec, sandbox_stream, usage_stream
from hutch_billing_meter.handlers import SandboxCatalogue, UsageIngest

log = logging.getLogger(__name__)

DURABLE = "billing-meter"


def durable_name(region: str, source: str) -> str:
    """The durable consumer that `region`'s meter keeps on `source`'s streams.

    On a peer's streams the name carries the consuming region: two regions' meters must never share
    one consumer, or each would get only part of the stream.
    """
    return DURABLE if source == region else f"{DURABLE}-{region}"


def consumers(region: str, source: str | None = None) -> tuple[ConsumerSpec, ConsumerSpec]:
    """(usage reports into the ledger, sandbox requests into the label table) of `source` (by default
    `region` itself), as `region`'s meter consumes them."""
    source = source or region
    durable = durable_name(region, source)
    usage = ConsumerSpec(stream=usage_stream(source), durable=durable, filter_subjects=(f"hutch.{source}.usage.>",))
    sandboxes = ConsumerSpec(
        stream=sandbox_stream(source),
        durable=durable,
        filter_subjects=(events.SANDBOX_REQUESTED.subject(source),),
        max_in_flight=16,
    )
    return usage, sandboxes


@dataclass(frozen=True)
class Backoff:
    """Waits between tries to consume a peer region's stream: doubling from `first_s` up to `most_s`."""

    first_s: float = 1.0
    most_s: float = 30.0

    def after(self, delay_s: float) -> float:
        return min(self.most_s, delay_s * 2)


async def keep_trying(
    what: str, consume: Callable[[], Awaitable[None]], stop: asyncio.Event, backoff: Backoff = Backoff()
) -> None:
    """Runs `consume` until `stop` is set, starting it again after a failure.

    A peer region's consumer cannot be created or bound while that region is away; this waits and
    tries again instead of failing the service, which keeps serving and ingesting its own region.
    """
    loop = asyncio.get_running_loop()
    delay_s = backoff.first_s
    failures = 0
    while not stop.is_set():
        started = loop.time()
        try:
            await consume()
        except Exception as exc:
            if loop.time() - started >= backoff.most_s:
                delay_s, failures = backoff.first_s, 0  # it ran a while: a new outage, not the same one
            failures += 1
            log.warning("%s failed (%d in a row): %r; trying again in %.0f s", what, failures, exc, delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = backoff.after(delay_s)
        else:
            return


def feeds(
    bus: Bus,
    pool: asyncpg.Pool,
    regions: tuple[str, ...],
    retention: timedelta,
    batch_size: int,
    stop: asyncio.Event,
    backoff: Backoff = Backoff(),
) -> list[Coroutine[Any, Any, None]]:
    """The consumer loops of every region in `regions`, this meter's own first.

    The own region's loops fail the service when they cannot start, as every service's do; a peer's
    retry on their own.
    """
    own = regions[0]
    loops: list[Coroutine[Any, Any, None]] = []
    for source in regions:
        usage, sandboxes = consumers(own, source)
        consume_usage = partial(
            bus.consume_batches, usage, UsageIngest(pool, retention, source_region=source), stop, batch_size
        )
        consume_sandboxes = partial(bus.consume, sandboxes, SandboxCatalogue(pool), stop)
        if source == own:
            loops += [consume_usage(), consume_sandboxes()]
        else:
            loops += [
                keep_trying(f"consuming {source}'s usage ({usage.durable})", consume_usage, stop, backoff),
                keep_trying(
                    f"consuming {source}'s sandbox requests ({sandboxes.durable})", consume_sandboxes, stop, backoff
                ),
            ]
    return loops
