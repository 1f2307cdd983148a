"""The snapshot-store served in this process against a test's PostgreSQL and S3 servers.

Shared by the store's own tests and by node-agent tests that move snapshots between nodes.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.snapshots.client import SnapshotStoreClient
    from hutch_snapshot_store.app import Running
    from hutch_snapshot_store.settings import SnapshotStoreSettings

TOKEN = "test-internal-token"


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def store_settings(postgres_dsn: str, s3: Any, bucket: str, cache_dir: Path, **options: Any) -> SnapshotStoreSettings:
    from hutch.core.config import GrpcSettings, PostgresSettings, S3Settings
    from hutch.snapshots.client import MAX_MESSAGE_BYTES
    from hutch_snapshot_store.settings import SnapshotStoreOptions, SnapshotStoreSettings

    values: dict[str, Any] = {
        "master_key": new_master_key(),
        "cache_dir": cache_dir,
        "cache_bytes": 256 * 1024 * 1024,
        "gc_interval_s": 3600,
        "s3_timeout_s": 5,
    }
    values.update(options)
    return SnapshotStoreSettings(
        internal_token=TOKEN,  # type: ignore[arg-type]
        postgres=PostgresSettings(dsn=postgres_dsn),  # type: ignore[arg-type]
        s3=S3Settings(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, bucket=bucket),
        grpc=GrpcSettings(port=0, max_message_bytes=MAX_MESSAGE_BYTES, shutdown_grace_s=0.5),
        snapshot_store=SnapshotStoreOptions(**values),
    )


@dataclass
class Store:
    settings: SnapshotStoreSettings
    running: Running
    client: SnapshotStoreClient

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.server.port}"


@asynccontextmanager
async def served(settings: SnapshotStoreSettings) -> AsyncIterator[Store]:
    from hutch.snapshots.client import SnapshotStoreClient
    from hutch_snapshot_store.app import running

    async with running(settings) as service:
        client = SnapshotStoreClient.connect(f"127.0.0.1:{service.server.port}", TOKEN)
        try:
            yield Store(settings, service, client)
        finally:
            await client.close()
