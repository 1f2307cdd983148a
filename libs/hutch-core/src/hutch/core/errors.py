"""Domain errors shared by every Hutch service.

Domain code raises these and never imports grpc; `hutch.core.grpc_errors` holds the one table that
turns them into gRPC status codes, and the SDK holds the reverse table. Each error has a stable
`code` string that also travels in events (SandboxFailed.code), so a failure that happened on a
node reaches the API caller as the same kind of error.

* HutchError
  x InvalidArgument      -> INVALID_ARGUMENT     the request itself is wrong
  x NotFound             -> NOT_FOUND            no such thing for this tenant
  x AlreadyExists        -> ALREADY_EXISTS       a name is taken
  x FailedPrecondition   -> FAILED_PRECONDITION  right request, wrong state (e.g. already killed)
  x ResourceExhausted    -> RESOURCE_EXHAUSTED   no capacity, a quota or a size limit
  x Unauthenticated      -> UNAUTHENTICATED      no or unknown API key
  x PermissionDenied     -> PERMISSION_DENIED    authenticated, but not allowed
  x DeadlineExceeded     -> DEADLINE_EXCEEDED    the work did not finish in time
  x Unavailable          -> UNAVAILABLE          a dependency is down; retrying may help
  x Internal             -> INTERNAL             a bug or an unexpected failure
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HutchError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for_code",
]


class HutchError(Exception):
    """Base class of every error a Hutch service reports to its callers."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HutchError):
    """Raised when a request is malformed or a value is out of its allowed range."""

    code = "invalid_argument"


class NotFound(HutchError):
    """Raised when a sandbox, template, file or key does not exist for the caller."""

    code = "not_found"


class AlreadyExists(HutchError):
    """Raised when a name the caller chose is already in use."""

    code = "already_exists"


class FailedPrecondition(HutchError):
    """Raised when the request is valid but the target is in the wrong state."""

    code = "failed_precondition"


class ResourceExhausted(HutchError):
    """Raised when no node has capacity, a quota is reached or a size limit is exceeded."""

    code = "resource_exhausted"


class Unauthenticated(HutchError):
    """Raised when a call carries no API key or an unknown one."""

    code = "unauthenticated"


class PermissionDenied(HutchError):
    """Raised when the caller is known but may not do this."""

    code = "permission_denied"


class DeadlineExceeded(HutchError):
    """Raised when the work did not finish within its deadline."""

    code = "deadline_exceeded"


class Unavailable(HutchError):
    """Raised when a dependency (NATS, PostgreSQL, a node) cannot be reached; retrying may help."""

    code = "unavailable"


class Internal(HutchError):
    """Raised on an unexpected failure; the message says what was being done."""

    code = "internal"


_BY_CODE: dict[str, type[HutchError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
        Unavailable,
        Internal,
    )
}


def error_for_code(code: str, message: str) -> HutchError:
    """Rebuilds the domain error that `code` names (unknown codes become `Internal`)."""
    return _BY_CODE.get(code, Internal)(message)
