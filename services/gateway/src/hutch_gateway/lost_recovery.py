"""What becomes of a sandbox whose node was lost: started again elsewhere from its latest snapshot,
when it has one newer than the start it was running, or else reported lost.

The restart is a start of its own (an incarnation named by that snapshot, as a resume is), so its
events never collide with those of the start that was lost. Only a snapshot newer than the lost
start counts: restarting from an older one would silently take the sandbox back in time past work
its owner saw it do (its own start snapshot, for one, cannot be used: its incarnation is taken).
"""

from __future__ import annotations

import logging

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch_gateway.domain import SandboxRecord, start_snapshot
from hutch_gateway.snapshot_store import SnapshotStoreChannel

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
MAX_PAGES = 20


class LostRecovery:
    def __init__(self, snapshots: SnapshotStoreChannel) -> None:
        self._snapshots = snapshots

    async def snapshot_to_restart_from(self, record: SandboxRecord) -> str | None:
        """The sandbox's newest committed snapshot, unless that is the one its lost start came from."""
        if not self._snapshots.configured:
            return None
        newest: pb.SnapshotManifest | None = None
        token = ""
        try:
            for _ in range(MAX_PAGES):
                page = await self._snapshots.list(
                    record.tenant_id, sandbox_id=record.id, page_size=PAGE_SIZE, page_token=token
                )
                for manifest in page.snapshots:
                    if newest is None or manifest.created_at.ToNanoseconds() >= newest.created_at.ToNanoseconds():
                        newest = manifest
                token = page.next_page_token
                if not token:
                    break
        except errors.HutchError as exc:
            log.warning("cannot look up snapshots of lost sandbox %s: %s", record.id, exc.message)
            return None
        if newest is None or newest.id == start_snapshot(record.incarnation):
            return None
        return newest.id
