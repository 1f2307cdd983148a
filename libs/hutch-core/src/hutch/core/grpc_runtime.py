"""The gRPC server every service runs, and the one table from domain errors to status codes.

`serve()` starts a grpc.aio server with the standard health service, reflection, and one interceptor
that (a) makes the caller's trace context current and opens a server span, (b) checks the internal
token when the service is internal, and (c) turns `HutchError`s raised by handlers into the matching
status with the error's message. Handlers therefore raise domain errors and never call
`context.abort` themselves. The interceptor also records every call's duration
(`rpc.server.duration`, milliseconds) and count (`rpc.server.requests`) by service, method and status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from hutch.core import errors, telemetry
from hutch.core.config import GrpcSettings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    # The servicer context handlers receive; generic only in the type stubs.
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler

INTERNAL_TOKEN_HEADER: Final = "x-hutch-internal-token"
# The tenant an internal call acts for, named by the gateway after it authenticated the caller;
# trusted only together with the internal token.
TENANT_HEADER: Final = "x-hutch-tenant"

STATUS_FOR_ERROR: Final[dict[type[errors.HutchError], grpc.StatusCode]] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

ERROR_FOR_STATUS: Final[dict[grpc.StatusCode, type[errors.HutchError]]] = {
    status: error for error, status in STATUS_FOR_ERROR.items()
}


def status_for(error: errors.HutchError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError, what: str) -> errors.HutchError:
    """Turns a failed call to another service back into the domain error it carried."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = ERROR_FOR_STATUS.get(code)
    if cls is None:
        if code == grpc.StatusCode.CANCELLED:
            return errors.Unavailable(f"{what}: the call was cancelled")
        return errors.Internal(f"{what}: {code.name}: {details}")
    if cls is errors.Unavailable:
        return errors.Unavailable(f"{what} is unreachable: {details}")
    return cls(details or f"{what} failed")


_meter = telemetry.meter("hutch.grpc")
_duration = _meter.create_histogram(
    "rpc.server.duration", unit="ms", description="How long each call took, from its start to its status"
)
_requests = _meter.create_counter("rpc.server.requests", unit="{request}", description="Calls answered")


def _record(method: str, code: grpc.StatusCode, started: float) -> None:
    service, _, name = method.lstrip("/").rpartition("/")
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "rpc.grpc.status_code": code.value[0],
    }
    _duration.record((time.perf_counter() - started) * 1000, attributes)
    _requests.add(1, attributes)


def _code_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, errors.HutchError):
        return status_for(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _code_set_on(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status a handler set or aborted with (`context.code()`), else `default`."""
    code: object = context.code()  # an int at run time, whatever the stubs say
    if isinstance(code, grpc.StatusCode):
        return code
    return next((status for status in grpc.StatusCode if status.value[0] == code), default)


def internal_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata for a call to an internal service: the token and the current trace context."""
    carrier: dict[str, str] = {}
    telemetry.inject(carrier)
    return ((INTERNAL_TOKEN_HEADER, token), *carrier.items())


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, internal_token: str | None) -> None:
        self._token = internal_token
        self._tracer = telemetry.tracer("hutch.grpc")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        if self._token is not None:
            given = metadata.get(INTERNAL_TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return _refusal(
                    handler, method, self._tracer, "this is an internal service: the caller's token is missing or wrong"
                )
        return _wrapped(handler, method, metadata, self._tracer)


class _Raising:
    """An async iterator that raises at once: the response stream of a refused streaming call."""

    def __init__(self, error: errors.HutchError) -> None:
        self._error = error

    def __aiter__(self) -> _Raising:
        return self

    async def __anext__(self) -> Any:
        raise self._error


def _refusal(handler: Handler, method: str, tracer: trace.Tracer, message: str) -> Handler:
    async def deny(request: Any, context: Context) -> Any:
        raise errors.Unauthenticated(message)

    def deny_stream(request: Any, context: Context) -> _Raising:
        return _Raising(errors.Unauthenticated(message))

    refused = rebuild_handler(handler, deny, deny_stream)
    return _wrapped(refused, method, {}, tracer)


async def _abort(context: Context, method: str, exc: BaseException) -> None:
    if isinstance(exc, errors.HutchError):
        trace.get_current_span().set_attribute("hutch.error", exc.code)
        await context.abort(status_for(exc), exc.message)
    if isinstance(exc, NotImplementedError):
        # A method the service's generated base class declares but this server does not serve (an
        # older version of it, during a rolling upgrade).
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served by this version of the service")
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")


def _wrapped(handler: Handler, method: str, metadata: dict[str, str], tracer: trace.Tracer) -> Handler:
    def span() -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(telemetry.attached(metadata))
        stack.enter_context(tracer.start_as_current_span(method, kind=trace.SpanKind.SERVER))
        return stack

    async def unary(request: Any, context: Context) -> Any:
        behaviour: Any = handler.unary_unary or handler.stream_unary
        started, code = time.perf_counter(), grpc.StatusCode.OK
        with span():
            try:
                response = await behaviour(request, context)
                code = _code_set_on(context, code)
                return response
            except grpc.aio.AbortError:
                code = _code_set_on(context, grpc.StatusCode.UNKNOWN)
                raise
            except BaseException as exc:
                code = _code_for(exc)
                if not isinstance(exc, Exception):
                    raise
                await _abort(context, method, exc)
            finally:
                _record(method, code, started)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        behaviour: Any = handler.unary_stream or handler.stream_stream
        started, code = time.perf_counter(), grpc.StatusCode.OK
        with span():
            try:
                async for response in behaviour(request, context):
                    yield response
                code = _code_set_on(context, code)
            except grpc.aio.AbortError:
                code = _code_set_on(context, grpc.StatusCode.UNKNOWN)
                raise
            except BaseException as exc:
                code = _code_for(exc)
                if not isinstance(exc, Exception):
                    raise
                await _abort(context, method, exc)
            finally:
                _record(method, code, started)

    return rebuild_handler(handler, unary, streaming)


def rebuild_handler(
    handler: Handler,
    unary: Callable[..., Awaitable[Any]],
    streaming: Callable[..., AsyncIterator[Any]],
    response_serializer: Callable[[Any], bytes] | None = None,
) -> Handler:
    """`handler` with new behaviours of the same kind (`unary` for unary responses, `streaming` for
    streamed ones), and its own response serializer unless another is given."""
    des, ser = handler.request_deserializer, response_serializer or handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, des, ser)
    return grpc.stream_stream_rpc_method_handler(streaming, des, ser)


class Server:
    """A started gRPC server; `stop()` drains it gracefully."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: Any,
        services: Sequence[str],
        grace_s: float,
    ) -> None:
        self._server = server
        self.port = port
        self._health = health_servicer
        self._services = services
        self._grace_s = grace_s

    async def stop(self) -> None:
        for name in ("", *self._services):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(self._grace_s)


async def serve(
    settings: GrpcSettings,
    register: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    internal_token: str | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
) -> Server:
    """Starts a server with the given servicers.

    `register` holds (add_XServicer_to_server, servicer, full service name) triples. When
    `internal_token` is given, every call must carry it (see `internal_metadata`). `interceptors` run
    inside the standard one: they see the handlers' domain errors, and theirs are mapped like any.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.aio.server(interceptors=[_Interceptor(internal_token), *interceptors], options=options)
    names = []
    for add, servicer, name in register:
        add(servicer, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(server, port, health_servicer, names, settings.shutdown_grace_s)
