"""Snapshots through the real snapshot-store: taken on one node, restored on another that has never
seen them (downloaded, unpacked, and for gVisor resumed from the checkpoint image)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import node_options, running_node
from test_node_snapshots import COUNTER, LISTING, SETUP, counter, request, sh

from hutch.core import errors
from hutch.testing.snapshot_store import TOKEN, Store, served, store_settings
from hutch_node_agent.node import Node
from hutch_node_agent.snapshot_store_link import StoreLink

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with served(store_settings(postgres_dsn, s3_server, s3_bucket, tmp_path / "regional")) as running:
        yield running


@pytest.fixture
async def nodes(store: Store, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    links = [await StoreLink.open(store.address, TOKEN, tmp_path / f"chunks-{n}", 2**28) for n in "ab"]
    try:
        async with (
            running_node(node_options(tmp_path / "a"), snapshot_store=links[0]) as a,
            running_node(node_options(tmp_path / "b"), snapshot_store=links[1]) as b,
        ):
            yield a, b
    finally:
        for link in links:
            await link.close()


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
async def test_a_snapshot_taken_on_one_node_starts_a_sandbox_on_another(
    nodes: tuple[Node, Node], isolation: str
) -> None:
    a, b = nodes
    parent = f"sb-{uuid.uuid4().hex[:20]}"
    await a.manager.create(request(parent, isolation))
    await sh(a, parent, SETUP)
    await a.manager.supervisor(parent).exec({"cmd": COUNTER, "background": True, "env": {}})
    await asyncio.sleep(0.4)
    before = await sh(a, parent, LISTING)
    record = await a.snapshots.take(parent)
    assert record.committed and record.logical_bytes > 300_000

    child = f"sb-{uuid.uuid4().hex[:20]}"
    await b.manager.create(request(child, isolation), await b.snapshots.source("t", record.id, isolation))
    assert await sh(b, child, LISTING) == before
    if isolation == "gvisor":
        first = await counter(b, child)
        await asyncio.sleep(0.3)
        assert await counter(b, child) > first  # the process came along and runs on node b


async def test_a_paused_sandbox_resumes_on_another_node_before_its_upload_finished(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
    await a.manager.create(request(sandbox_id, "container"))
    await sh(a, sandbox_id, "head -c 2000000 /dev/urandom > /root/big && md5sum /root/big > /root/sum")
    record = await a.snapshots.take(sandbox_id, purpose="pause", stop=True, wait=False)
    # Node b waits for the store to hold it, then downloads it.
    await b.manager.create(request(sandbox_id, "container"), await b.snapshots.source("t", record.id, "container"))
    assert "OK" in await sh(b, sandbox_id, "md5sum -c /root/sum")


async def test_another_tenant_cannot_restore_a_snapshot(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    parent = f"sb-{uuid.uuid4().hex[:20]}"
    await a.manager.create(request(parent, "container"))
    record = await a.snapshots.take(parent)
    with pytest.raises(errors.NotFound):
        await b.snapshots.source("another-tenant", record.id, "container")
