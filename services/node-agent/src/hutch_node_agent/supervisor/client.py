"""The node-agent's side of the supervisor protocol (see protocol.py).

Every call opens its own connection to the sandbox's supervisor socket and closes it when done, as
the protocol carries one operation per connection. ERROR frames become the matching
`hutch.core.errors` exception; a supervisor that cannot be reached, or that drops the connection,
becomes `errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from hutch.core import errors
from hutch_node_agent.supervisor import protocol

# The StreamReader buffers up to this much before it stops reading the socket: a few output chunks.
_READ_BUFFER_LIMIT = 4 * protocol.CHUNK
_READY_POLL_INTERVAL_S = 0.001
# Operations with their own methods: `call` would mishandle their extra frames.
_STREAMING_OPS = frozenset({"exec", "read", "write"})
# How long closing an unfinished exec waits for the supervisor to confirm the kill.
_ABANDON_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Started:
    pid: int


@dataclass(frozen=True)
class Output:
    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exited:
    exit_code: int  # -1 when the process was killed by a signal
    signal: int
    timed_out: bool


ExecEvent = Started | Output | Exited


def _not_answering(socket_path: Path, detail: str) -> errors.Unavailable:
    return errors.Unavailable(f"the sandbox's supervisor is not answering on {socket_path}: {detail}")


def _decode_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        raise errors.Internal(f"the sandbox's supervisor sent a {what} that is not JSON") from None
    if not isinstance(value, dict):
        raise errors.Internal(f"the sandbox's supervisor sent a {what} that is not a JSON object")
    return value


def _error_from(payload: bytes) -> errors.HutchError:
    error = _decode_object(payload, "ERROR frame")
    return errors.error_for_code(str(error.get("code", "internal")), str(error.get("message", "unknown error")))


async def _connect(socket_path: Path) -> socket.socket:
    """Connects to a unix socket whatever the length of its path.

    A socket address holds at most 107 bytes; a node's root directory can make the full path
    longer. Connecting through /proc/self/fd/<fd of the folder>/<name> keeps the address short.
    """
    folder = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{folder}/{socket_path.name}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(folder)
    return sock


class _Connection:
    """One connection to the supervisor, speaking frames."""

    def __init__(self, socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._socket_path = socket_path
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, socket_path: Path) -> _Connection:
        try:
            sock = await _connect(socket_path)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_BUFFER_LIMIT)
        except OSError as err:
            raise _not_answering(socket_path, err.strerror or str(err)) from err
        return cls(socket_path, reader, writer)

    async def send(self, frame_type: int, payload: bytes = b"") -> None:
        try:
            self._writer.write(protocol.encode(frame_type, payload))
            await self._writer.drain()
        except ConnectionError as err:
            raise _not_answering(self._socket_path, "the connection was closed while sending") from err

    async def send_json(self, frame_type: int, value: object) -> None:
        await self.send(frame_type, json.dumps(value, separators=(",", ":")).encode())

    async def receive(self) -> tuple[int, bytes]:
        """The next frame as (type, payload); an ERROR frame is raised as its domain error."""
        try:
            header = await self._reader.readexactly(protocol.HEADER.size)
            frame_type, length = protocol.parse_header(header)
            payload = await self._reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            raise _not_answering(self._socket_path, "the connection closed before the operation finished") from err
        except protocol.ProtocolError as err:
            raise errors.Internal(f"the sandbox's supervisor sent a malformed frame: {err}") from err
        if frame_type == protocol.ERROR:
            raise _error_from(payload)
        return frame_type, payload

    async def receive_json(self, expected: int) -> dict[str, Any]:
        frame_type, payload = await self.receive()
        if frame_type != expected:
            raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type}, expected {expected}")
        return _decode_object(payload, "reply")

    async def close(self) -> None:
        # abort() rather than close(): closing is how a call is abandoned, and close() would first
        # wait for buffered frames to reach a supervisor that may no longer be reading them.
        self._writer.transport.abort()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # already broken: closing is all that was asked


class ExecSession:
    """A running process: iterate it for Started, Output* and Exited; feed it stdin and signals.

    Always close the session (or use it with `async with`); closing it before Exited kills the
    process and everything it started. Keep iterating while sending stdin: the supervisor forwards
    output only as fast as it is read, and a process blocked on its output stops reading input.
    """

    def __init__(self, connection: _Connection, pid: int, stdin: bool, socket_path: Path) -> None:
        self.pid = pid
        self._connection = connection
        self._socket_path = socket_path
        self._stdin = stdin
        self._stdin_closed = False
        self._started_reported = False
        self._exited = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ExecEvent:
        if not self._started_reported:
            self._started_reported = True
            return Started(self.pid)
        if self._exited:
            raise StopAsyncIteration
        frame_type, payload = await self._connection.receive()
        if frame_type == protocol.STDOUT:
            return Output("stdout", payload)
        if frame_type == protocol.STDERR:
            return Output("stderr", payload)
        if frame_type == protocol.EXIT:
            self._exited = True
            report = _decode_object(payload, "EXIT frame")
            return Exited(int(report["exit_code"]), int(report["signal"]), bool(report["timed_out"]))
        raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during exec")

    async def send_stdin(self, data: bytes) -> None:
        if not self._stdin:
            raise errors.FailedPrecondition('the process was started without stdin; pass "stdin": true to exec')
        if self._stdin_closed:
            raise errors.FailedPrecondition("stdin of the process is already closed")
        for start in range(0, len(data), protocol.CHUNK):
            await self._send(protocol.STDIN, data[start : start + protocol.CHUNK])

    async def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        await self._send(protocol.STDIN_EOF)

    async def send_signal(self, signal: int) -> None:
        """Delivers `signal` to the process's group (the process and what it started)."""
        await self._send(protocol.SIGNAL, json.dumps({"signal": signal}).encode())

    async def close(self) -> None:
        if not self._exited:
            # Say it on a fresh connection too: see the supervisor's op_abandon.
            with contextlib.suppress(errors.HutchError, TimeoutError):
                async with asyncio.timeout(_ABANDON_TIMEOUT_S):
                    await SupervisorClient(self._socket_path).call("abandon", pid=self.pid)
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _send(self, frame_type: int, payload: bytes = b"") -> None:
        if self._exited:
            raise errors.FailedPrecondition(f"process {self.pid} has already exited")
        try:
            await self._connection.send(frame_type, payload)
        except errors.Unavailable:
            # The process exited (or the supervisor went away) while this was being sent; the
            # iteration reports which.
            pass


