"""Snapshots on a node: taking them, keeping recent ones close, and starting sandboxes from them.

Taking one freezes the sandbox's writable layer into a read-only copy on this node (and for gVisor
checkpoints its memory beside it) in a moment, then uploads it to the snapshot-store: a tar stream
of the frozen layer plus the checkpoint image, cut into content-defined chunks of which only those
the store lacks travel. The upload reads the frozen copy, never the live sandbox, so the sandbox
runs on while it goes.

Frozen copies stay on the node as a cache, bounded in bytes: a restore, fork or resume here clones
one in constant time; on another node (or after eviction) it is downloaded from the store first. A
copy is evicted only once the store holds it: until then it is the only one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hutch.core import errors
from hutch_node_agent import layer_archive
from hutch_node_agent.domain import LocalSandbox, SnapshotSource
from hutch_node_agent.idle_watcher import may_sleep
from hutch_node_agent.layout import NodeLayout
from hutch_node_agent.runtime import GVISOR
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.templates import shift_owners

log = logging.getLogger(__name__)

Kind = Literal["filesystem", "memory"]
Purpose = Literal["user", "pause", "fork"]

LAYER_STREAM = "rootfs.tar"
MEMORY_PREFIX = "memory/"


@dataclass
class SnapshotRecord:
    """What the node keeps about a snapshot it holds a frozen copy of."""

    id: str
    tenant_id: str
    sandbox_id: str
    kind: Kind
    purpose: Purpose
    isolation: str
    template: str
    # The host uid of the sandbox's root when the layer was frozen (owners in the layer are shifted by it).
    uid_shift: int
    # The snapshot-store holds it (so the local copy may be evicted).
    committed: bool = False
    logical_bytes: int = 0
    # What the upload sent: compressed bytes of the chunks the store did not have yet.
    uploaded_bytes: int = 0
    last_used: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SnapshotRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Stream:
    name: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot as the store describes it."""

    id: str
    tenant_id: str
    sandbox_id: str
    kind: Kind
    spec: dict[str, object]
    streams: list[str]
    logical_bytes: int


class SnapshotStoreLink(Protocol):
    """What a node needs from the snapshot-store."""

    async def begin(
        self,
        tenant_id: str,
        sandbox_id: str,
        name: str,
        kind: Kind,
        purpose: Purpose,
        spec: dict[str, object],
        labels: dict[str, str],
    ) -> str: ...

    async def upload(self, tenant_id: str, snapshot_id: str, streams: list[Stream]) -> tuple[int, int]:
        """Uploads the streams and commits the snapshot; returns its logical size and the bytes sent."""
        ...

    async def abort(self, tenant_id: str, snapshot_id: str) -> None: ...

    async def get(self, tenant_id: str, snapshot: str, wait_ms: int = 0) -> StoredSnapshot: ...

    def read(self, tenant_id: str, snapshot_id: str, stream: str) -> AsyncIterator[bytes]: ...


def new_local_id() -> str:
    """A snapshot id for a node without a store (its snapshots never leave it)."""
    return "snap-" + base64.b32encode(uuid.uuid4().bytes).decode().lower().rstrip("=")[:20]


# Called when an upload finished: (record, error or None).
UploadCallback = Callable[[SnapshotRecord, Exception | None], Awaitable[None]]


async def _no_callback(record: SnapshotRecord, error: Exception | None) -> None:
    return None


