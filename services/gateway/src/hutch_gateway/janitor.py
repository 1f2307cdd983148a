"""Deleting snapshots nobody needs any more, in the background.

A pause snapshot goes when its sandbox is paused again or ends; a fork's snapshot once its children
have started; a deleted snapshot's copies on the nodes right after the delete. None of that may hold
up the call that caused it, and a failure only leaves storage behind, so it runs best effort: the
nodes drop their copies first (which also stops an upload still under way), then the store deletes
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from hutch.core import errors
from hutch_gateway.node_snapshots import NodeSnapshotCalls
from hutch_gateway.snapshot_store import SnapshotStoreChannel

log = logging.getLogger(__name__)


class SnapshotJanitor:
    def __init__(self, store: SnapshotStoreChannel, nodes: NodeSnapshotCalls) -> None:
        self._store = store
        self._nodes = nodes
        self._tasks: set[asyncio.Task[None]] = set()

    def forget(self, tenant_id: str, snapshot_id: str) -> None:
        """Deletes the snapshot from the nodes and the store."""
        self._spawn(self._forget(tenant_id, snapshot_id, in_store=True))

    def drop_copies(self, snapshot_id: str) -> None:
        """Only the nodes' copies (the store has deleted the snapshot already)."""
        self._spawn(self._forget("", snapshot_id, in_store=False))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, tenant_id: str, snapshot_id: str, *, in_store: bool) -> None:
        if not snapshot_id:
            return
        try:
            await self._nodes.drop_everywhere(snapshot_id)
            if in_store and self._store.configured:
                await self._store.delete(tenant_id, snapshot_id)
            log.info("snapshot %s deleted", snapshot_id)
        except errors.NotFound:
            pass
        except Exception as exc:
            log.warning("snapshot %s was not deleted: %r", snapshot_id, exc)

    async def idle(self) -> None:
        """Waits until the work started so far has finished (for tests and orderly shutdowns)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
