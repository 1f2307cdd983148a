"""The plain values the SDK returns: descriptions of sandboxes, files and processes, command results
and filesystem events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.v1 import files_pb2, process_pb2, sandbox_pb2, snapshot_pb2

__all__ = [
    "CommandOutput",
    "CommandResult",
    "EntryInfo",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "ProcessInfo",
    "SandboxInfo",
    "SandboxState",
    "SnapshotInfo",
    "SnapshotUsage",
]


class SandboxState(StrEnum):
    """Where a sandbox is in its life. Compares equal to its lowercase name, e.g. "running"."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    KILLED = "killed"
    FAILED = "failed"
    # Its state is in a snapshot and it holds no CPU or memory until it is resumed.
    PAUSED = "paused"

    @classmethod
    def from_proto(cls, value: int) -> SandboxState:
        """Converts a `hutch.v1.SandboxState` number; numbers this SDK does not know become UNSPECIFIED."""
        return _STATE_FROM_PROTO.get(value, cls.UNSPECIFIED)

    def to_proto(self) -> sandbox_pb2.SandboxState.ValueType:
        """Returns the `hutch.v1.SandboxState` number for this state."""
        return sandbox_pb2.SandboxState.Value(f"SANDBOX_STATE_{self.name}")


_STATE_FROM_PROTO: dict[int, SandboxState] = {
    sandbox_pb2.SandboxState.Value(f"SANDBOX_STATE_{state.name}"): state for state in SandboxState
}


class FileType(StrEnum):
    """What a filesystem entry is. Compares equal to "file", "dir", "symlink" or "other"."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"

    @classmethod
    def from_proto(cls, value: int) -> FileType:
        """Converts a `hutch.v1.FileType` number; unknown numbers become OTHER."""
        return _FILE_TYPE_FROM_PROTO.get(value, cls.OTHER)


_FILE_TYPE_FROM_PROTO: dict[int, FileType] = {
    files_pb2.FILE_TYPE_FILE: FileType.FILE,
    files_pb2.FILE_TYPE_DIRECTORY: FileType.DIR,
    files_pb2.FILE_TYPE_SYMLINK: FileType.SYMLINK,
    files_pb2.FILE_TYPE_OTHER: FileType.OTHER,
}


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    # An unset Timestamp reads as the epoch, so presence has to be checked on the parent message.
    return stamp.ToDatetime(tzinfo=UTC) if present else None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the gateway describes it.

    Attributes:
        id: The sandbox's id, "sb-...".
        name: The name given at create time, or None.
        template: The template it was created from.
        state: Where it is in its life.
        cpu: vCPUs it may use, e.g. 0.5.
        memory_mb: Memory it may use, in MiB.
        metadata: The key/value pairs given at create time.
        created_at: When it was requested.
        started_at: When it started running, or None if it never did.
        ended_at: When it stopped, or None while it lives.
        timeout: Its lifetime in seconds, or None when it lives until killed.
        state_reason: Why it is FAILED or KILLED, or None.
        region: The region it runs in.
        isolation: The isolation class it runs under: "container" or "gvisor".
        public_ports: Ports its preview URLs open without a token, in ascending order.
        expires_at: When its timeout kills it, or None when it lives until killed (also while
            paused: paused time does not count against the timeout).
        source_snapshot: The snapshot it was created from (for a fork's child, the fork's), or None.
        forked_from: For a fork's child, the id of the sandbox it was forked from; else None.
        paused_snapshot: While paused, the snapshot that holds its state; else None.
        auto_sleep_after: Idle seconds after which it goes to sleep, or None (never).
        asleep: Paused because it was idle: any request to it wakes it.
        memory_ceiling_mb: With automatic memory, the most `memory_mb` may grow to; else None.
        idle_since: While running, when it was last in use (an API call or open connection to it,
            or CPU above 5% of a vCPU), as its node last reported; else None.
    """

    id: str
    name: str | None
    template: str
    state: SandboxState
    cpu: float
    memory_mb: int
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    timeout: int | None = None
    state_reason: str | None = None
    region: str = ""
    isolation: str = ""
    public_ports: list[int] = field(default_factory=list)
    expires_at: datetime | None = None
    source_snapshot: str | None = None
    forked_from: str | None = None
    paused_snapshot: str | None = None
    auto_sleep_after: int | None = None
    asleep: bool = False
    memory_ceiling_mb: int | None = None
    idle_since: datetime | None = None

    @classmethod
    def from_proto(cls, message: sandbox_pb2.Sandbox) -> SandboxInfo:
        """Converts a `hutch.v1.Sandbox` message."""
        return cls(
            id=message.id,
            name=message.name or None,
            template=message.template,
            state=SandboxState.from_proto(message.state),
            cpu=message.resources.cpu_millis / 1000,
            memory_mb=message.resources.memory_mb,
            metadata=dict(message.metadata),
            created_at=_time(message.created_at, message.HasField("created_at")),
            started_at=_time(message.started_at, message.HasField("started_at")),
            ended_at=_time(message.ended_at, message.HasField("ended_at")),
            timeout=message.timeout_seconds or None,
            state_reason=message.state_reason or None,
            region=message.region,
            isolation=message.isolation,
            public_ports=sorted(message.public_ports),
            expires_at=_time(message.expires_at, message.HasField("expires_at")),
            source_snapshot=message.source_snapshot or None,
            forked_from=message.forked_from or None,
            paused_snapshot=message.paused_snapshot or None,
            auto_sleep_after=message.auto_sleep_after_seconds or None,
            asleep=message.asleep,
            memory_ceiling_mb=message.memory_ceiling_mb or None,
            idle_since=_time(message.idle_since, message.HasField("idle_since")),
        )


