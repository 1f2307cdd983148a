"""Import's pieces that need no server: batches of chunks, the peer lookup, the peer_stores setting."""

from __future__ import annotations

import pytest

from hutch.core import errors
from hutch_snapshot_store.domain.model import ChunkRef, Stream
from hutch_snapshot_store.importer import BATCH_BYTES, BATCH_CHUNKS, batches
from hutch_snapshot_store.peers import PeerStores
from hutch_snapshot_store.settings import SnapshotStoreSettings

MiB = 1024 * 1024


def ref(n: int, size: int = MiB) -> ChunkRef:
    return ChunkRef(f"{n:064x}", size)


def test_batches_hold_each_distinct_chunk_once_in_order_and_stay_bounded() -> None:
    small = Stream("a", tuple(ref(n, 1024) for n in range(150)))
    repeated = Stream("b", (ref(3, 1024), ref(200, 1024), ref(3, 1024)))
    cut = list(batches([small, repeated]))
    assert [h for batch in cut for h in batch] == [f"{n:064x}" for n in (*range(150), 200)]
    assert [len(batch) for batch in cut] == [BATCH_CHUNKS, BATCH_CHUNKS, 151 - 2 * BATCH_CHUNKS]

    large = Stream("c", tuple(ref(n, 4 * MiB) for n in range(40)))
    by_bytes = list(batches([large]))
    assert all(len(batch) * 4 * MiB <= BATCH_BYTES for batch in by_bytes)
    assert sum(len(batch) for batch in by_bytes) == 40
    assert list(batches([])) == []


def test_an_unknown_region_names_the_configured_peers() -> None:
    peers = PeerStores({"us-east": "10.0.0.7:50054", "ap-south": "10.1.0.7:50054"}, "token")
    with pytest.raises(errors.InvalidArgument, match="configured: ap-south, us-east"):
        peers.get("eu-west")
    with pytest.raises(errors.InvalidArgument, match="source_region is required"):
        peers.get("")
    with pytest.raises(errors.InvalidArgument, match="configured: none"):
        PeerStores({}, "token").get("us-east")


def test_peer_stores_setting_parses_and_excludes_this_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_SNAPSHOT_STORE__PEER_STORES", "us-east=10.0.0.7:50054, ap-south=store.ap:50054")
    monkeypatch.setenv("HUTCH_REGION", "eu-west")
    assert SnapshotStoreSettings().snapshot_store.peer_stores == {
        "us-east": "10.0.0.7:50054",
        "ap-south": "store.ap:50054",
    }
    monkeypatch.setenv("HUTCH_REGION", "us-east")
    with pytest.raises(ValueError, match="own region"):
        SnapshotStoreSettings()
    monkeypatch.setenv("HUTCH_SNAPSHOT_STORE__PEER_STORES", "us-east")
    with pytest.raises(ValueError, match="REGION=HOST:PORT"):
        SnapshotStoreSettings()
