"""A process in a sandbox that outlives the call that started it: the stream that follows it, and the
calls that reach it by pid.

A Run call with `background` (or a terminal) and a Connect call look the same once open: requests
carry stdin, signals and terminal sizes; responses carry `started`, output and `exited`.
`ProcessStream` wraps either one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import grpc.aio

from hutch._connection import Connection
from hutch._sources import ByteSource, iter_chunks
from hutch.exceptions import HutchError, InternalError, NotFoundError, SandboxError
from hutch.models import ProcessInfo
from hutch.v1 import process_pb2

_Request: TypeAlias = process_pb2.RunRequest | process_pb2.ConnectRequest
_Call: TypeAlias = (
    grpc.aio.StreamStreamCall[process_pb2.RunRequest, process_pb2.RunResponse]
    | grpc.aio.StreamStreamCall[process_pb2.ConnectRequest, process_pb2.RunResponse]
)


class ProcessStream:
    """An open Run or Connect call on a process that has started.

    Make one with `start` or `attach`. Writes are serialised: gRPC allows one write in flight per
    call, and the caller's stdin, signals and resizes may come from several tasks.

    Attributes:
        pid: The process's id inside the sandbox.
        dropped_bytes: Output that never reached this caller: on `attach`, what no longer fit the
            process's buffer; later, what went by while the caller was more than the buffer behind.
        doing: What following this process is, for error messages.
    """

    def __init__(self, call: _Call, request: type[_Request], doing: str) -> None:
        self._call = call
        self._request = request
        self._lock = asyncio.Lock()
        self.pid = 0
        self.dropped_bytes = 0
        self.doing = doing

    @classmethod
    async def start(cls, connection: Connection, config: process_pb2.ProcessConfig, doing: str) -> ProcessStream:
        """Starts a process and returns once the sandbox reports it started.

        Raises:
            HutchError: The process could not be started; the subclass says why.
        """
        call = connection.processes.Run(None, metadata=connection.metadata)
        stream = cls(call, process_pb2.RunRequest, doing)
        await stream._open(connection, process_pb2.RunRequest(start=config))
        return stream

    @classmethod
    async def attach(cls, connection: Connection, sandbox: str, pid: int, doing: str) -> ProcessStream:
        """Follows a running (or recently ended) process, starting with the output it buffered.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        call = connection.processes.Connect(None, metadata=connection.metadata)
        stream = cls(call, process_pb2.ConnectRequest, doing)
        attach = process_pb2.AttachProcess(sandbox=sandbox, pid=pid, replay=True)
        await stream._open(connection, process_pb2.ConnectRequest(attach=attach))
        return stream

    async def _open(self, connection: Connection, first: _Request) -> None:
        try:
            with connection.translated(self.doing):
                with contextlib.suppress(asyncio.InvalidStateError):
                    # Raised when the gateway already ended the call; the read below reports why.
                    await self._write(first)
                response = await self._call.read()
            if not isinstance(response, process_pb2.RunResponse):
                raise InternalError(f"{self.doing}: the gateway ended the stream before the process started")
            if response.WhichOneof("event") != "started":
                raise InternalError(f"{self.doing}: the gateway sent {response.WhichOneof('event')} before `started`")
        except BaseException:
            self._call.cancel()
            raise
        self.pid = response.started.pid
        self.dropped_bytes = response.started.dropped_bytes

    async def _write(self, request: _Request) -> None:
        async with self._lock:
            # The call's type pairs with its request type, which the union types cannot express.
            await self._call.write(request)  # type: ignore[arg-type]

    async def send(
        self,
        *,
        stdin: bytes | None = None,
        close_stdin: bool = False,
        signal: int | None = None,
        resize: process_pb2.TerminalSize | None = None,
    ) -> bool:
        """Sends one control message to the process.

        Returns:
            False when the stream has ended (or been closed), so nothing could be sent on it.
        """
        if stdin is not None:
            request = self._request(stdin=stdin)
        elif close_stdin:
            request = self._request(close_stdin=True)
        elif signal is not None:
            request = self._request(signal=process_pb2.Signal(number=signal))
        elif resize is not None:
            request = self._request(resize=resize)
        else:
            raise ValueError("send() needs one of stdin, close_stdin, signal or resize")
        try:
            await self._write(request)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            return False
        return True

    async def feed(self, source: ByteSource) -> None:
        """Sends all of `source` as stdin, then closes stdin; stops quietly once the stream has ended."""
        async for chunk in iter_chunks(source):
            if not await self.send(stdin=chunk):
                return
        await self.send(close_stdin=True)

    async def responses(self) -> AsyncIterator[process_pb2.RunResponse]:
        """The responses after `started`, raising the call's failure as `grpc.aio.AioRpcError`."""
        # read(), not iteration: gRPC refuses to mix the two on one call, and `started` was read.
        while isinstance(response := await self._call.read(), process_pb2.RunResponse):
            yield response

    def cancel(self) -> None:
        """Ends the call. A background process or terminal keeps running."""
        self._call.cancel()

    @property
    def ended(self) -> bool:
        """Whether the call has ended, for whatever reason."""
        return self._call.done()


async def send_signal(connection: Connection, sandbox: str, pid: int, number: int) -> None:
    """Sends a signal to a process's group with a call of its own.

    Raises:
        NotFoundError: The sandbox has no such process.
        HutchError: Another failure; the subclass says which.
    """
    await connection.unary(
        f"send signal {number} to process {pid} in sandbox {sandbox}",
        connection.processes.SendSignal,
        process_pb2.SendSignalRequest(sandbox=sandbox, pid=pid, signal=number),
    )


async def kill_process(connection: Connection, sandbox: str, pid: int, number: int) -> bool:
    """Signals a process's group; False when there is no such process or it has already ended.

    Raises:
        HutchError: The signal could not be sent for another reason, e.g. the sandbox is not running.
    """
    try:
        await send_signal(connection, sandbox, pid, number)
    except NotFoundError:
        return False
    except SandboxError:
        # Also what the sandbox answers for a process that has ended but is still listed; anything
        # else (a sandbox that is not running) stays an error.
        try:
            ended = any(info.pid == pid and not info.running for info in await list_processes(connection, sandbox))
        except HutchError:
            ended = False
        if ended:
            return False
        raise
    return True


async def send_stdin(connection: Connection, sandbox: str, pid: int, data: bytes, *, eof: bool = False) -> None:
    """Writes to a process's stdin (and closes it with `eof`) with a call of its own.

    Raises:
        NotFoundError: The sandbox has no such process.
        SandboxError: The process was started without stdin, or its stdin is closed.
        HutchError: Another failure; the subclass says which.
    """
    await connection.unary(
        f"send stdin to process {pid} in sandbox {sandbox}",
        connection.processes.SendStdin,
        process_pb2.SendStdinRequest(sandbox=sandbox, pid=pid, data=data, eof=eof),
    )


async def list_processes(connection: Connection, sandbox: str) -> list[ProcessInfo]:
    """The sandbox's background processes and terminals, running and recently finished.

    Raises:
        HutchError: The call failed; the subclass says why.
    """
    response = await connection.unary(
        f"list processes in sandbox {sandbox}",
        connection.processes.List,
        process_pb2.ListProcessesRequest(sandbox=sandbox),
    )
    return [ProcessInfo.from_proto(message) for message in response.processes]
