"""Errors raised by the Hutch SDK.

Every error is a `HutchError`, so `except HutchError` handles them all. An error the gateway
reported carries the gateway's message, which says what went wrong and usually what to do, prefixed
with what the SDK was doing at the time.

    HutchError
    ├── AuthenticationError      UNAUTHENTICATED       no API key, or one the gateway does not know
    ├── PermissionDeniedError    PERMISSION_DENIED     the key may not do this
    ├── NotFoundError            NOT_FOUND             no such sandbox, template or file for this key
    ├── InvalidArgumentError     INVALID_ARGUMENT      the request itself is wrong
    ├── AlreadyExistsError       ALREADY_EXISTS        a name is taken
    ├── ResourceExhaustedError   RESOURCE_EXHAUSTED    no capacity, a quota or a size limit
    ├── SandboxError             FAILED_PRECONDITION   the sandbox is in the wrong state (e.g. killed)
    │   └── CommandExitError                           a command exited with a non-zero status
    ├── TimeoutError             DEADLINE_EXCEEDED     a call or a command ran out of time
    ├── UnavailableError         UNAVAILABLE           the gateway cannot be reached; retrying may help
    │   └── ConnectionLostError                        a followed process's or watch's stream broke
    ├── ChecksumMismatchError                          a transfer arrived with other bytes than were sent
    └── InternalError            INTERNAL              a bug or an unexpected failure

`asyncio.CancelledError` is never translated: cancelling a task that waits on the SDK cancels the
call and lets the cancellation propagate untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import grpc

from hutch.models import CommandResult

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "ChecksumMismatchError",
    "CommandExitError",
    "ConnectionLostError",
    "HutchError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SandboxError",
    "TimeoutError",
    "UnavailableError",
    "error_for_status",
]


class HutchError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        message: What went wrong, in words a person can act on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthenticationError(HutchError):
    """Raised when there is no API key, or the gateway does not accept it."""


class PermissionDeniedError(HutchError):
    """Raised when the API key is valid but may not do what was asked."""


class NotFoundError(HutchError):
    """Raised when a sandbox, template or file does not exist for this API key."""


class InvalidArgumentError(HutchError):
    """Raised when a request is malformed or a value is outside its allowed range."""


class AlreadyExistsError(HutchError):
    """Raised when a name the caller chose is already in use."""


class ResourceExhaustedError(HutchError):
    """Raised when there is no capacity left, a quota is reached or a size limit is exceeded."""


class SandboxError(HutchError):
    """Raised when the sandbox is in the wrong state for the request, e.g. it was already killed."""


class CommandExitError(SandboxError):
    """Raised when a command exits with a non-zero status.

    The command's complete output stays available on the exception.

    Attributes:
        result: The command's result, as `Commands.run` would have returned it.
    """

    def __init__(self, result: CommandResult, command: str) -> None:
        message = f"command {command!r} exited with code {result.exit_code}"
        if result.error:
            message += f" ({result.error})"
        tail = result.stderr.strip()[-_STDERR_TAIL:]
        if tail:
            message += f"; stderr: {tail}"
        super().__init__(message)
        self.result = result

    @property
    def stdout(self) -> str:
        """Everything the command wrote to standard output."""
        return self.result.stdout

    @property
    def stderr(self) -> str:
        """Everything the command wrote to standard error."""
        return self.result.stderr

    @property
    def exit_code(self) -> int:
        """The command's exit status (128 + N when signal N ended it)."""
        return self.result.exit_code

    @property
    def error(self) -> str | None:
        """How the command ended when that was not a plain exit, e.g. "killed by signal 9"."""
        return self.result.error


class TimeoutError(HutchError):
    """Raised when a call does not finish within its deadline, or a command exceeds its timeout."""


class UnavailableError(HutchError):
    """Raised when the gateway cannot be reached or a service behind it is down; retrying may help."""


