"""Other regions' snapshot-stores, as an importing store calls them.

Calls carry this region's internal token, so an installation shares one token across its regions.
Failures come back as domain errors that name the region: a store that cannot be reached is
`Unavailable`, a snapshot or chunk it does not have for the tenant is `NotFound`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from hutch.core import errors
from hutch.internal.v1 import snapshot_store_pb2 as pb
from hutch.snapshots.client import SnapshotStoreClient

# The longest one call to a peer may take: a manifest, or one batch of chunks.
PEER_CALL_TIMEOUT_S = 300.0


class PeerStore:
    """One other region's snapshot-store."""

    def __init__(self, region: str, address: str, client: SnapshotStoreClient) -> None:
        self.region = region
        self.address = address
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    def _translated(self, exc: errors.HutchError, what: str) -> errors.HutchError:
        where = f"the snapshot-store of region {self.region} ({self.address})"
        if isinstance(exc, (errors.Unavailable, errors.DeadlineExceeded)):
            return errors.Unavailable(f"{where} is unreachable ({what}): {exc.message}; retry later")
        if isinstance(exc, (errors.Unauthenticated, errors.PermissionDenied)):
            return errors.FailedPrecondition(
                f"{where} refused this region's internal token: every region of an installation must share "
                "one HUTCH_INTERNAL_TOKEN"
            )
        return exc

    async def manifest(self, tenant_id: str, id_or_name: str) -> pb.SnapshotManifest:
        """The tenant's committed snapshot there, by id or name."""
        try:
            return await self._client.get(tenant_id, id_or_name)
        except errors.NotFound:
            raise errors.NotFound(f"no snapshot {id_or_name!r} in region {self.region}") from None
        except errors.HutchError as exc:
            raise self._translated(exc, f"read snapshot {id_or_name!r}") from exc

    async def chunks(self, tenant_id: str, hashes: Sequence[str]) -> AsyncIterator[pb.Chunk]:
        """The tenant's chunks there (zstd frames, decrypted), in the order asked."""
        try:
            async for chunk in self._client.get_chunks(tenant_id, hashes):
                yield chunk
        except errors.HutchError as exc:
            raise self._translated(exc, f"read {len(hashes)} chunks") from exc


class PeerStores:
    """The configured peers by region; a channel to each is opened on first use."""

    def __init__(self, addresses: Mapping[str, str], internal_token: str) -> None:
        self._addresses = dict(addresses)
        self._token = internal_token
        self._open: dict[str, PeerStore] = {}

    def get(self, region: str) -> PeerStore:
        if not region:
            raise errors.InvalidArgument("source_region is required: the region to copy the snapshot from")
        address = self._addresses.get(region)
        if address is None:
            configured = ", ".join(sorted(self._addresses)) or "none"
            raise errors.InvalidArgument(
                f"region {region[:40]!r} is not one of this store's peers (configured: {configured}; "
                "set HUTCH_SNAPSHOT_STORE__PEER_STORES)"
            )
        peer = self._open.get(region)
        if peer is None:
            client = SnapshotStoreClient.connect(address, self._token, timeout_s=PEER_CALL_TIMEOUT_S)
            peer = self._open[region] = PeerStore(region, address, client)
        return peer

    async def close(self) -> None:
        for peer in self._open.values():
            await peer.close()
        self._open.clear()
