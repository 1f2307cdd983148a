"""Where a tenant's sandbox lives, across the regions of an installation.

Each region's gateways write their own sandboxes into their own NATS KV bucket, `sandbox_index_<region>`,
which lives in that region's cluster: `<tenant>.id.<sandbox id>` and `<tenant>.name.<name>`, both
holding the sandbox id and when it was created. A gateway that does not hold a sandbox reads the peer
regions' buckets through the supercluster. Writes stay local and never wait on another region; a
lookup needs only the region that holds the sandbox, which must be reachable to serve it anyway.

A name key is overwritten by the region's newest sandbox of that name and never deleted: a stale one
only sends a call to a region that then answers NOT_FOUND itself. Among regions, the newest wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from hutch_gateway.domain import SANDBOX_ID_PREFIX, SandboxRecord

log = logging.getLogger(__name__)

# A region that does not answer within this long is left out of a lookup.
LOOKUP_TIMEOUT_S = 2.0


def index_bucket(region: str) -> str:
    return f"sandbox_index_{region.replace('-', '_')}"


@dataclass(frozen=True)
class Located:
    region: str
    sandbox_id: str
    created_at: float


@dataclass(frozen=True)
class Lookup:
    """Where a reference was found (None: nowhere that answered), and which regions did not answer."""

    found: Located | None
    unreachable: tuple[str, ...] = ()


# Opens a bucket by name: this region's own is created when missing; a peer's never is (it would be
# created in this region's cluster).
OpenBucket = Callable[[str], Awaitable[KeyValue]]
LiveSandboxes = Callable[[], Awaitable[list[SandboxRecord]]]


def _keys(tenant_id: str, ref: str) -> list[str]:
    by_id, by_name = f"{tenant_id}.id.{ref}", f"{tenant_id}.name.{ref}"
    return [by_id, by_name] if ref.startswith(SANDBOX_ID_PREFIX) else [by_name, by_id]


def _valid_ref(ref: str) -> bool:
    # Ids and names are letters, digits and '-'; anything else was never written.
    return bool(ref) and all(c.isalnum() or c == "-" for c in ref) and ref.isascii()


class FoundCache:
    """Recent lookups that found a sandbox in another region, so that a client's stream of calls to
    it does not read the index each time. A sandbox never changes region, so an id is kept until
    the cache is full; a name may be taken by a newer sandbox elsewhere, so it is kept briefly."""

    MAX_ENTRIES = 10_000
    NAME_TTL_S = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[Located, float]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Located | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        located, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return located

    def put(self, key: tuple[str, str], located: Located, *, by_id: bool) -> None:
        self._entries[key] = (located, math.inf if by_id else self._clock() + self.NAME_TTL_S)
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)


class SandboxIndex:
    """This region's entries (written) and the peer regions' (read)."""

    def __init__(self, region: str, peers: Sequence[str], open_own: OpenBucket, open_peer: OpenBucket) -> None:
        self._region = region
        self._peers = tuple(peers)
        self._open_own = open_own
        self._open_peer = open_peer
        self._own: KeyValue | None = None
        self._peer_buckets: dict[str, KeyValue] = {}
        self._written: set[str] = set()
        self._found = FoundCache()

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    async def open(self) -> None:
        """Creates this region's bucket at start, so that peers find it even before the first create:
        a bucket they cannot find then means this region is out of their reach."""
        self._own = await self._open_own(index_bucket(self._region))

    async def record(self, record: SandboxRecord) -> None:
        """Writes a sandbox of this region (once per process; later calls for it are free)."""
        if record.id in self._written:
            return
        value = json.dumps({"sandbox": record.id, "created_at": record.created_at.timestamp()}).encode()
        try:
            own = self._own or await self._open_own(index_bucket(self._region))
            self._own = own
            await own.put(f"{record.tenant_id}.id.{record.id}", value)
            if record.name:
                await own.put(f"{record.tenant_id}.name.{record.name}", value)
        except Exception as exc:
            # The periodic sync writes it later; the sandbox is served in its own region meanwhile.
            log.warning("cannot index sandbox %s: %r", record.id, exc)
            return
        self._written.add(record.id)

    async def sync(self, live: LiveSandboxes) -> int:
        """Writes every live sandbox not written yet; returns how many it wrote."""
        records = await live()
        fresh = [r for r in records if r.id not in self._written]
        for record in fresh:
            await self.record(record)
        # Ended sandboxes stay in the bucket; forgetting them here keeps this set as small as the
        # region's live sandboxes.
        self._written &= {r.id for r in records}
        return len(fresh)

    async def run_sync(self, live: LiveSandboxes, stop: asyncio.Event, every_s: float = 30.0) -> None:
        """Keeps the bucket complete: what a crash between a create and its write left out."""
        while not stop.is_set():
            try:
                await self.sync(live)
            except Exception as exc:
                log.warning("sandbox index sync failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def locate(self, tenant_id: str, ref: str) -> Lookup:
        """The peer region holding the tenant's sandbox `ref` (id or name), newest first."""
        if not self._peers or not _valid_ref(ref):
            return Lookup(None)
        cached = self._found.get((tenant_id, ref))
        if cached is not None:
            return Lookup(cached)
        answers = await asyncio.gather(*(self._read(region, _keys(tenant_id, ref)) for region in self._peers))
        found = [a for a in answers if isinstance(a, Located)]
        unreachable = tuple(region for region, a in zip(self._peers, answers, strict=True) if a is _UNREACHABLE)
        best = max(found, key=lambda located: located.created_at, default=None)
        if best is not None and not unreachable:
            self._found.put((tenant_id, ref), best, by_id=ref == best.sandbox_id)
        return Lookup(best, unreachable)

    async def _read(self, region: str, keys: list[str]) -> Located | object | None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                bucket = self._peer_buckets.get(region) or await self._open_peer(index_bucket(region))
                self._peer_buckets[region] = bucket
                for key in keys:
                    with contextlib.suppress(KeyNotFoundError):
                        entry = await bucket.get(key)
                        if entry.value:
                            data = json.loads(entry.value)
                            return Located(region, str(data["sandbox"]), float(data["created_at"]))
                return None
        except Exception as exc:
            # Including "no such bucket": every gateway creates its region's at start, so a region
            # whose bucket cannot be seen (its cluster away, or this server still catching up after
            # a restart) did not answer.
            self._peer_buckets.pop(region, None)
            log.info("region %s did not answer a sandbox lookup: %r", region, exc)
            return _UNREACHABLE


_UNREACHABLE = object()