class NodeSnapshots:
    def __init__(
        self,
        manager: SandboxManager,
        layout: NodeLayout,
        uid_shift: int,
        cache_bytes: int,
        store: SnapshotStoreLink | None = None,
        on_uploaded: UploadCallback = _no_callback,
    ) -> None:
        self._manager = manager
        self._layout = layout
        self._uid_shift = uid_shift
        self._cache_bytes = cache_bytes
        self._store = store
        self._on_uploaded = on_uploaded
        self._records: dict[str, SnapshotRecord] = {}
        self._fetching: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._uploads: dict[str, asyncio.Task[None]] = {}
        # Copies sandboxes are starting from right now, and those to drop once the last one is done.
        self._leases: Counter[str] = Counter()
        self._doomed: set[str] = set()

    # -- taking ----------------------------------------------------------------------------

    async def take(
        self,
        sandbox_id: str,
        *,
        name: str = "",
        purpose: Purpose = "user",
        stop: bool = False,
        wait: bool = True,
        labels: dict[str, str] | None = None,
        only_if_idle: bool = False,
    ) -> SnapshotRecord:
        """Snapshots a running sandbox: its filesystem, and for gVisor its memory and processes.

        With `stop` the sandbox is released afterwards (pause). With `wait` this returns once the
        store holds the snapshot; otherwise as soon as the frozen copy exists here, the upload
        going on in the background (a fork's children on this node need nothing more).
        """
        sandbox = self._manager.running(sandbox_id)
        if only_if_idle and not may_sleep(self._manager.activity, sandbox):
            raise errors.FailedPrecondition(f"sandbox {sandbox_id} is in use again; it stays awake")
        kind: Kind = "memory" if sandbox.request.isolation == GVISOR else "filesystem"
        spec = _spec(sandbox, self._uid_shift)
        if self._store is not None:
            snapshot_id = await self._store.begin(
                sandbox.request.tenant_id, sandbox_id, name, kind, purpose, spec, labels or {}
            )
        else:
            snapshot_id = new_local_id()
        record = SnapshotRecord(
            id=snapshot_id,
            tenant_id=sandbox.request.tenant_id,
            sandbox_id=sandbox_id,
            kind=kind,
            purpose=purpose,
            isolation=sandbox.request.isolation,
            template=sandbox.request.template,
            uid_shift=self._uid_shift,
        )
        frozen = self._frozen(snapshot_id)
        image = self._image(snapshot_id) if kind == "memory" else None
        try:
            await self._manager.capture(sandbox_id, frozen, image, stop=stop)
        except BaseException:
            await self._discard(record)
            if self._store is not None:
                with contextlib.suppress(Exception):
                    await self._store.abort(record.tenant_id, snapshot_id)
            raise
        self._remember(record)
        if self._store is None:
            return record
        upload = self._start_upload(record)
        if wait:
            await asyncio.shield(upload)
            if not record.committed:
                raise errors.Unavailable(f"snapshot {snapshot_id} could not be stored; try again")
        return record

    def _start_upload(self, record: SnapshotRecord) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._upload(record))
        self._uploads[record.id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._uploads.get(record.id) is task:
                del self._uploads[record.id]

        task.add_done_callback(done)
        return task

    async def _upload(self, record: SnapshotRecord) -> None:
        assert self._store is not None
        error: Exception | None = None
        try:
            streams = [Stream(LAYER_STREAM, layer_archive.pack(self._frozen(record.id) / "upper"))]
            image = self._image(record.id)
            if record.kind == "memory":
                for path in sorted(p for p in image.rglob("*") if p.is_file()):
                    streams.append(Stream(MEMORY_PREFIX + str(path.relative_to(image)), _read_file(path)))
            record.logical_bytes, record.uploaded_bytes = await self._store.upload(record.tenant_id, record.id, streams)
            record.committed = True
            self._save(record)
            log.info("snapshot %s stored (%d bytes)", record.id, record.logical_bytes)
        except Exception as exc:
            error = exc
            log.warning("snapshot %s could not be stored: %s", record.id, exc)
            with contextlib.suppress(Exception):
                await self._store.abort(record.tenant_id, record.id)
            if record.purpose == "user":
                await self._discard(record)  # the user is told it failed; a later attempt starts afresh
        await self._on_uploaded(record, error)
        await self.evict()

    async def wait_uploaded(self, snapshot_id: str) -> None:
        task = self._uploads.get(snapshot_id)
        if task is not None:
            await asyncio.shield(task)

    # -- restoring -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, tenant_id: str, snapshot_id: str, isolation: str) -> AsyncIterator[SnapshotSource]:
        """The snapshot's source (see `source`), kept on disk until the block ends: a deletion or an
        eviction meanwhile waits for the sandbox starting from it to have its own copy."""
        self._leases[snapshot_id] += 1
        try:
            yield await self.source(tenant_id, snapshot_id, isolation)
        finally:
            self._leases[snapshot_id] -= 1
            if self._leases[snapshot_id] <= 0:
                del self._leases[snapshot_id]
                if snapshot_id in self._doomed:
                    self._doomed.discard(snapshot_id)
                    await self.forget(snapshot_id)

    async def source(self, tenant_id: str, snapshot_id: str, isolation: str) -> SnapshotSource:
        """Where a sandbox starting from the snapshot starts: the frozen copy on this node, fetched
        from the store first when there is none (one fetch however many sandboxes wait for it)."""
        if snapshot_id in self._doomed:
            raise errors.NotFound(f"snapshot {snapshot_id} does not exist")
        async with self._fetching[snapshot_id]:
            record = self._records.get(snapshot_id)
            if record is None or record.tenant_id != tenant_id:
                if record is not None or self._store is None:
                    raise errors.NotFound(f"snapshot {snapshot_id} does not exist")
                record = await self._fetch(tenant_id, snapshot_id)
        if record.kind == "memory" and isolation != GVISOR:
            raise errors.FailedPrecondition(
                f"snapshot {snapshot_id} holds a gVisor sandbox's memory; it can only be restored with isolation gvisor"
            )
        if record.kind == "filesystem" and isolation != record.isolation:
            log.info("restoring %s snapshot %s under %s", record.isolation, snapshot_id, isolation)
        record.last_used = time.time()
        self._save(record)
        return SnapshotSource(self._frozen(snapshot_id), self._image(snapshot_id) if record.kind == "memory" else None)

    async def _fetch(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        assert self._store is not None
        stored = await self._store.get(tenant_id, snapshot_id, wait_ms=60_000)
        staged = self._layout.staging / f"{snapshot_id}-{uuid.uuid4().hex[:8]}"
        image = self._image(snapshot_id)
        await self._manager.layers.make_staging(staged)
        try:
            await layer_archive.unpack(self._store.read(tenant_id, snapshot_id, LAYER_STREAM), staged / "upper")
            shift = int(str(stored.spec.get("uid_shift", self._uid_shift)))
            if shift != self._uid_shift:
                await asyncio.to_thread(shift_owners, staged / "upper", self._uid_shift - shift)
            for name in stored.streams:
                if name.startswith(MEMORY_PREFIX):
                    target = image / name.removeprefix(MEMORY_PREFIX)
                    await _write_file(self._store.read(tenant_id, snapshot_id, name), target)
            await self._manager.layers.adopt(staged, self._frozen(snapshot_id))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._manager.layers.drop(staged)
            shutil.rmtree(self._layout.snapshots / snapshot_id, ignore_errors=True)
            raise
        record = SnapshotRecord(
            id=snapshot_id,
            tenant_id=tenant_id,
            sandbox_id=stored.sandbox_id,
            kind=stored.kind,
            purpose="user",
            isolation=str(stored.spec.get("isolation", "")),
            template=str(stored.spec.get("template", "")),
            uid_shift=self._uid_shift,
            committed=True,
            logical_bytes=stored.logical_bytes,
        )
        self._remember(record)
        await self.evict(keep=snapshot_id)
        return record

    # -- the cache -------------------------------------------------------------------------

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        return self._records.get(snapshot_id)

    def cached(self) -> list[SnapshotRecord]:
        return list(self._records.values())

    async def forget(self, snapshot_id: str) -> None:
        """Drops the local copy (the snapshot was deleted, or replaced by a newer pause); while a
        sandbox is starting from it, once that start is done."""
        if self._leases[snapshot_id] > 0:
            self._doomed.add(snapshot_id)
            return
        record = self._records.get(snapshot_id)
        if record is not None:
            task = self._uploads.get(snapshot_id)
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await self._discard(record)

    async def evict(self, keep: str = "") -> None:
        """Drops the least recently used copies the store also holds until the cache fits its budget."""
        total = sum(r.logical_bytes for r in self._records.values())
        for record in sorted(self._records.values(), key=lambda r: r.last_used):
            if total <= self._cache_bytes:
                return
            in_use = self._fetching[record.id].locked() or self._leases[record.id] > 0
            if record.committed and record.id != keep and not in_use:
                total -= record.logical_bytes
                await self._discard(record)

    async def recover(self) -> None:
        """Reads back the records a previous process left; removes half-made copies; resumes uploads."""
        shutil.rmtree(self._layout.staging, ignore_errors=True)
        self._layout.staging.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self._layout.snapshots.iterdir()):
            try:
                record = SnapshotRecord.from_json((folder / "record.json").read_text())
            except (OSError, ValueError, TypeError) as exc:
                log.warning("removing snapshot folder %s: unreadable record (%s)", folder, exc)
                await self._discard_paths(folder.name)
                continue
            if not self._frozen(record.id).is_dir():
                await self._discard_paths(record.id)
                continue
            self._records[record.id] = record
            if not record.committed and self._store is not None:
                self._start_upload(record)
        for frozen in self._layout.frozen_layers.iterdir():
            if frozen.name not in self._records:
                await self._manager.layers.drop(frozen)

    async def close(self) -> None:
        for task in list(self._uploads.values()):
            task.cancel()
        await asyncio.gather(*self._uploads.values(), return_exceptions=True)

    # -- files -----------------------------------------------------------------------------

    def _frozen(self, snapshot_id: str) -> Path:
        return self._layout.frozen_layers / snapshot_id

    def _image(self, snapshot_id: str) -> Path:
        return self._layout.snapshots / snapshot_id / "image"

    def _remember(self, record: SnapshotRecord) -> None:
        self._records[record.id] = record
        self._save(record)

    def _save(self, record: SnapshotRecord) -> None:
        folder = self._layout.snapshots / record.id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "record.json.tmp"
        tmp.write_text(record.to_json())
        tmp.replace(folder / "record.json")

    async def _discard(self, record: SnapshotRecord) -> None:
        self._records.pop(record.id, None)
        await self._discard_paths(record.id)

    async def _discard_paths(self, snapshot_id: str) -> None:
        frozen = self._frozen(snapshot_id)
        if frozen.exists():
            await self._manager.layers.drop(frozen)
        await asyncio.to_thread(shutil.rmtree, self._layout.snapshots / snapshot_id, True)


def _spec(sandbox: LocalSandbox, uid_shift: int) -> dict[str, object]:
    request = sandbox.request
    return {
        "template": request.template,
        "isolation": request.isolation,
        "cpu_millis": request.cpu_millis,
        "memory_mb": request.memory_mb,
        "envs": dict(request.envs),
        "metadata": dict(request.metadata),
        "uid_shift": uid_shift,
    }


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as source:
        while chunk := await asyncio.to_thread(source.read, layer_archive.READ_SIZE):
            yield chunk


async def _write_file(chunks: AsyncIterator[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)
    partial.replace(target)