SnapshotKind: TypeAlias = Literal["filesystem", "memory", "unspecified"]
"""What a snapshot holds: the filesystem (a container sandbox), or also memory and processes (gVisor)."""

SnapshotPurpose: TypeAlias = Literal["user", "pause", "fork", "unspecified"]
"""Why a snapshot was taken: `snapshot()`, `pause()` or `fork()`."""

_SNAPSHOT_KIND_FROM_PROTO: Final[dict[int, SnapshotKind]] = {
    snapshot_pb2.SNAPSHOT_KIND_FILESYSTEM: "filesystem",
    snapshot_pb2.SNAPSHOT_KIND_MEMORY: "memory",
}
SNAPSHOT_PURPOSES: Final[dict[str, snapshot_pb2.SnapshotPurpose.ValueType]] = {
    "user": snapshot_pb2.SNAPSHOT_PURPOSE_USER,
    "pause": snapshot_pb2.SNAPSHOT_PURPOSE_PAUSE,
    "fork": snapshot_pb2.SNAPSHOT_PURPOSE_FORK,
}
_SNAPSHOT_PURPOSE_FROM_PROTO: Final[dict[int, SnapshotPurpose]] = {
    snapshot_pb2.SNAPSHOT_PURPOSE_USER: "user",
    snapshot_pb2.SNAPSHOT_PURPOSE_PAUSE: "pause",
    snapshot_pb2.SNAPSHOT_PURPOSE_FORK: "fork",
}


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot: a sandbox's state, from which new sandboxes start (`Sandbox.create(snapshot=...)`).

    Attributes:
        id: The snapshot's id, "snap-...".
        name: The name given when it was taken, or None.
        sandbox_id: The sandbox it was taken from.
        kind: "filesystem" (a container sandbox) or "memory" (gVisor: memory and running processes too).
        purpose: "user" (taken with `snapshot()`), "pause" or "fork".
        template: The template of the sandbox it was taken from.
        isolation: That sandbox's isolation class; sandboxes made from it run under the same.
        size_bytes: The size of the state it holds.
        stored_bytes: What it added to your storage (compressed, after deduplication).
        created_at: When it was taken.
        labels: The key/value pairs given when it was taken.
        region: The region that stores this copy of it (`copy()` makes one in another region).
    """

    id: str
    name: str | None
    sandbox_id: str
    kind: SnapshotKind
    purpose: SnapshotPurpose
    template: str
    isolation: str
    size_bytes: int
    stored_bytes: int
    created_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    region: str = ""

    @classmethod
    def from_proto(cls, message: snapshot_pb2.Snapshot) -> SnapshotInfo:
        """Converts a `hutch.v1.Snapshot` message."""
        return cls(
            id=message.id,
            name=message.name or None,
            sandbox_id=message.sandbox_id,
            kind=_SNAPSHOT_KIND_FROM_PROTO.get(message.kind, "unspecified"),
            purpose=_SNAPSHOT_PURPOSE_FROM_PROTO.get(message.purpose, "unspecified"),
            template=message.template,
            isolation=message.isolation,
            size_bytes=message.size_bytes,
            stored_bytes=message.stored_bytes,
            created_at=_time(message.created_at, message.HasField("created_at")),
            labels=dict(message.labels),
            region=message.region,
        )


@dataclass(frozen=True)
class SnapshotUsage:
    """What your snapshots hold and take up.

    Attributes:
        snapshots: How many there are.
        logical_bytes: The sum of their sizes.
        stored_bytes: The bytes stored for them (compressed, each chunk once).
        cached_bytes: The bytes of them in the region's cache.
    """

    snapshots: int
    logical_bytes: int
    stored_bytes: int
    cached_bytes: int

    @classmethod
    def from_proto(cls, message: snapshot_pb2.SnapshotUsage) -> SnapshotUsage:
        """Converts a `hutch.v1.SnapshotUsage` message."""
        return cls(message.snapshots, message.logical_bytes, message.stored_bytes, message.cached_bytes)


@dataclass(frozen=True)
class EntryInfo:
    """A file, directory or other entry in a sandbox's filesystem.

    Attributes:
        path: Its absolute path inside the sandbox.
        name: Its last path component.
        type: What it is.
        size: Its size in bytes.
        mode: Its permission bits, e.g. 0o644.
        modified_at: When its content last changed, or None if unknown.
        owner: The owning user's name.
        group: The owning group's name.
        symlink_target: Where it points, as stored in the link, when it is a symbolic link.
        sha256: The SHA-256 (hex) of the content the sandbox received, on what `write` and `upload`
            return (already checked against what was sent); None elsewhere.
    """

    path: str
    name: str
    type: FileType
    size: int
    mode: int
    modified_at: datetime | None
    owner: str
    group: str
    symlink_target: str | None = None
    sha256: str | None = None

    @classmethod
    def from_proto(cls, message: files_pb2.FileInfo) -> EntryInfo:
        """Converts a `hutch.v1.FileInfo` message."""
        return cls(
            path=message.path,
            name=message.name,
            type=FileType.from_proto(message.type),
            size=message.size,
            mode=message.mode,
            modified_at=_time(message.modified_at, message.HasField("modified_at")),
            owner=message.owner,
            group=message.group,
            symlink_target=message.symlink_target or None,
            sha256=message.sha256.lower() or None,
        )


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced.

    Attributes:
        stdout: Everything it wrote to standard output, decoded as UTF-8 (invalid bytes replaced).
        stderr: Everything it wrote to standard error, decoded the same way.
        exit_code: Its exit status; 128 + N when signal N ended it, as shells report it.
        error: How it ended when that was not a plain exit, e.g. "killed by signal 9"; else None.
    """

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


