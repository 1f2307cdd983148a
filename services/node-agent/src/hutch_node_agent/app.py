"""Wiring and lifecycle of the node-agent process."""

from __future__ import annotations

import asyncio
import logging

from hutch.core import telemetry
from hutch.core.bus import Bus, ConsumerSpec, node_command_stream, nodes_bucket
from hutch.core.events import node_command_subject
from hutch.core.grpc_runtime import serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.internal.v1 import node_agent_pb2_grpc
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.events_out import NodeEvents
from hutch_node_agent.grpc_api import NodeAgentServicer
from hutch_node_agent.handlers import CommandHandler
from hutch_node_agent.heartbeat import Heartbeat
from hutch_node_agent.node import assemble
from hutch_node_agent.settings import NodeAgentSettings

log = logging.getLogger(__name__)


async def run(settings: NodeAgentSettings) -> None:
    options = settings.node
    shutdown = shutdown_on_signals()
    with telemetry.tracing(settings.telemetry, "node-agent", settings.region):
        async with Bus.connect(settings.nats, settings.region, f"node-agent-{options.id}") as bus:
            node_events = NodeEvents(bus, options.id)
            # Set by whatever changes what the node holds, so the next heartbeat goes out at once.
            changed = asyncio.Event()

            async def on_stopped(sandbox: LocalSandbox, reason: str) -> None:
                await node_events.stopped(sandbox.id, sandbox.request.tenant_id, reason)
                changed.set()

            node = await assemble(options, on_stopped, node_events.timeout_warning)
            for ended in await node.manager.recover():
                await node_events.stopped(ended.id, ended.request.tenant_id, "exited")

            heartbeat = Heartbeat(
                await bus.kv(nodes_bucket(settings.region)),
                options,
                settings.region,
                node.manager,
                node.templates,
                sorted(node.runtimes),
                changed,
            )
            token = settings.internal_token.get_secret_value()
            servicer = NodeAgentServicer(node.manager, options, node.templates, heartbeat.beat)
            server = await serve(
                settings.grpc,
                [(node_agent_pb2_grpc.add_NodeAgentServicer_to_server, servicer, "hutch.internal.v1.NodeAgent")],
                internal_token=token or None,
            )
            address = f"{options.advertise_host}:{server.port}"
            heartbeat.address = address
            commands = ConsumerSpec(
                stream=node_command_stream(settings.region),
                durable=f"node-{options.id}",
                filter_subjects=(node_command_subject(settings.region, options.id),),
                max_in_flight=16,
            )
            handler = CommandHandler(node.manager, node_events, changed)
            log.info("node-agent %s serving on %s (region %s)", options.id, address, settings.region)
            try:
                await supervise(shutdown, heartbeat.run(shutdown), bus.consume(commands, handler, shutdown))
            finally:
                await server.stop()
                await node.close()
