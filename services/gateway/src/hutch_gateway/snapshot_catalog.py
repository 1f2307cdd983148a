"""hutch.v1.Snapshots: a tenant's snapshots as the snapshot-store keeps them.

Every call acts for the caller's tenant only. Deleting a snapshot that holds a paused sandbox is
refused: that snapshot is the sandbox.
"""

from __future__ import annotations

import asyncpg

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2
from hutch.v1 import snapshot_pb2
from hutch_gateway import convert, store
from hutch_gateway.janitor import SnapshotJanitor
from hutch_gateway.service import SandboxService
from hutch_gateway.snapshot_rules import parse_spec
from hutch_gateway.snapshot_store import SnapshotStoreChannel

MAX_PAGE_SIZE = 1000


def describe(manifest: snapshot_store_pb2.SnapshotManifest, region: str) -> snapshot_pb2.Snapshot:
    """The public Snapshot for a manifest stored in `region`; a spec the gateway cannot read leaves
    template and class empty."""
    memory = manifest.kind == snapshot_store_pb2.SNAPSHOT_KIND_MEMORY
    try:
        spec = parse_spec(manifest.spec, memory=memory, snapshot_id=manifest.id)
    except errors.Internal:
        return convert.snapshot(manifest, "", "", region)
    return convert.snapshot(manifest, spec.template, spec.isolation, region)


class SnapshotCatalog:
    def __init__(
        self,
        db: asyncpg.Pool,
        snapshot_store: SnapshotStoreChannel,
        sandboxes: SandboxService,
        janitor: SnapshotJanitor,
    ) -> None:
        self._db = db
        self._store = snapshot_store
        self._sandboxes = sandboxes
        self._janitor = janitor
        self._region = sandboxes.region

    async def list(
        self, tenant_id: str, sandbox: str, purposes: list[int], page_size: int, page_token: str
    ) -> snapshot_pb2.ListSnapshotsResponse:
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"page_size may be at most {MAX_PAGE_SIZE}")
        sandbox_id = (await self._sandboxes.get(tenant_id, sandbox)).id if sandbox else ""
        found = await self._store.list(
            tenant_id,
            sandbox_id=sandbox_id,
            purposes=convert.purposes(purposes),
            page_size=page_size or 100,
            page_token=page_token,
        )
        return snapshot_pb2.ListSnapshotsResponse(
            snapshots=[describe(m, self._region) for m in found.snapshots], next_page_token=found.next_page_token
        )

    async def get(self, tenant_id: str, ref: str) -> snapshot_pb2.Snapshot:
        return describe(await self._manifest(tenant_id, ref), self._region)

    @property
    def region(self) -> str:
        return self._region

    async def copy(self, tenant_id: str, ref: str, from_region: str) -> snapshot_pb2.Snapshot:
        """Brings the tenant's snapshot `ref` of `from_region` into this region (a no-op when it is here)."""
        if not ref:
            raise errors.InvalidArgument("no snapshot given: pass its id or name")
        if not from_region or from_region == self._region:
            raise errors.InvalidArgument(
                f"the snapshot is to be copied into region {self._region!r}: name the region it is in (from_region)"
            )
        self._store.require()
        return describe(await self._store.import_from(tenant_id, ref, from_region), self._region)

    async def delete(self, tenant_id: str, ref: str) -> None:
        # Checked before the lookup too: a pause snapshot may still be uploading, and the store does
        # not show it yet, but it already holds its sandbox.
        await self._refuse_if_holding(tenant_id, ref)
        manifest = await self._manifest(tenant_id, ref)
        await self._refuse_if_holding(tenant_id, manifest.id)
        await self._store.delete(tenant_id, manifest.id)
        self._janitor.drop_copies(manifest.id)

    async def _refuse_if_holding(self, tenant_id: str, snapshot_id: str) -> None:
        holder = await store.held_by_snapshot(self._db, tenant_id, snapshot_id)
        if holder is not None:
            raise errors.FailedPrecondition(
                f"snapshot {snapshot_id} holds paused sandbox {holder}: resume or kill that sandbox instead"
            )

    async def usage(self, tenant_id: str) -> snapshot_pb2.SnapshotUsage:
        usage = await self._store.usage(tenant_id)
        return snapshot_pb2.SnapshotUsage(
            snapshots=usage.snapshots,
            logical_bytes=usage.logical_bytes,
            stored_bytes=usage.stored_bytes,
            cached_bytes=usage.cached_bytes,
        )

    async def _manifest(self, tenant_id: str, ref: str) -> snapshot_store_pb2.SnapshotManifest:
        if not ref:
            raise errors.NotFound("no snapshot given: pass its id or name")
        return await self._store.get(tenant_id, ref)
