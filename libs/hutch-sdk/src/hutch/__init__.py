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

from hutch.commands import AsyncCommands, Commands, OutputHandler
from hutch.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    CommandExitError,
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
from hutch.files import AsyncFiles, Files, ReadFormat
from hutch.models import CommandResult, EntryInfo, FileType, SandboxInfo, SandboxState
from hutch.sandbox import AsyncSandbox, Sandbox
from hutch.templates import AsyncTemplate, Template, TemplateInfo

__all__ = [
    "AsyncTemplate",
    "Template",
    "TemplateInfo",
    "AlreadyExistsError",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandExitError",
    "CommandResult",
    "Commands",
    "EntryInfo",
    "FileType",
    "Files",
    "HutchError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutputHandler",
    "PermissionDeniedError",
    "ReadFormat",
    "ResourceExhaustedError",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "SandboxState",
    "TimeoutError",
    "UnavailableError",
]
