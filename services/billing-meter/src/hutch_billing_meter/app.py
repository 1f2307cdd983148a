"""Wiring and lifecycle of the billing-meter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from hutch.core import db, errors, telemetry
from hutch.core.bus import Bus
from hutch.core.grpc_runtime import serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.v1 import usage_pb2_grpc
from hutch_billing_meter import store
from hutch_billing_meter.domain.catalogue import PriceBooks
from hutch_billing_meter.domain.presets import PRESETS
from hutch_billing_meter.feeds import consumers, feeds
from hutch_billing_meter.grpc_api import UsageServicer
from hutch_billing_meter.service import UsageService
from hutch_billing_meter.settings import BillingMeterSettings

__all__ = ["SCHEMA", "consumers", "price_books", "run", "run_until"]

log = logging.getLogger(__name__)

SCHEMA = "billing"
PRUNE_EVERY_S = 3600.0


def price_books(settings: BillingMeterSettings) -> PriceBooks:
    options = settings.billing
    return PriceBooks([*PRESETS, *(book.book() for book in options.price_books)], options.default_price_book)


async def run(settings: BillingMeterSettings) -> None:
    await run_until(settings, shutdown_on_signals())


async def run_until(settings: BillingMeterSettings, shutdown: asyncio.Event) -> None:
    """Serves the Usage API and feeds every region's usage into the ledger until `shutdown` is set."""
    token = settings.internal_token.get_secret_value()
    if not token:
        # The Usage API trusts the tenant its caller names; only the gateway may be that caller.
        raise errors.FailedPrecondition("HUTCH_INTERNAL_TOKEN must be set: the Usage API serves the gateway only")
    books = price_books(settings)
    region = settings.region
    retention = timedelta(days=settings.billing.dedup_retention_days)
    with telemetry.tracing(settings.telemetry, "billing-meter", region):
        async with (
            db.pool(settings.postgres, SCHEMA) as pool,
            Bus.connect(settings.nats, region, "billing-meter") as bus,
        ):
            await db.migrate(pool, SCHEMA, db.load_migrations("hutch_billing_meter", SCHEMA))
            service = UsageService(pool, books, region)
            server = await serve(
                settings.grpc,
                [(usage_pb2_grpc.add_UsageServicer_to_server, UsageServicer(service), "hutch.v1.Usage")],
                internal_token=token,
            )
            regions = settings.all_regions()
            log.info("billing-meter serving on port %d (region %s, usage of %s)", server.port, region, regions)
            try:
                await supervise(
                    shutdown,
                    *feeds(bus, pool, regions, retention, settings.billing.batch_size, shutdown),
                    _prune(pool, retention, shutdown),
                )
            finally:
                await server.stop()


async def _prune(pool: asyncpg.Pool, retention: timedelta, stop: asyncio.Event) -> None:
    """Forgets processed event ids past the retention, once an hour."""
    while not stop.is_set():
        try:
            removed = await store.prune_processed(pool, datetime.now(UTC) - retention)
            if removed:
                log.info("forgot %d processed usage event ids older than %s", removed, retention)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("pruning processed event ids failed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY_S)
