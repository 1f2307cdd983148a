"""The plain values the SDK returns: sandbox and file descriptions, and command results."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.v1 import files_pb2, sandbox_pb2

__all__ = ["CommandResult", "EntryInfo", "FileType", "SandboxInfo", "SandboxState"]


class SandboxState(StrEnum):
    """Where a sandbox is in its life. Compares equal to its lowercase name, e.g. "running"."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    KILLED = "killed"
    FAILED = "failed"

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
        )


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
