"""Wiring and lifecycle of the scheduler."""

from __future__ import annotations

import logging

from hutch.core import db, events, outbox, telemetry
from hutch.core.bus import Bus, ConsumerSpec, fenced_bucket, node_command_stream, nodes_bucket, sandbox_stream
from hutch.core.grpc_runtime import serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.core.nodes import NodeDirectory
from hutch_scheduler.handlers import SchedulerHandler
from hutch_scheduler.node_loss import NodeLossWatcher
from hutch_scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

SCHEMA = "scheduler"


async def run(settings: SchedulerSettings) -> None:
    shutdown = shutdown_on_signals()
    region = settings.region
    with telemetry.tracing(settings.telemetry, "scheduler", region):
        async with (
            db.pool(settings.postgres, SCHEMA) as pool,
            Bus.connect(settings.nats, region, "scheduler") as bus,
        ):
            await db.migrate(pool, SCHEMA, [*outbox.MIGRATIONS, *db.load_migrations("hutch_scheduler", SCHEMA)])
            relay = outbox.OutboxRelay(pool, bus)
            options = settings.scheduler
            heartbeats, fences = await bus.kv(nodes_bucket(region)), await bus.kv(fenced_bucket(region))
            nodes = NodeDirectory(heartbeats, options.node_grace_s, fenced=fences)
            handler = SchedulerHandler(pool, nodes, relay, region, options)

            async def drop_commands(node_id: str) -> None:
                await bus.js.purge_stream(
                    node_command_stream(region).name, subject=events.node_command_subject(region, node_id)
                )

            losses = NodeLossWatcher(
                pool, nodes, heartbeats, fences, relay, region, options.node_lost_after_s, drop_commands
            )
            consumer = ConsumerSpec(
                stream=sandbox_stream(region),
                durable="scheduler",
                filter_subjects=tuple(
                    kind.subject(region)
                    for kind in (
                        events.SANDBOX_REQUESTED,
                        events.SANDBOX_KILL_REQUESTED,
                        events.SANDBOX_STOPPED,
                        events.SANDBOX_FAILED,
                        events.SANDBOX_PAUSED,
                        events.SANDBOX_RESIZED,
                    )
                ),
            )
            server = await serve(settings.grpc, [])
            log.info("scheduler serving health on port %d (region %s)", server.port, region)
            try:
                await supervise(
                    shutdown,
                    nodes.run(shutdown),
                    relay.run(shutdown),
                    losses.run(shutdown, options.node_loss_check_s),
                    _consume_when_loaded(bus, nodes, consumer, handler, shutdown),
                )
            finally:
                await server.stop()


async def _consume_when_loaded(
    bus: Bus, nodes: NodeDirectory, consumer: ConsumerSpec, handler: SchedulerHandler, stop: object
) -> None:
    # Placing before the node directory has read every heartbeat would refuse sandboxes that fit.
    try:
        await nodes.loaded(timeout_s=10)
    except TimeoutError:
        log.warning("node directory not loaded after 10 s; placing with what is known")
    await bus.consume(consumer, handler, stop)  # type: ignore[arg-type]
