"""The one table from gRPC status to exception, and the messages the exceptions carry."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

import hutch
from hutch import (
    AlreadyExistsError,
    AuthenticationError,
    CommandExitError,
    CommandResult,
    HutchError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxError,
    UnavailableError,
)
from hutch._config import ConnectionConfig
from hutch._connection import Connection
from hutch.exceptions import ERROR_FOR_STATUS, error_for_status

# The codes the gateway sends on purpose, each with its own class.
GATEWAY_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: SandboxError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: hutch.TimeoutError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def test_every_status_but_ok_has_an_exception() -> None:
    assert set(ERROR_FOR_STATUS) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize(("code", "cls"), GATEWAY_STATUSES.items(), ids=lambda value: str(value))
def test_gateway_statuses_map_to_their_own_class(code: grpc.StatusCode, cls: type[HutchError]) -> None:
    error = error_for_status(code, "what the gateway said", doing="do a thing", endpoint="127.0.0.1:1")
    assert type(error) is cls
    assert "what the gateway said" in error.message
    assert error.message.startswith("do a thing: ")


def test_gateway_statuses_get_distinct_classes() -> None:
    classes = [ERROR_FOR_STATUS[code] for code in GATEWAY_STATUSES]
    assert len(set(classes)) == len(classes)
    assert HutchError not in classes


def test_table_covers_every_status_the_server_maps_errors_to() -> None:
    runtime = pytest.importorskip("hutch.core.grpc_runtime")
    for domain_error, status in runtime.STATUS_FOR_ERROR.items():
        cls = ERROR_FOR_STATUS[status]
        assert cls is not HutchError, domain_error
        assert GATEWAY_STATUSES[status] is cls


def test_unavailable_names_the_gateway_and_what_to_try() -> None:
    error = error_for_status(grpc.StatusCode.UNAVAILABLE, "connection refused", doing="list", endpoint="h:1")
    assert "cannot reach the Hutch gateway at h:1" in error.message
    assert "hutch local status" in error.message
    assert "connection refused" in error.message


def test_unavailable_from_the_gateway_itself_does_not_claim_it_is_unreachable() -> None:
    error = error_for_status(
        grpc.StatusCode.UNAVAILABLE, "no node is running", doing="create", endpoint="h:1", gateway_answered=True
    )
    assert isinstance(error, UnavailableError)
    assert error.message.startswith("create: no node is running")
    assert "cannot reach" not in error.message


def test_resource_exhausted_hints_what_to_do() -> None:
    error = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "no capacity", doing="create", endpoint="h:1")
    assert "no capacity" in error.message
    assert "kill sandboxes you no longer need" in error.message


def test_unauthenticated_hints_where_keys_come_from() -> None:
    error = error_for_status(grpc.StatusCode.UNAUTHENTICATED, "unknown key", doing="list", endpoint="h:1")
    assert "HUTCH_API_KEY" in error.message
    assert "hutch local up" in error.message


def test_empty_details_fall_back_to_the_status_name() -> None:
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "", doing="get sandbox x", endpoint="h:1")
    assert error.message == "get sandbox x: not found"


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _connection() -> Connection:
    return Connection(ConnectionConfig(api_key="hk", endpoint="h:1", target="h:1", secure=False))


def test_translated_raises_from_the_rpc_error() -> None:
    cause = _rpc_error(grpc.StatusCode.NOT_FOUND, "sandbox sb-1 does not exist")
    with pytest.raises(NotFoundError) as caught, _connection().translated("get sandbox sb-1"):
        raise cause
    assert caught.value.__cause__ is cause
    assert caught.value.message == "get sandbox sb-1: sandbox sb-1 does not exist"


def test_translated_lets_cancellation_through_untouched() -> None:
    cancelled = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError) as caught, _connection().translated("run"):
        raise cancelled
    assert caught.value is cancelled


def test_command_exit_error_carries_the_result() -> None:
    result = CommandResult(stdout="partial\n", stderr="boom\n", exit_code=3)
    error = CommandExitError(result, "make test")
    assert isinstance(error, SandboxError)
    assert (error.stdout, error.stderr, error.exit_code, error.error) == ("partial\n", "boom\n", 3, None)
    assert error.result is result
    assert "'make test' exited with code 3" in error.message
    assert "boom" in error.message


def test_command_exit_error_message_keeps_only_the_end_of_a_long_stderr() -> None:
    error = CommandExitError(CommandResult("", "x" * 10_000 + "the end", 1), "noisy")
    assert error.message.endswith("the end")
    assert len(error.message) < 1000


def test_every_exception_is_a_hutch_error() -> None:
    exported = [getattr(hutch, name) for name in hutch.__all__]
    errors = [cls for cls in exported if isinstance(cls, type) and issubclass(cls, BaseException)]
    assert len(errors) == 14
    assert all(issubclass(cls, HutchError) for cls in errors)