@dataclass(frozen=True)
class CommandOutput:
    """One piece of a command's output, as iterating a command handle yields it.

    Attributes:
        stream: Where the command wrote it: "stdout" or "stderr".
        text: The text, decoded as UTF-8 (invalid bytes replaced); a character split across network
            chunks is never cut in two.
    """

    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class ProcessInfo:
    """A background process or terminal in a sandbox, running or recently finished.

    Attributes:
        pid: Its process id inside the sandbox.
        args: The argv it runs (for a shell command line, the shell's).
        cmd: The shell command line it was started with, or None when started from an argv.
        user: The user it runs as.
        cwd: Its working directory.
        started_at: When it started, or None if unknown.
        running: Whether it still runs.
        exit_code: Once it ended, its exit status (128 + N when signal N ended it); None while it runs.
        signal: The signal that ended it, or 0.
        pty: Whether it runs in a terminal (`sandbox.pty`).
        dropped_bytes: Output that no longer fit its buffer and will not be replayed to `connect`.
    """

    pid: int
    args: list[str]
    cmd: str | None
    user: str
    cwd: str
    started_at: datetime | None
    running: bool
    exit_code: int | None
    signal: int
    pty: bool
    dropped_bytes: int

    @classmethod
    def from_proto(cls, message: process_pb2.ProcessInfo) -> ProcessInfo:
        """Converts a `hutch.v1.ProcessInfo` message, reporting a signal death as 128 + signal."""
        exit_code: int | None = None
        if not message.running:
            exit_code = 128 + message.signal if message.signal else message.exit_code
        return cls(
            pid=message.pid,
            args=list(message.args),
            cmd=message.cmd or None,
            user=message.user,
            cwd=message.cwd,
            started_at=_time(message.started_at, message.HasField("started_at")),
            running=message.running,
            exit_code=exit_code,
            signal=message.signal,
            pty=message.pty,
            dropped_bytes=message.dropped_bytes,
        )


FilesystemEventType: TypeAlias = Literal["create", "modify", "delete", "rename"]
"""What happened to a watched path."""

_EVENT_TYPE_FROM_PROTO: Final[dict[int, FilesystemEventType]] = {
    files_pb2.FILESYSTEM_EVENT_TYPE_CREATE: "create",
    files_pb2.FILESYSTEM_EVENT_TYPE_MODIFY: "modify",
    files_pb2.FILESYSTEM_EVENT_TYPE_DELETE: "delete",
    files_pb2.FILESYSTEM_EVENT_TYPE_RENAME: "rename",
}


@dataclass(frozen=True)
class FilesystemEvent:
    """A change under a watched directory.

    Attributes:
        type: "create", "modify", "delete" or "rename".
        path: The absolute path inside the sandbox; for a rename, the new one.
        is_dir: Whether the path is a directory.
        old_path: For a rename, where it was; else None.
    """

    type: FilesystemEventType
    path: str
    is_dir: bool = False
    old_path: str | None = None

    @classmethod
    def from_proto(cls, message: files_pb2.FilesystemEvent) -> FilesystemEvent | None:
        """Converts a `hutch.v1.FilesystemEvent`; None for the WATCHING marker and unknown types."""
        kind = _EVENT_TYPE_FROM_PROTO.get(message.type)
        if kind is None:
            return None
        return cls(type=kind, path=message.path, is_dir=message.is_dir, old_path=message.old_path or None)
