"""The node-agent's side of the supervisor protocol (see protocol.py).

Every call opens its own connection to the sandbox's supervisor socket and closes it when done, as
the protocol carries one operation per connection. ERROR frames become the matching
`hutch.core.errors` exception; a supervisor that cannot be reached, or that drops the connection,
becomes `errors.Unavailable`.

What SupervisorClient offers:

    processes   exec(request) -> ExecSession          foreground, "background": True, or "pty": {cols, rows}
                attach(pid, replay=True) -> ExecSession  a background process or terminal, again
                processes() -> list[ProcessInfo]      background ones, running and recently exited
                signal(pid, signal), send_stdin(pid, data, eof=False)
    files       read_file(path) -> (info, FileChunks)  FileChunks.sha256 once read to the end
                write_file(path, chunks, ...) -> info  info["sha256"] of what was written
                watch(path, recursive=False) -> WatchSession  FsEvent*
                call("list" | "stat" | "remove" | "rename" | "mkdir" | "ping", **args)
    network     tcp(port, host="127.0.0.1") -> TcpStream  a byte stream to a port inside the sandbox

Sessions and streams hold a connection: close them (or use them with `async with`). Closing a
foreground ExecSession before Exited kills the process; closing any other session only detaches.
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
from typing import Any, Literal, Protocol, Self

from hutch.core import errors
from hutch_node_agent.supervisor import protocol

# The StreamReader buffers up to this much before it stops reading the socket: a few output chunks.
_READ_BUFFER_LIMIT = 4 * protocol.CHUNK
_READY_POLL_INTERVAL_S = 0.001
# Operations with their own methods: `call` would mishandle their extra frames.
_STREAMING_OPS = frozenset({"exec", "attach", "stdin", "read", "write", "watch", "tcp"})
# How long closing an unfinished exec waits for the supervisor to confirm the kill.
_ABANDON_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Started:
    pid: int
    # On attach with replay: output that no longer fit the process's buffer and is not replayed.
    dropped_bytes: int = 0


@dataclass(frozen=True)
class Output:
    stream: Literal["stdout", "stderr"]  # a terminal's output is all "stdout"
    data: bytes


@dataclass(frozen=True)
class Dropped:
    """Background processes only: this reader fell more than the process's output buffer behind
    (it read too slowly), so this much output was skipped here. The process never waits for readers.
    """

    dropped_bytes: int


@dataclass(frozen=True)
class Exited:
    exit_code: int  # -1 when the process was killed by a signal
    signal: int
    timed_out: bool


ExecEvent = Started | Output | Dropped | Exited


@dataclass(frozen=True)
class ProcessInfo:
    """A background process or terminal, as `processes()` lists it."""

    pid: int
    args: tuple[str, ...]  # the argv it runs (for a shell line: the shell, "-c" and the line)
    cmd: str | None  # the shell line, when it was started with one
    user: str
    cwd: str
    started_at: float  # unix time
    ended_at: float | None
    state: Literal["running", "exited"]
    exit_code: int | None  # once exited: as in Exited
    signal: int | None
    timed_out: bool
    pty: bool
    dropped_bytes: int  # output that no longer fit its buffer

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(value["pid"]),
            args=tuple(str(arg) for arg in value["args"]),
            cmd=value.get("cmd"),
            user=str(value["user"]),
            cwd=str(value["cwd"]),
            started_at=float(value["started_at"]),
            ended_at=None if value.get("ended_at") is None else float(value["ended_at"]),
            state="running" if value["state"] == "running" else "exited",
            exit_code=None if value.get("exit_code") is None else int(value["exit_code"]),
            signal=None if value.get("signal") is None else int(value["signal"]),
            timed_out=bool(value.get("timed_out")),
            pty=bool(value["pty"]),
            dropped_bytes=int(value["dropped_bytes"]),
        )


@dataclass(frozen=True)
class FsEvent:
    """A change under a watched directory. Paths are absolute, inside the sandbox."""

    type: Literal["create", "modify", "delete", "rename"]
    path: str  # for a rename, the new path
    is_dir: bool
    old_path: str | None = None  # for a rename, where it was

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> FsEvent:
        kind = value.get("type")
        if kind not in ("create", "modify", "delete", "rename"):
            raise errors.Internal(f"the sandbox's supervisor sent an unknown change type {kind!r}")
        old_path = value.get("old_path")
        return cls(kind, str(value["path"]), bool(value["is_dir"]), None if old_path is None else str(old_path))


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


class ConnectionWatcher(Protocol):
    """Told of every connection to one sandbox's supervisor: how the node sees a sandbox in use."""

    def opened(self) -> None: ...

    def closed(self) -> None: ...