class SupervisorClient:
    """Talks to the supervisor of one sandbox through its unix socket on the host."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def wait_ready(self, timeout_s: float) -> None:
        """Returns once the supervisor answers a ping; raises Unavailable after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.ping()
                return
            except (errors.Unavailable, TimeoutError):
                await asyncio.sleep(_READY_POLL_INTERVAL_S)
        raise errors.Unavailable(
            f"the sandbox's supervisor did not answer on {self.socket_path} within {timeout_s:g} s"
        )

    async def ping(self) -> dict[str, Any]:
        return await self.call("ping")

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Runs an operation that answers with one RESULT: list, stat, remove, rename, mkdir, ping."""
        if op in _STREAMING_OPS:
            raise errors.InvalidArgument(f"{op!r} streams data; use the client's {op} method")
        connection = await _Connection.open(self.socket_path)
        try:
            await connection.send_json(protocol.REQUEST, {**args, "op": op})
            return await connection.receive_json(protocol.RESULT)
        finally:
            await connection.close()

    async def exec(self, request: dict[str, Any]) -> ExecSession:
        """Starts a process (see the supervisor for the request's fields); errors starting it, such
        as a missing executable or user, are raised here.
        """
        connection = await _Connection.open(self.socket_path)
        try:
            await connection.send_json(protocol.REQUEST, {**request, "op": "exec"})
            started = await connection.receive_json(protocol.STARTED)
        except BaseException:
            await connection.close()
            raise
        return ExecSession(
            connection, int(started["pid"]), stdin=bool(request.get("stdin")), socket_path=self.socket_path
        )

    async def read_file(self, path: str) -> tuple[dict[str, Any], AsyncGenerator[bytes, None]]:
        """The file's info and its content in chunks; the caller consumes the chunks or closes them
        (`aclose()`), which closes the connection.
        """
        connection = await _Connection.open(self.socket_path)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "read", "path": path})
            info = await connection.receive_json(protocol.RESULT)
        except BaseException:
            await connection.close()
            raise
        return info, _file_chunks(connection)

    async def write_file(
        self, path: str, chunks: AsyncIterator[bytes], *, mode: int, user: str, max_bytes: int
    ) -> dict[str, Any]:
        """Uploads `chunks` to `path` (replaced atomically once complete) and returns its info.

        `mode` 0 keeps the existing file's mode (0o644 for a new file), `user` "" means root,
        `max_bytes` 0 means no limit. A refusal (such as going over `max_bytes`) stops the upload
        as soon as it arrives.
        """
        connection = await _Connection.open(self.socket_path)
        try:
            request = {"op": "write", "path": path, "mode": mode, "user": user, "max_bytes": max_bytes}
            await connection.send_json(protocol.REQUEST, request)
            # The reply is awaited while sending, so that a refusal stops the upload at once.
            reply = asyncio.create_task(connection.receive_json(protocol.RESULT))
            try:
                try:
                    await _upload(connection, chunks, reply)
                except errors.Unavailable:
                    pass  # the supervisor stopped reading; its reply says why
                return await reply
            finally:
                reply.cancel()
                await asyncio.gather(reply, return_exceptions=True)
        finally:
            await connection.close()


async def _upload(connection: _Connection, chunks: AsyncIterator[bytes], reply: asyncio.Task[Any]) -> None:
    """Sends DATA frames then END, stopping early once the supervisor has answered (a refusal)."""
    async for chunk in chunks:
        for start in range(0, len(chunk), protocol.CHUNK):
            if reply.done():
                return
            await connection.send(protocol.DATA, chunk[start : start + protocol.CHUNK])
    if not reply.done():
        await connection.send(protocol.END)


async def _file_chunks(connection: _Connection) -> AsyncGenerator[bytes, None]:
    try:
        while True:
            frame_type, payload = await connection.receive()
            if frame_type == protocol.END:
                return
            if frame_type != protocol.DATA:
                raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during a read")
            yield payload
    finally:
        await connection.close()
