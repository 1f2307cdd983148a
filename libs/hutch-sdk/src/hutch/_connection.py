"""One gRPC channel to the gateway, carrying one API key.

The channel is opened on first use, inside the event loop that uses it (grpc.aio channels belong to
the loop they were created in), and can be closed and transparently reopened later, so a killed
sandbox holds no channel until someone asks it something again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Final, TypeVar

import grpc
import grpc.aio

from hutch._config import ConnectionConfig
from hutch.exceptions import HutchError, error_for_status
from hutch.v1 import files_pb2_grpc, process_pb2_grpc, sandbox_pb2_grpc, templates_pb2_grpc

if TYPE_CHECKING:
    from types import TracebackType

    from hutch.v1.files_pb2_grpc import FilesAsyncStub
    from hutch.v1.process_pb2_grpc import ProcessesAsyncStub
    from hutch.v1.sandbox_pb2_grpc import SandboxesAsyncStub
    from hutch.v1.templates_pb2_grpc import TemplatesAsyncStub

# What writing to a client stream raises once the gateway has already ended the call: the call's
# own status (awaited afterwards) is the real answer.
WRITE_AFTER_END: Final = (asyncio.InvalidStateError, grpc.aio.AioRpcError)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# File chunks are 1 MiB; the headroom covers larger chunks a future gateway may choose to send.
_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

# A stream can sit idle for hours (a terminal nobody types in, a watch on a quiet directory). Without
# pings, a gateway that vanished without closing the connection (a crashed host, a dropped NAT entry)
# would leave such a stream waiting forever; with them, it fails with UNAVAILABLE within about
# 30 s. The gateway accepts pings every 5 s, with or without calls in flight.
_KEEPALIVE_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # By default a client stops pinging after two pings without data, which is exactly an idle stream.
    ("grpc.http2.max_pings_without_data", 0),
)


def trace_context() -> tuple[tuple[str, str], ...]:
    """The caller's current trace context as gRPC metadata (W3C `traceparent`), so the platform's
    spans join the caller's trace; empty when the caller does not use OpenTelemetry."""
    if "opentelemetry.trace" not in sys.modules:  # the caller has no tracing: nothing to send
        return ()
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def _user_agent() -> str:
    try:
        version = metadata.version("hutch-sdk")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"hutch-sdk-python/{version}"


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.sandboxes: SandboxesAsyncStub = sandbox_pb2_grpc.SandboxesStub(channel)
        self.processes: ProcessesAsyncStub = process_pb2_grpc.ProcessesStub(channel)
        self.files: FilesAsyncStub = files_pb2_grpc.FilesStub(channel)
        self.templates: TemplatesAsyncStub = templates_pb2_grpc.TemplatesStub(channel)


class Connection:
    """A lazily opened grpc.aio channel to the gateway, with the caller's API key.

    Args:
        config: Where the gateway is and which key to send.
    """

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {config.api_key}"),)
        self._stubs: _Stubs | None = None

    def _open(self) -> _Stubs:
        if self._stubs is None:
            options = [
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.primary_user_agent", _user_agent()),
                *_KEEPALIVE_OPTIONS,
            ]
            if self.config.secure:
                channel = grpc.aio.secure_channel(self.config.target, grpc.ssl_channel_credentials(), options=options)
            else:
                channel = grpc.aio.insecure_channel(self.config.target, options=options)
            self._stubs = _Stubs(channel)
        return self._stubs

    @property
    def sandboxes(self) -> SandboxesAsyncStub:
        """The Sandboxes service; opens the channel if needed (call from inside the event loop)."""
        return self._open().sandboxes

    @property
    def processes(self) -> ProcessesAsyncStub:
        """The Processes service; opens the channel if needed (call from inside the event loop)."""
        return self._open().processes

    @property
    def files(self) -> FilesAsyncStub:
        """The Files service; opens the channel if needed (call from inside the event loop)."""
        return self._open().files

    @property
    def templates(self) -> TemplatesAsyncStub:
        """The Templates service; opens the channel if needed (call from inside the event loop)."""
        return self._open().templates

    @contextlib.contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """Turns a failed call inside the block into the matching `HutchError`.

        Args:
            doing: What the block does, e.g. "kill sandbox sb-1", for the error message.
        """
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self.error(exc, doing) from exc

    def error(self, exc: grpc.aio.AioRpcError, doing: str) -> HutchError:
        """The `HutchError` for a failed call, as `translated` raises it.

        Args:
            exc: The failure.
            doing: What the call did, for the message.
        """
        # A channel that is READY reached the gateway, so the status is the gateway's own answer and
        # not a failure to connect.
        answered = self._stubs is not None and self._stubs.channel.get_state() is grpc.ChannelConnectivity.READY
        return error_for_status(
            exc.code(),
            exc.details() or "",
            doing=doing,
            endpoint=self.config.endpoint,
            gateway_answered=answered,
        )

    async def unary(
        self,
        doing: str,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
    ) -> _Response:
        """Makes one unary call with the API key and the request deadline, translating failures.

        Args:
            doing: What the call does, for error messages.
            method: The stub method to call.
            request: The request message.

        Returns:
            The response message.
        """
        with self.translated(doing):
            return await method(request, timeout=self.config.request_timeout, metadata=self.metadata + trace_context())

    async def close(self) -> None:
        """Closes the channel, cancelling calls still in flight. The next call opens a new one."""
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            await stubs.channel.close(None)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
