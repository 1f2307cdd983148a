from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hutch.testing.snapshot_store import Store, served, store_settings


@pytest.fixture
async def store(postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Store]:
    """The snapshot-store in this process, with no grace period for garbage."""
    settings = store_settings(postgres_dsn, s3_server, s3_bucket, tmp_path / "regional-cache", gc_grace_s=0)
    async with served(settings) as running:
        yield running
