"""The snapshot-store served in this process against a test's PostgreSQL and S3 servers.

Shared by the store's own tests and by node-agent tests that move snapshots between nodes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
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
        from hutch.local.ports import free_port

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
        from hutch.local.health import grpc_serving
        from hutch.snapshots.client import SnapshotStoreClient

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
