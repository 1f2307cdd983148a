"""Wiring and lifecycle of the snapshot-store."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hutch.core import db, errors, telemetry
from hutch.core.grpc_runtime import Server, serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.internal.v1 import snapshot_store_pb2_grpc
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.cache import observe as observe_cache
from hutch_snapshot_store.chunks import ChunkStore
from hutch_snapshot_store.gc import GarbageCollector
from hutch_snapshot_store.grpc_api import SnapshotStoreServicer
from hutch_snapshot_store.importer import Importer
from hutch_snapshot_store.keys import Keyring
from hutch_snapshot_store.objects import ObjectStore
from hutch_snapshot_store.peers import PeerStores
from hutch_snapshot_store.service import SnapshotService
from hutch_snapshot_store.settings import SnapshotStoreSettings

log = logging.getLogger(__name__)

SCHEMA = "snapshots"
SERVICE_NAME = "hutch.internal.v1.SnapshotStore"


@dataclass(frozen=True)
class Running:
    server: Server
    service: SnapshotService
    gc: GarbageCollector


def check_settings(settings: SnapshotStoreSettings) -> None:
    if not settings.internal_token.get_secret_value():
        # Callers name the tenant they act for; only other services may be those callers.
        raise errors.FailedPrecondition(
            "HUTCH_INTERNAL_TOKEN must be set: the snapshot-store serves other services only"
        )
    if not settings.snapshot_store.master_key.get_secret_value():
        raise errors.FailedPrecondition(
            "HUTCH_SNAPSHOT_STORE__MASTER_KEY must be set (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)"
        )


@contextlib.asynccontextmanager
async def running(settings: SnapshotStoreSettings) -> AsyncIterator[Running]:
    """The service, serving on its port, until the block ends (used by `run` and by tests)."""
    check_settings(settings)
    options = settings.snapshot_store
    objects = ObjectStore(settings.s3, options.s3_concurrency, options.s3_timeout_s)
    cpu = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="chunk-cpu")
    peers = PeerStores(options.peer_stores, settings.internal_token.get_secret_value())
    try:
        async with db.pool(settings.postgres, SCHEMA) as pool:
            await db.migrate(pool, SCHEMA, db.load_migrations("hutch_snapshot_store", SCHEMA))
            try:
                await objects.ensure_bucket()
            except errors.Unavailable as exc:
                # Reads from the regional cache and every metadata call still work; writes will say why not.
                log.warning("S3 is not reachable at start: %s", exc.message)
            keys = Keyring(pool, options.master_key_bytes(), options.previous_master_key_bytes())
            cache = await ChunkCache.open(options.cache_dir, options.cache_bytes)
            observe_cache(cache, "regional")
            chunks = ChunkStore(pool, objects, keys, cache, cpu, options.orphan_grace_s)
            gc = GarbageCollector(pool, objects, chunks, options.gc_grace_s, options.gc_batch)
            service = SnapshotService(pool, chunks, gc, options.pending_lease_s)
            importer = Importer(service, peers)
            servicer = SnapshotStoreServicer(service, importer, options.max_hashes_per_call, options.max_page_size)
            server = await serve(
                settings.grpc,
                [(snapshot_store_pb2_grpc.add_SnapshotStoreServicer_to_server, servicer, SERVICE_NAME)],
                internal_token=settings.internal_token.get_secret_value(),
            )
            try:
                yield Running(server, service, gc)
            finally:
                await server.stop()
                await peers.close()
    finally:
        cpu.shutdown(wait=False, cancel_futures=True)
        objects.close()


async def run(settings: SnapshotStoreSettings) -> None:
    shutdown = shutdown_on_signals()
    with telemetry.tracing(settings.telemetry, "snapshot-store", settings.region):
        async with running(settings) as service:
            log.info(
                "snapshot-store serving on port %d (region %s, bucket %s)",
                service.server.port,
                settings.region,
                settings.s3.bucket,
            )
            await supervise(shutdown, service.gc.run(shutdown, settings.snapshot_store.gc_interval_s))