class ConnectionLostError(UnavailableError):
    """Raised when the stream that follows a process, a terminal or a watch breaks.

    What it followed is not affected: a background process or a terminal keeps running in the
    sandbox and can be followed again by its pid (`commands.connect(pid)`, `pty.connect(pid)`).

    Attributes:
        pid: The process that was followed, or None for a watch.
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ChecksumMismatchError(HutchError):
    """Raised when a file transfer's SHA-256 differs between the two ends.

    An upload that fails this way may have replaced the file with corrupted content: write it again.
    A download that fails this way leaves no local file behind (`files.download`), or has handed
    out corrupted bytes (`files.read`): read it again.

    Attributes:
        expected: The checksum of the bytes the sender sent (hex).
        actual: The checksum of the bytes that arrived (hex).
    """

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class InternalError(HutchError):
    """Raised on an unexpected failure in the gateway or the SDK; the message says where."""


# How much of a failed command's stderr goes into the exception's message; all of it stays on `result`.
_STDERR_TAIL: Final = 500

# One table from gRPC status to exception. The first ten rows are the codes the gateway sends on
# purpose, each with its own class; the rest come from gRPC itself or a proxy on the way and are folded
# into the class whose advice fits.
ERROR_FOR_STATUS: Final[Mapping[grpc.StatusCode, type[HutchError]]] = MappingProxyType(
    {
        grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
        grpc.StatusCode.NOT_FOUND: NotFoundError,
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
        grpc.StatusCode.FAILED_PRECONDITION: SandboxError,
        grpc.StatusCode.DEADLINE_EXCEEDED: TimeoutError,
        grpc.StatusCode.UNAVAILABLE: UnavailableError,
        grpc.StatusCode.INTERNAL: InternalError,
        grpc.StatusCode.ABORTED: SandboxError,
        grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
        grpc.StatusCode.CANCELLED: UnavailableError,
        grpc.StatusCode.UNIMPLEMENTED: InternalError,
        grpc.StatusCode.DATA_LOSS: InternalError,
        grpc.StatusCode.UNKNOWN: InternalError,
    }
)


def error_for_status(
    code: grpc.StatusCode, details: str, *, doing: str, endpoint: str, gateway_answered: bool = False
) -> HutchError:
    """Builds the exception for a failed call.

    Args:
        code: The status the call ended with.
        details: The status message, usually the gateway's own words.
        doing: What the SDK was doing, e.g. "kill sandbox sb-1"; it prefixes the message.
        endpoint: The gateway's address, named when it cannot be reached.
        gateway_answered: Whether the gateway itself sent the status. UNAVAILABLE then means that
            something behind the gateway is down, not that the gateway cannot be reached.

    Returns:
        The matching `HutchError` subclass, with a message that says what to do where the status
        alone would not.
    """
    cls = ERROR_FOR_STATUS.get(code, InternalError)
    said = details.strip() or code.name.lower().replace("_", " ")
    if code is grpc.StatusCode.UNAVAILABLE and gateway_answered:
        message = f"{doing}: {said} (retrying may help; `hutch local status` shows what is down locally)"
    elif code is grpc.StatusCode.UNAVAILABLE:
        message = (
            f"{doing}: cannot reach the Hutch gateway at {endpoint}: is it running? try `hutch local status` ({said})"
        )
    elif code is grpc.StatusCode.CANCELLED:
        message = f"{doing}: the gateway at {endpoint} cancelled the call ({said}); try again"
    elif code is grpc.StatusCode.UNAUTHENTICATED:
        message = f"{doing}: {said} (check HUTCH_API_KEY, or run `hutch local up` to get a key for the local stack)"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        message = (
            f"{doing}: {said} (kill sandboxes you no longer need, see `hutch sandbox list`; ask for "
            "less CPU, memory or data; or try again later)"
        )
    elif code is grpc.StatusCode.UNIMPLEMENTED:
        message = (
            f"{doing}: the gateway at {endpoint} does not support this call ({said}); "
            "use an SDK version that matches the gateway"
        )
    else:
        message = f"{doing}: {said}"
    return cls(message)
