"""Wiring and lifecycle of the node-agent process."""

from __future__ import annotations

import asyncio
import logging

from hutch.core import telemetry
from hutch.core.bus import Bus, ConsumerSpec, fenced_bucket, node_command_stream, nodes_bucket
from hutch.core.events import node_command_subject
from hutch.core.grpc_runtime import serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.internal.v1 import node_agent_pb2_grpc
from hutch_node_agent import egress_registrar
from hutch_node_agent.cgroup_limits import CgroupLimits
from hutch_node_agent.cgroup_stats import CgroupStats
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.events_out import NodeEvents
from hutch_node_agent.fencing import FENCED, FenceGuard
from hutch_node_agent.grpc_api import NodeAgentServicer
from hutch_node_agent.handlers import CommandHandler
from hutch_node_agent.heartbeat import Heartbeat
from hutch_node_agent.idle_watcher import IdleWatcher
from hutch_node_agent.memory_autoscaler import MemoryAutoscaler
from hutch_node_agent.metering import Metering
from hutch_node_agent.node import assemble
from hutch_node_agent.settings import NodeAgentSettings
from hutch_node_agent.snapshot_store_link import StoreLink

log = logging.getLogger(__name__)


async def run(settings: NodeAgentSettings) -> None:
    options = settings.node
    shutdown = shutdown_on_signals()
    with telemetry.tracing(settings.telemetry, "node-agent", settings.region):
        async with Bus.connect(settings.nats, settings.region, f"node-agent-{options.id}") as bus:
            node_events = NodeEvents(bus, options.id)
            # Set by whatever changes what the node holds, so the next heartbeat goes out at once.
            changed = asyncio.Event()
            # Tells the node's egress-proxy which sandbox holds which address (set once assembled).
            registrar: egress_registrar.EgressRegistrar | None = None

            async def on_stopped(sandbox: LocalSandbox, reason: str) -> None:
                if registrar is not None:
                    await registrar.stopped(sandbox.id)
                if reason != FENCED:  # a fenced node's sandboxes were already reported lost
                    await node_events.stopped(sandbox.id, sandbox.request.tenant_id, reason)
                changed.set()

            # Before the node is assembled: its restart recovery hands ended sandboxes to the metering.
            metering = Metering.for_node(options, settings.region, bus)
            store_link = None
            if options.snapshot_store_address:
                store_link = await StoreLink.open(
                    options.snapshot_store_address,
                    settings.internal_token.get_secret_value(),
                    options.root_dir / "chunk-cache",
                    int(options.chunk_cache_gb * 2**30),
                )

            async def on_releasing(sandbox: LocalSandbox) -> None:
                # Also on a pause, which does not stop the sandbox for good: its address goes back
                # to the pool, and the proxy must not go on taking it for this sandbox.
                await metering.release(sandbox)
                if registrar is not None:
                    await registrar.stopped(sandbox.id)

            async def on_resized(sandbox: LocalSandbox, previous: SandboxRequest) -> None:
                await metering.resized(sandbox, previous)
                changed.set()  # placement sees the new allocation with the next heartbeat, at once

            node = await assemble(
                options,
                on_stopped,
                node_events.timeout_warning,
                on_releasing=on_releasing,
                snapshot_store=store_link,
                on_resized=on_resized,
            )
            guard = FenceGuard(await bus.kv(fenced_bucket(settings.region)), options.id, node.manager)
            ended_while_away = await node.manager.recover()
            fenced = await guard.fenced()
            if fenced is not None:
                # Declared lost while away: those ends were reported as losses; the rest is stopped below.
                log.warning("node %s was declared lost at %s", options.id, fenced.fenced_at.isoformat())
            else:
                for ended in ended_while_away:
                    await node_events.stopped(ended.id, ended.request.tenant_id, "exited")

            heartbeat = Heartbeat(
                await bus.kv(nodes_bucket(settings.region)),
                options,
                settings.region,
                node.manager,
                node.templates,
                sorted(node.runtimes),
                changed,
                guard,
            )
            token = settings.internal_token.get_secret_value()
            registrar = egress_registrar.for_node(options, token, node.manager.all, node.networks)
            servicer = NodeAgentServicer(
                node.manager, options, node.templates, heartbeat.beat, node.snapshots, registrar
            )
            server = await serve(
                settings.grpc,
                [(node_agent_pb2_grpc.add_NodeAgentServicer_to_server, servicer, "hutch.internal.v1.NodeAgent")],
                internal_token=token or None,
            )
            address = f"{options.advertise_host}:{server.port}"
            heartbeat.address = address
            if fenced is not None:
                # Before taking commands or heartbeating: nothing stale may run once the node is back.
                try:
                    await heartbeat.check_fence()
                except Exception:
                    log.exception("clearing the fence failed; the heartbeat loop tries again")
            commands = ConsumerSpec(
                stream=node_command_stream(settings.region),
                durable=f"node-{options.id}",
                filter_subjects=(node_command_subject(settings.region, options.id),),
                max_in_flight=16,
            )
            idle = IdleWatcher(node.manager.activity, CgroupStats(options.cgroup_parent), node_events.idle)
            memory = MemoryAutoscaler(
                node.manager,
                CgroupLimits(options.cgroup_parent),
                node_events.grown,
                node_events.memory_capped,
                node_events.needs_room,
            )
            handler = CommandHandler(node.manager, node.snapshots, node_events, changed, registrar)
            log.info("node-agent %s serving on %s (region %s)", options.id, address, settings.region)
            try:
                await supervise(
                    shutdown,
                    heartbeat.run(shutdown),
                    bus.consume(commands, handler, shutdown),
                    metering.run(node.manager, shutdown),
                    idle.run(node.manager.all, shutdown),
                    memory.run(shutdown),
                    *([registrar.run(shutdown)] if registrar is not None else []),
                )
            finally:
                if registrar is not None:
                    await registrar.close()
                await server.stop()
                await node.close()
                if store_link is not None:
                    await store_link.close()
