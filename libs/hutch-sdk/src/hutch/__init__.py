"""Hutch: a computer for every AI agent.

    from hutch import Sandbox

    with Sandbox.create() as sandbox:
        print(sandbox.commands.run("echo hello").stdout)

`AsyncSandbox` offers the same API with async/await. The API key and the gateway's address come
from the `api_key` and `endpoint` arguments, else HUTCH_API_KEY and HUTCH_ENDPOINT, else the config
file `hutch local up` writes (~/.hutch/config.json).
"""

# Other distributions (hutch-proto, hutch-core, ...) add subpackages to this package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from hutch.command_handle import AsyncCommandHandle, CommandHandle
from hutch.commands import AsyncCommands, Commands, OutputHandler
from hutch.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    ChecksumMismatchError,
    CommandExitError,
    ConnectionLostError,
    HutchError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxError,
    TimeoutError,
    UnavailableError,
)
from hutch.files import AsyncFiles, Files, ProgressHandler, ReadFormat
from hutch.models import (
    CommandOutput,
    CommandResult,
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    SandboxInfo,
    SandboxState,
    SnapshotInfo,
    SnapshotUsage,
)
from hutch.network import EgressDestination, EgressReport, NetworkPolicy
from hutch.nodes import AsyncNodes, NodeInfo, Nodes
from hutch.pty import AsyncPty, AsyncPtyHandle, DataHandler, Pty, PtyHandle
from hutch.sandbox import AsyncSandbox, Sandbox
from hutch.secrets import AsyncSecret, Secret, SecretGrant, SecretInfo, SecretUse
from hutch.snapshot import AsyncSnapshot, Snapshot
from hutch.templates import AsyncTemplate, Template, TemplateInfo
from hutch.usage import AsyncUsage, CostComparison, PriceBook, Usage, UsageSummary
from hutch.watch import AsyncWatchHandle, EventHandler, WatchHandle

__all__ = [
    "AlreadyExistsError",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncNodes",
    "AsyncFiles",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSnapshot",
    "AsyncTemplate",
    "AsyncSecret",
    "AsyncUsage",
    "EgressDestination",
    "EgressReport",
    "NetworkPolicy",
    "Secret",
    "SecretGrant",
    "SecretInfo",
    "SecretUse",
    "AsyncWatchHandle",
    "AuthenticationError",
    "ChecksumMismatchError",
    "CommandExitError",
    "CommandHandle",
    "CommandOutput",
    "CommandResult",
    "Commands",
    "ConnectionLostError",
    "CostComparison",
    "DataHandler",
    "EntryInfo",
    "EventHandler",
    "FileType",
    "Files",
    "FilesystemEvent",
    "FilesystemEventType",
    "HutchError",
    "InternalError",
    "InvalidArgumentError",
    "NodeInfo",
    "Nodes",
    "NotFoundError",
    "OutputHandler",
    "PermissionDeniedError",
    "PriceBook",
    "ProcessInfo",
    "ProgressHandler",
    "Pty",
    "PtyHandle",
    "ReadFormat",
    "ResourceExhaustedError",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "SandboxState",
    "Snapshot",
    "SnapshotInfo",
    "SnapshotUsage",
    "Template",
    "TemplateInfo",
    "TimeoutError",
    "UnavailableError",
    "Usage",
    "UsageSummary",
    "WatchHandle",
]
