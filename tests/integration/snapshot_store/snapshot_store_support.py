"""The snapshot-store served in-process (or as a process) against the test's PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from hutch.local.health import grpc_serving
from hutch.local.ports import free_port
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import ChunkingParams
from hutch.snapshots.client import SnapshotStoreClient
from hutch.snapshots.writer import SnapshotWriter, WriteResult, WriterOptions
from hutch.testing.snapshot_store import TOKEN
from hutch_snapshot_store.settings import SnapshotStoreSettings

# Small chunks: a few MiB of test data still make dozens of chunks.
SMALL_CHUNKS = ChunkingParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
WRITER_OPTIONS = WriterOptions(chunking=SMALL_CHUNKS, read_block_bytes=256 * 1024)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def change_percent(data: bytes, percent: float, seed: int) -> bytes:
    """`data` with `percent` of it overwritten in a few places spread over it."""
    rng = random.Random(seed)
    out = bytearray(data)
    spots = 4
    span = int(len(data) * percent / 100 / spots)
    for _ in range(spots):
        start = rng.randrange(0, len(data) - span)
        out[start : start + span] = rng.randbytes(span)
    return bytes(out)


async def write_snapshot(
    client: SnapshotStoreClient,
    tenant: str,
    streams: dict[str, bytes],
    *,
    cache: ChunkCache | None = None,
    name: str = "",
    **kwargs: Any,
) -> WriteResult:
    async with SnapshotWriter(client, tenant, name=name, cache=cache, options=WRITER_OPTIONS, **kwargs) as writer:
        for stream_name, data in streams.items():
            await writer.add_bytes(stream_name, data)
        return await writer.commit()


def tenant_id() -> str:
    return "tn-" + os.urandom(5).hex()


@asynccontextmanager
async def database(dsn: str) -> AsyncIterator[Any]:
    """A plain connection to the store's schema, to look at (or lock) its rows from the side."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "snapshots,public"})
    try:
        yield conn
    finally:
        await conn.close()


async def assert_every_row_has_its_object(dsn: str, s3: Any, bucket: str) -> None:
    """The store's invariants: every chunk row's object exists, every committed chunk has its row."""
    async with database(dsn) as conn:
        rows = await conn.fetch("SELECT tenant_id, hash, generation FROM chunks")
        missing_rows = await conn.fetchval(
            """SELECT count(*) FROM snapshots s JOIN snapshot_streams st ON st.snapshot_id = s.id
               CROSS JOIN LATERAL generate_series(0, length(st.hashes) / 32 - 1) AS i
               WHERE s.state = 'committed' AND NOT EXISTS (
                   SELECT 1 FROM chunks c WHERE c.tenant_id = s.tenant_id
                   AND c.hash = substring(st.hashes FROM i * 32 + 1 FOR 32))"""
        )
    objects = {o.object_name for o in s3.client().list_objects(bucket, prefix="chunks/", recursive=True)}
    for row in rows:
        digest = bytes(row["hash"]).hex()
        key = f"chunks/{row['tenant_id']}/{digest[:2]}/{digest}.{row['generation']}"
        assert key in objects, f"chunk row without its object: {key}"
    assert missing_rows == 0, f"{missing_rows} chunks of committed snapshots have no row"


def chunk_objects(s3: Any, bucket: str, tenant: str) -> set[str]:
    return {o.object_name for o in s3.client().list_objects(bucket, prefix=f"chunks/{tenant}/", recursive=True)}


def service_env(settings: SnapshotStoreSettings, port: int) -> dict[str, str]:
    """The HUTCH_* environment that gives a `hutch-snapshot-store` process these settings."""
    options = settings.snapshot_store
    return {
        "HUTCH_INTERNAL_TOKEN": TOKEN,
        "HUTCH_LOG_LEVEL": "INFO",
        "HUTCH_POSTGRES__DSN": settings.postgres.dsn.get_secret_value(),
        "HUTCH_S3__ENDPOINT": settings.s3.endpoint,
        "HUTCH_S3__ACCESS_KEY": settings.s3.access_key.get_secret_value(),
        "HUTCH_S3__SECRET_KEY": settings.s3.secret_key.get_secret_value(),
        "HUTCH_S3__BUCKET": settings.s3.bucket,
        "HUTCH_GRPC__PORT": str(port),
        "HUTCH_SNAPSHOT_STORE__MASTER_KEY": options.master_key.get_secret_value(),
        "HUTCH_SNAPSHOT_STORE__CACHE_DIR": str(options.cache_dir),
        "HUTCH_SNAPSHOT_STORE__CACHE_BYTES": str(options.cache_bytes),
        "HUTCH_SNAPSHOT_STORE__GC_GRACE_S": str(options.gc_grace_s),
        "HUTCH_SNAPSHOT_STORE__ORPHAN_GRACE_S": str(options.orphan_grace_s),
        "HUTCH_SNAPSHOT_STORE__GC_INTERVAL_S": str(options.gc_interval_s),
        "HUTCH_SNAPSHOT_STORE__S3_TIMEOUT_S": str(options.s3_timeout_s),
    }


class ServiceProcess:
    """`hutch-snapshot-store` as a child process that a test may SIGKILL."""

    def __init__(self, settings: SnapshotStoreSettings, log_path: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.log_path = log_path
        self.process: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
        env.update(service_env(self.settings, self.port))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hutch_snapshot_store"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    async def start(self) -> SnapshotStoreClient:
        self._spawn()
        for _ in range(600):
            if self.process.poll() is not None:
                raise RuntimeError(f"the snapshot-store exited: {self.log_path.read_text()[-3000:]}")
            if await asyncio.to_thread(grpc_serving, self.address, 0.5):
                return SnapshotStoreClient.connect(self.address, TOKEN, timeout_s=30)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the snapshot-store did not start: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
