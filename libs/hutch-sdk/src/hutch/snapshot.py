"""Snapshots: a sandbox's state, kept to start new sandboxes from.

Take one with `sandbox.snapshot()` (or `Snapshot.create("sb-...")`); start a sandbox from it with
`Sandbox.create(snapshot=...)`. A container sandbox's snapshot holds its filesystem; a gVisor
sandbox's also its memory and running processes, which go on where they were.

    from hutch import Sandbox, Snapshot

    snap = sandbox.snapshot(name="deps-installed")
    copy = Sandbox.create(snapshot=snap.id)
    Snapshot.list(); Snapshot.delete(snap.id)
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from hutch._config import resolve
from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch.exceptions import InvalidArgumentError
from hutch.models import SNAPSHOT_PURPOSES, SnapshotInfo, SnapshotUsage
from hutch.v1 import sandbox_pb2, snapshot_pb2, snapshot_pb2_grpc

if TYPE_CHECKING:
    from hutch.v1.snapshot_pb2_grpc import SnapshotsAsyncStub

__all__ = ["AsyncSnapshot", "Snapshot"]


class _SnapshotConnection(Connection):
    @property
    def snapshots(self) -> SnapshotsAsyncStub:
        """The Snapshots service; opens the channel if needed (call from inside the event loop)."""
        return snapshot_pb2_grpc.SnapshotsStub(self._open().channel)

    async def __aenter__(self) -> _SnapshotConnection:
        return self


async def take_snapshot(
    connection: Connection, sandbox: str, name: str | None, labels: Mapping[str, str] | None
) -> SnapshotInfo:
    """Snapshots a sandbox through `connection` (what `sandbox.snapshot()` and `Snapshot.create` do)."""
    message = await connection.unary(
        f"snapshot sandbox {sandbox}",
        connection.sandboxes.Snapshot,
        sandbox_pb2.SnapshotSandboxRequest(sandbox=sandbox, name=name or "", labels=dict(labels or {})),
    )
    return SnapshotInfo.from_proto(message)


def _purposes(purposes: Iterable[str] | None) -> list[snapshot_pb2.SnapshotPurpose.ValueType]:
    result = []
    for purpose in purposes or ():
        if purpose not in SNAPSHOT_PURPOSES:
            known = ", ".join(SNAPSHOT_PURPOSES)
            raise InvalidArgumentError(f"unknown snapshot purpose {purpose!r}; use one of {known}")
        result.append(SNAPSHOT_PURPOSES[purpose])
    return result


class AsyncSnapshot:
    """Takes, lists, describes and deletes snapshots (coroutines; `Snapshot` is the blocking mirror)."""

    @staticmethod
    async def create(
        sandbox: str,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Snapshots a running sandbox by id or name; returns once the snapshot is stored.

        Args:
            sandbox: The sandbox's id or name.
            name: A name unique among your snapshots (lowercase letters, digits and '-'), usable in
                place of the id.
            labels: Key/value pairs to describe it.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait; None waits as long as the gateway takes.

        Raises:
            NotFoundError: This API key has no such sandbox.
            SandboxError: The sandbox is not running (a paused one: resume it first).
            AlreadyExistsError: A snapshot already has that name.
            HutchError: Another failure; the subclass says which.
        """
        async with Connection(resolve(api_key, endpoint, request_timeout)) as connection:
            return await take_snapshot(connection, sandbox, name, labels)

    @staticmethod
    async def list(
        sandbox: str | None = None,
        purposes: Iterable[str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SnapshotInfo]:
        """Your snapshots, newest first, following every page.

        Args:
            sandbox: Only those taken from this sandbox (id or name).
            purposes: Only these: "user" (taken with `snapshot()`), "pause", "fork"; None: "user".
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for each page; None waits as long as the gateway takes.

        Raises:
            InvalidArgumentError: A purpose is unknown.
            HutchError: Another failure; the subclass says which.
        """
        request = snapshot_pb2.ListSnapshotsRequest(sandbox=sandbox or "", purposes=_purposes(purposes))
        found: builtins.list[SnapshotInfo] = []
        async with _SnapshotConnection(resolve(api_key, endpoint, request_timeout)) as connection:
            while True:
                response = await connection.unary("list snapshots", connection.snapshots.List, request)
                found.extend(SnapshotInfo.from_proto(message) for message in response.snapshots)
                if not response.next_page_token:
                    return found
                request.page_token = response.next_page_token

    @staticmethod
    async def get(
        snapshot: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Describes a snapshot by id or name.

        Raises:
            NotFoundError: You have no such snapshot.
        """
        async with _SnapshotConnection(resolve(api_key, endpoint, request_timeout)) as connection:
            message = await connection.unary(
                f"get snapshot {snapshot}",
                connection.snapshots.Get,
                snapshot_pb2.GetSnapshotRequest(snapshot=snapshot),
            )
        return SnapshotInfo.from_proto(message)

    @staticmethod
    async def delete(
        snapshot: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Deletes a snapshot by id or name; sandboxes made from it are not affected.

        Raises:
            NotFoundError: You have no such snapshot.
            SandboxError: It holds a paused sandbox: resume or kill that sandbox instead.
        """
        async with _SnapshotConnection(resolve(api_key, endpoint, request_timeout)) as connection:
            await connection.unary(
                f"delete snapshot {snapshot}",
                connection.snapshots.Delete,
                snapshot_pb2.DeleteSnapshotRequest(snapshot=snapshot),
            )

    @staticmethod
    async def copy(
        snapshot: str,
        to_region: str | None = None,
        *,
        from_region: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Copies a snapshot to another region, where sandboxes can then start from it under the same
        id and name (`Sandbox.create(snapshot=..., region=to_region)`). Returns once the copy is
        stored; only what the other region lacks travels, and copying again costs nothing.

        Args:
            snapshot: Its id or name in `from_region`.
            to_region: Where the copy goes; None: the region of the gateway you call.
            from_region: Where the snapshot is; None: the region of the gateway you call.

        Raises:
            NotFoundError: You have no such snapshot in `from_region`.
            InvalidArgumentError: A region the installation does not have, or both regions the same.
            UnavailableError: One of the regions cannot be reached.
        """
        request = snapshot_pb2.CopySnapshotRequest(
            snapshot=snapshot, to_region=to_region or "", from_region=from_region or ""
        )
        where = f"copy snapshot {snapshot} to {to_region or 'this region'}"
        async with _SnapshotConnection(resolve(api_key, endpoint, request_timeout)) as connection:
            message = await connection.unary(where, connection.snapshots.Copy, request)
        return SnapshotInfo.from_proto(message)

    @staticmethod
    async def usage(
        *, api_key: str | None = None, endpoint: str | None = None, request_timeout: float | None = None
    ) -> SnapshotUsage:
        """What your snapshots hold and take up."""
        async with _SnapshotConnection(resolve(api_key, endpoint, request_timeout)) as connection:
            message = await connection.unary(
                "get snapshot usage", connection.snapshots.Usage, snapshot_pb2.SnapshotUsageRequest()
            )
        return SnapshotUsage.from_proto(message)


class Snapshot:
    """Takes, lists, describes, copies and deletes snapshots (blocking; see `AsyncSnapshot` for the arguments)."""

    @staticmethod
    def create(
        sandbox: str,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Snapshots a running sandbox by id or name; returns once the snapshot is stored."""
        return PORTAL.run(
            AsyncSnapshot.create(
                sandbox, name, labels, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout
            )
        )

    @staticmethod
    def list(
        sandbox: str | None = None,
        purposes: Iterable[str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SnapshotInfo]:
        """Your snapshots, newest first: those taken with `snapshot()` unless `purposes` says otherwise."""
        return PORTAL.run(
            AsyncSnapshot.list(sandbox, purposes, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout)
        )

    @staticmethod
    def get(
        snapshot: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Describes a snapshot by id or name."""
        return PORTAL.run(
            AsyncSnapshot.get(snapshot, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout)
        )

    @staticmethod
    def delete(
        snapshot: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Deletes a snapshot by id or name (refused while it holds a paused sandbox)."""
        PORTAL.run(AsyncSnapshot.delete(snapshot, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))

    @staticmethod
    def copy(
        snapshot: str,
        to_region: str | None = None,
        *,
        from_region: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> SnapshotInfo:
        """Copies a snapshot to another region; returns once the copy is stored."""
        return PORTAL.run(
            AsyncSnapshot.copy(
                snapshot,
                to_region,
                from_region=from_region,
                api_key=api_key,
                endpoint=endpoint,
                request_timeout=request_timeout,
            )
        )

    @staticmethod
    def usage(
        *, api_key: str | None = None, endpoint: str | None = None, request_timeout: float | None = None
    ) -> SnapshotUsage:
        """What your snapshots hold and take up."""
        return PORTAL.run(AsyncSnapshot.usage(api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))