class _Connection:
    """One connection to the supervisor, speaking frames."""

    def __init__(
        self,
        socket_path: Path,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        watcher: ConnectionWatcher | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._reader = reader
        self._writer = writer
        self._watcher = watcher

    @classmethod
    async def open(cls, socket_path: Path, watcher: ConnectionWatcher | None = None) -> _Connection:
        try:
            sock = await _connect(socket_path)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_BUFFER_LIMIT)
        except OSError as err:
            raise _not_answering(socket_path, err.strerror or str(err)) from err
        if watcher is not None:
            watcher.opened()
        return cls(socket_path, reader, writer, watcher)

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

    async def wait_closed_by_peer(self) -> None:
        """Waits for end-of-file: the supervisor has closed its end."""
        try:
            if await self._reader.read(1):
                raise errors.Internal("the sandbox's supervisor sent more after its last frame")
        except ConnectionError:
            pass  # reset: closed all the same

    async def close(self) -> None:
        # abort() rather than close(): closing is how a call is abandoned, and close() would first
        # wait for buffered frames to reach a supervisor that may no longer be reading them.
        if self._watcher is not None:
            self._watcher.closed()
            self._watcher = None
        self._writer.transport.abort()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # already broken: closing is all that was asked


class ExecSession:
    """A process: iterate it for Started, Output* (and Dropped*, see there), then Exited; feed it
    stdin, signals and (on a terminal) window sizes.

    Always close the session (or use it with `async with`). Closing a foreground session before
    Exited kills the process and everything it started; closing the session of a background process
    or terminal (`exec` with "background" or "pty", or `attach`) only detaches from it. Keep
    iterating while sending stdin: output is forwarded only as fast as it is read, and a foreground
    process blocked on its output stops reading input.
    """

    def __init__(
        self,
        connection: _Connection,
        pid: int,
        stdin: bool,
        socket_path: Path,
        *,
        background: bool = False,
        dropped_bytes: int = 0,
    ) -> None:
        self.pid = pid
        self.background = background
        self._connection = connection
        self._socket_path = socket_path
        self._stdin = stdin
        self._stdin_closed = False
        self._started = Started(pid, dropped_bytes)
        self._started_reported = False
        self._exited = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ExecEvent:
        if not self._started_reported:
            self._started_reported = True
            return self._started
        if self._exited:
            raise StopAsyncIteration
        frame_type, payload = await self._connection.receive()
        if frame_type == protocol.STDOUT:
            return Output("stdout", payload)
        if frame_type == protocol.STDERR:
            return Output("stderr", payload)
        if frame_type == protocol.DROPPED:
            return Dropped(int(_decode_object(payload, "DROPPED frame")["bytes"]))
        if frame_type == protocol.EXIT:
            self._exited = True
            report = _decode_object(payload, "EXIT frame")
            return Exited(int(report["exit_code"]), int(report["signal"]), bool(report["timed_out"]))
        raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during exec")

    async def send_stdin(self, data: bytes) -> None:
        """Writes to the process's stdin (a terminal's input: keys, including Ctrl-C as b"\\x03")."""
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

    async def send_resize(self, cols: int, rows: int) -> None:
        """Sets a terminal's window size (1..1000 each); the process gets SIGWINCH. Ignored for a
        process without a terminal; out-of-range sizes end the session with InvalidArgument.
        """
        await self._send(protocol.RESIZE, json.dumps({"cols": cols, "rows": rows}).encode())

    async def close(self) -> None:
        if not self._exited and not self.background:
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


class FileChunks:
    """A file's content as it is read: iterate it for chunks (bytes). Once the last chunk has been
    read, `sha256` holds the supervisor's SHA-256 (hex) of every byte it sent, for an end-to-end
    check; it stays None if the read is closed (`aclose()`) before the end.

    The chunks come from an async generator, so a read abandoned without aclose() still has its
    connection closed when the generator is finalized.
    """

    def __init__(self, connection: _Connection) -> None:
        self.sha256: str | None = None
        self._chunks = self._receive(connection)

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        return self._chunks

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        """Stops reading and closes the connection; the iteration ends."""
        await self._chunks.aclose()

    async def _receive(self, connection: _Connection) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                frame_type, payload = await connection.receive()
                if frame_type == protocol.END:
                    self.sha256 = str(_decode_object(payload, "END frame")["sha256"])
                    return
                if frame_type != protocol.DATA:
                    raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during a read")
                yield payload
        finally:
            await connection.close()


