"""Wiring and lifecycle of the gateway."""

from __future__ import annotations

import logging

from hutch.core import db, events, outbox, telemetry
from hutch.core.bus import Bus, ConsumerSpec, fenced_bucket, nodes_bucket, sandbox_stream
from hutch.core.grpc_runtime import serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.core.nodes import NodeDirectory
from hutch.v1 import (
    files_pb2_grpc,
    network_pb2_grpc,
    nodes_pb2_grpc,
    process_pb2_grpc,
    sandbox_pb2_grpc,
    secrets_pb2_grpc,
    snapshot_pb2_grpc,
    templates_pb2_grpc,
    usage_pb2_grpc,
)
from hutch_gateway import egress_projection, moves, sleep, store, tenants
from hutch_gateway.auth import Authenticator
from hutch_gateway.changes import ChangeFeed
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import Limits
from hutch_gateway.fleet import NodesServicer
from hutch_gateway.fleet_metrics import SandboxStates
from hutch_gateway.grpc_api import (
    FilesServicer,
    ProcessesServicer,
    SandboxesServicer,
    SnapshotsServicer,
    TemplatesServicer,
)
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.lost_recovery import LostRecovery
from hutch_gateway.network_api import NetworkServicer
from hutch_gateway.network_service import NetworkService
from hutch_gateway.node_snapshots import NodeSnapshotCalls
from hutch_gateway.preview import PreviewSite, derive_secret
from hutch_gateway.preview_edge import PreviewEdge
from hutch_gateway.projection import SandboxProjection
from hutch_gateway.region_index import SandboxIndex
from hutch_gateway.region_peers import PeerGateways
from hutch_gateway.region_router import RegionRouter
from hutch_gateway.resize import SandboxResizer
from hutch_gateway.sandbox_snapshots import SandboxSnapshots
from hutch_gateway.secrets_proxy import BrokerChannel, SecretsProxy
from hutch_gateway.service import SandboxService
from hutch_gateway.settings import GatewaySettings
from hutch_gateway.snapshot_catalog import SnapshotCatalog
from hutch_gateway.snapshot_store import SnapshotStoreChannel
from hutch_gateway.templates import TemplateService
from hutch_gateway.usage_proxy import BillingChannel, UsageProxy
from hutch_gateway.warm_pool import WarmPools

log = logging.getLogger(__name__)

SCHEMA = "gateway"


async def run(settings: GatewaySettings) -> None:
    shutdown = shutdown_on_signals()
    options, region = settings.gateway, settings.region
    with telemetry.tracing(settings.telemetry, "gateway", region):
        async with (
            db.pool(settings.postgres, SCHEMA) as pool,
            Bus.connect(settings.nats, region, "gateway") as bus,
        ):
            await db.migrate(pool, SCHEMA, [*outbox.MIGRATIONS, *db.load_migrations("hutch_gateway", SCHEMA)])
            bootstrap_key = options.bootstrap_api_key.get_secret_value()
            if bootstrap_key:
                await tenants.ensure_tenant_with_key(pool, options.bootstrap_tenant, bootstrap_key)

            relay = outbox.OutboxRelay(pool, bus)
            feed = ChangeFeed(settings.postgres.dsn.get_secret_value())
            # A node the scheduler fenced (declared lost) is unreachable whatever its heartbeats say.
            nodes = NodeDirectory(
                await bus.kv(nodes_bucket(region)), options.node_grace_s, fenced=await bus.kv(fenced_bucket(region))
            )
            channels = NodeChannels(settings.internal_token.get_secret_value(), settings.grpc.max_message_bytes)
            preview = PreviewSite(
                domain=options.preview_domain,
                scheme=options.preview_scheme,
                port=options.preview_url_port or options.preview_port,
                secret=derive_secret(
                    options.preview_secret.get_secret_value(), settings.internal_token.get_secret_value()
                ),
            )
            snapshot_store = SnapshotStoreChannel(
                options.snapshot_store_address, settings.internal_token.get_secret_value()
            )
            node_snapshots = NodeSnapshotCalls(channels, nodes, options.snapshot_timeout_s)
            janitor = SnapshotJanitor(snapshot_store, node_snapshots)
            pools = WarmPools(pool, relay, nodes, channels, region)
            peers = PeerGateways(region, options.peer_gateways, settings.grpc.max_message_bytes)
            index = SandboxIndex(region, peers.regions, bus.kv, bus.js.key_value)
            if peers.regions:
                await index.open()
            service = SandboxService(
                pool,
                relay,
                feed,
                nodes,
                options,
                region,
                preview,
                snapshots=snapshot_store,
                janitor=janitor,
                pools=pools,
                index=index,
            )
            sandbox_snapshots = SandboxSnapshots(
                pool, relay, feed, service, node_snapshots, snapshot_store, janitor, options, region
            )
            service.wake_with(sandbox_snapshots.resume)
            catalog = SnapshotCatalog(pool, snapshot_store, service, janitor)
            auth = Authenticator(lambda digest: store.tenant_for_key_hash(pool, digest), options.api_key_cache_s)
            limits = Limits(options.max_cpu_millis, options.max_memory_mb)
            templates = TemplateService(pool, nodes, channels)
            billing = BillingChannel(
                options.billing_meter_address,
                settings.internal_token.get_secret_value(),
                settings.grpc.max_message_bytes,
            )
            broker = BrokerChannel(options.secrets_broker_address, settings.internal_token.get_secret_value())
            network = NetworkService(pool, relay, service, region)

            server = await serve(
                settings.grpc,
                [
                    (
                        sandbox_pb2_grpc.add_SandboxesServicer_to_server,
                        SandboxesServicer(
                            auth,
                            service,
                            limits,
                            sandbox_snapshots,
                            SandboxResizer(pool, relay, service, nodes, channels, region),
                        ),
                        "hutch.v1.Sandboxes",
                    ),
                    (
                        nodes_pb2_grpc.add_NodesServicer_to_server,
                        NodesServicer(auth, pool, nodes, region),
                        "hutch.v1.Nodes",
                    ),
                    (
                        process_pb2_grpc.add_ProcessesServicer_to_server,
                        ProcessesServicer(auth, service, channels),
                        "hutch.v1.Processes",
                    ),
                    (
                        files_pb2_grpc.add_FilesServicer_to_server,
                        FilesServicer(auth, service, channels),
                        "hutch.v1.Files",
                    ),
                    (
                        templates_pb2_grpc.add_TemplatesServicer_to_server,
                        TemplatesServicer(auth, templates),
                        "hutch.v1.Templates",
                    ),
                    (usage_pb2_grpc.add_UsageServicer_to_server, UsageProxy(auth, billing), "hutch.v1.Usage"),
                    (secrets_pb2_grpc.add_SecretsServicer_to_server, SecretsProxy(auth, broker), "hutch.v1.Secrets"),
                    (
                        network_pb2_grpc.add_NetworkServicer_to_server,
                        NetworkServicer(auth, network),
                        "hutch.v1.Network",
                    ),
                    (
                        snapshot_pb2_grpc.add_SnapshotsServicer_to_server,
                        SnapshotsServicer(auth, catalog),
                        "hutch.v1.Snapshots",
                    ),
                ],
                interceptors=[RegionRouter(index, peers, auth)] if peers.regions else [],
            )
            projection = ConsumerSpec(
                stream=sandbox_stream(region),
                durable="gateway",
                filter_subjects=tuple(
                    kind.subject(region)
                    for kind in (
                        events.SANDBOX_PLACED,
                        events.SANDBOX_STARTED,
                        events.SANDBOX_FAILED,
                        events.SANDBOX_STOPPED,
                        events.SANDBOX_RESIZED,
                    )
                ),
            )
            edge = None
            if options.preview_port:
                edge = await PreviewEdge(preview, service, auth, channels, pool).start(
                    options.preview_host, options.preview_port
                )
                log.info("preview edge on %s:%d for *.%s", options.preview_host, options.preview_port, preview.domain)
            log.info(
                "gateway serving on port %d (region %s; other regions: %s)",
                server.port,
                region,
                ", ".join(peers.regions) or "none",
            )
            try:
                await supervise(
                    shutdown,
                    relay.run(shutdown),
                    feed.run(shutdown),
                    nodes.run(shutdown),
                    pools.run(shutdown),
                    bus.consume(
                        projection,
                        SandboxProjection(pool, relay, region, janitor, LostRecovery(snapshot_store)),
                        shutdown,
                    ),
                    bus.consume(egress_projection.consumer(region), egress_projection.EgressProjection(pool), shutdown),
                    egress_projection.prune(pool, region, shutdown),
                    # Counting sandboxes by state is only worth its query when something exports it.
                    *(
                        [SandboxStates(pool, region, settings.telemetry.metrics_interval_s).run(shutdown)]
                        if settings.telemetry.exporter != "none"
                        else []
                    ),
                    bus.consume(sleep.consumer(region), sleep.SleepConsumer(sandbox_snapshots), shutdown),
                    bus.consume(moves.consumer(region), moves.MoveConsumer(sandbox_snapshots), shutdown),
                    *([index.run_sync(lambda: store.live_in_region(pool, region), shutdown)] if peers.regions else []),
                )
            finally:
                if edge is not None:
                    edge.close()
                await server.stop()
                await janitor.close()
                await channels.close()
                await billing.close()
                await broker.close()
                await snapshot_store.close()
                await peers.close()