class WatchSession:
    """Changes under a watched directory: iterate it for FsEvent until you close it.

    Events come in the order they happened. The iteration raises (and the watch is over) when the
    watched directory itself is deleted or moved (NotFound), or when changes came faster than they
    were read and some were lost (ResourceExhausted): watch again to go on.
    """

    def __init__(self, connection: _Connection, path: str) -> None:
        self.path = path
        self._connection = connection

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> FsEvent:
        frame_type, payload = await self._connection.receive()
        if frame_type != protocol.EVENT:
            raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during a watch")
        return FsEvent.from_wire(_decode_object(payload, "EVENT frame"))

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class TcpStream:
    """A TCP connection to a port inside the sandbox, relayed by its supervisor: a plain byte stream
    (HTTP, WebSocket upgrades and long responses alike).

    `send` and `recv` may be used from different tasks at once. `send_eof` half-closes (the server
    reads end of file and can still answer); `recv` returns b"" once the server has half-closed or
    closed its side, and raises the error (Unavailable) if the connection inside the sandbox fails.
    Nothing is buffered beyond a chunk or two: a side that does not read slows the other down.
    """

    def __init__(self, connection: _Connection, port: int) -> None:
        self.port = port
        self._connection = connection
        self._eof_sent = False
        self._eof_received = False

    async def send(self, data: bytes) -> None:
        if self._eof_sent:
            raise errors.FailedPrecondition(f"the connection to port {self.port} is already closed for writing")
        for start in range(0, len(data), protocol.CHUNK):
            await self._connection.send(protocol.DATA, data[start : start + protocol.CHUNK])

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            await self._connection.send(protocol.END)

    async def recv(self) -> bytes:
        """The next bytes the server sent, b"" once it will send no more."""
        if self._eof_received:
            return b""
        frame_type, payload = await self._connection.receive()
        if frame_type == protocol.END:
            self._eof_received = True
            return b""
        if frame_type != protocol.DATA:
            raise errors.Internal(f"the sandbox's supervisor sent frame type {frame_type} during a tcp relay")
        return payload

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        data = await self.recv()
        if not data:
            raise StopAsyncIteration
        return data

    async def close(self) -> None:
        """Ends the relay at once, both ways (the server sees its connection close)."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SupervisorClient:
    """Talks to the supervisor of one sandbox through its unix socket on the host."""

    def __init__(self, socket_path: Path, watcher: ConnectionWatcher | None = None) -> None:
        self.socket_path = socket_path
        self._watcher = watcher

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
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {**args, "op": op})
            return await connection.receive_json(protocol.RESULT)
        finally:
            await connection.close()

    async def quiesce(self) -> None:
        """Has the supervisor let go of every host-visible socket (for a gVisor checkpoint); returns
        once it has closed this connection too. It listens again after `runsc kill ID USR1`.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "quiesce"})
            await connection.receive_json(protocol.RESULT)
            await connection.wait_closed_by_peer()
        finally:
            await connection.close()

    async def exec(self, request: dict[str, Any]) -> ExecSession:
        """Starts a process; errors starting it, such as a missing executable or user, are raised here.

        The request's fields: "args" (argv) or "cmd" (a shell line), "env", "cwd", "user",
        "timeout_ms" (0: none), "stdin" (keep stdin open for send_stdin). "background": True keeps the
        process running after the session closes, with its recent output in a ring buffer of
        "buffer_bytes" (default 256 KiB, at most 4 MiB); "pty": {"cols", "rows"} runs it on a
        pseudo-terminal (always in the background, stdin always open, all output as stdout, TERM
        xterm-256color unless "env" sets it).
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {**request, "op": "exec"})
            started = await connection.receive_json(protocol.STARTED)
        except BaseException:
            await connection.close()
            raise
        on_terminal = request.get("pty") is not None
        return ExecSession(
            connection,
            int(started["pid"]),
            stdin=bool(request.get("stdin")) or on_terminal,
            socket_path=self.socket_path,
            background=bool(request.get("background")) or on_terminal,
        )

    async def attach(self, pid: int, *, replay: bool = True) -> ExecSession:
        """Attaches to a background process or terminal: with `replay`, its buffered output first
        (Started.dropped_bytes says how much had already been dropped), then its live output, then
        Exited (at once after the replay if it has exited already). Several sessions may be attached
        at once; each gets all of the output. Closing the session never stops the process. Stdin
        sent to a process whose stdin is closed is dropped. NotFound for an unknown pid.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "attach", "pid": pid, "replay": replay})
            started = await connection.receive_json(protocol.STARTED)
        except BaseException:
            await connection.close()
            raise
        return ExecSession(
            connection,
            int(started["pid"]),
            stdin=True,
            socket_path=self.socket_path,
            background=True,
            dropped_bytes=int(started.get("dropped_bytes", 0)),
        )

    async def processes(self) -> list[ProcessInfo]:
        """The background processes and terminals, running and the last 100 exited, oldest first."""
        result = await self.call("processes")
        return [ProcessInfo.from_wire(process) for process in result["processes"]]

    async def signal(self, pid: int, signal: int) -> None:
        """Signals the process group of a process an exec started (foreground or background).

        NotFound for an unknown pid, FailedPrecondition for a background process that has exited.
        """
        await self.call("signal", pid=pid, signal=signal)

    async def send_stdin(self, pid: int, data: bytes, *, eof: bool = False) -> None:
        """Writes `data` to a background process's stdin without attaching, then closes its stdin if
        `eof`. Returns once the process has taken all of it (it may wait for the process to read).

        NotFound for an unknown pid; FailedPrecondition once the process has exited or its stdin is
        closed (or it was started without "stdin").
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "stdin", "pid": pid, "eof": eof})
            await _send_and_await_reply(connection, _one_chunk(data))
        finally:
            await connection.close()

    async def watch(self, path: str, *, recursive: bool = False) -> WatchSession:
        """Watches the directory `path` (and, if `recursive`, everything below it, including
        directories created later); returns once the watch is in place, so every later change is
        seen. NotFound if `path` does not exist, InvalidArgument if it is not a directory.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "watch", "path": path, "recursive": recursive})
            await connection.receive_json(protocol.RESULT)
        except BaseException:
            await connection.close()
            raise
        return WatchSession(connection, path)

    async def tcp(self, port: int, host: str = "127.0.0.1") -> TcpStream:
        """Connects to `port` inside the sandbox, on a loopback address (127.0.0.0/8, ::1 or
        "localhost"; anything else is InvalidArgument), and returns the byte stream. Unavailable if
        nothing listens there. Works the same for every isolation class: no network link is used.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "tcp", "port": port, "host": host})
            await connection.receive_json(protocol.RESULT)
        except BaseException:
            await connection.close()
            raise
        return TcpStream(connection, port)

    async def read_file(self, path: str) -> tuple[dict[str, Any], FileChunks]:
        """The file's info and its content in chunks; the caller consumes the chunks or closes them
        (`aclose()`), which closes the connection. After the last chunk, `chunks.sha256` holds the
        checksum of the content.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            await connection.send_json(protocol.REQUEST, {"op": "read", "path": path})
            info = await connection.receive_json(protocol.RESULT)
        except BaseException:
            await connection.close()
            raise
        return info, FileChunks(connection)

    async def write_file(
        self, path: str, chunks: AsyncIterator[bytes], *, mode: int, user: str, max_bytes: int
    ) -> dict[str, Any]:
        """Uploads `chunks` to `path` (replaced atomically once complete) and returns its info,
        with "sha256" (hex) of the bytes written.

        `mode` 0 keeps the existing file's mode (0o644 for a new file), `user` "" means root,
        `max_bytes` 0 means no limit. A refusal (such as going over `max_bytes`) stops the upload
        as soon as it arrives.
        """
        connection = await _Connection.open(self.socket_path, self._watcher)
        try:
            request = {"op": "write", "path": path, "mode": mode, "user": user, "max_bytes": max_bytes}
            await connection.send_json(protocol.REQUEST, request)
            return await _send_and_await_reply(connection, chunks)
        finally:
            await connection.close()


async def _send_and_await_reply(connection: _Connection, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
    """Sends `chunks` as DATA frames then END, and returns the RESULT. The reply is awaited while
    sending, so that a refusal stops the sending at once and is what gets raised.
    """
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


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _upload(connection: _Connection, chunks: AsyncIterator[bytes], reply: asyncio.Task[Any]) -> None:
    """Sends DATA frames then END, stopping early once the supervisor has answered (a refusal)."""
    async for chunk in chunks:
        for start in range(0, len(chunk), protocol.CHUNK):
            if reply.done():
                return
            await connection.send(protocol.DATA, chunk[start : start + protocol.CHUNK])
    if not reply.done():
        await connection.send(protocol.END)
