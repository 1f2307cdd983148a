"""Following a process: reading its stream to the end in a task of its own.

Command handles and terminal handles are both a `Follower` underneath: it passes output to the
handle as it arrives, records how the process ended, and turns every way the stream can end into
exactly one outcome: the process exited, the caller disconnected, a callback raised, or the
connection was lost. The last one is never silent: `wait` raises `ConnectionLostError`, which says
how to follow the process again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import grpc
import grpc.aio

from hutch._connection import Connection
from hutch._process import ProcessOutcome
from hutch._remote_process import ProcessStream
from hutch.exceptions import ConnectionLostError

Stream = Literal["stdout", "stderr"]
OutputSink = Callable[[Stream, bytes], Awaitable[None]]

# How a stream ends when the way to the process broke rather than the process or the request: the
# gateway went away or restarted, the connection dropped, keepalive pings went unanswered.
_LOST: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class Changes:
    """Wakes everyone waiting for the next change; a change before anyone waits is not remembered."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Follower:
    """Reads a process's stream to its end, passing output to `sink`.

    Args:
        connection: The channel the stream runs on, to translate its failures.
        stream: The open stream.
        sink: Awaited with each piece of output, in order; what it raises stops following.
        reconnect: How to follow the process again, e.g. "commands.connect(42)", for messages.
    """

    def __init__(self, connection: Connection, stream: ProcessStream, sink: OutputSink, reconnect: str) -> None:
        self._connection = connection
        self.stream = stream
        self._sink = sink
        self._reconnect = reconnect
        self.outcome: ProcessOutcome | None = None
        self._error: BaseException | None = None
        self._disconnected = False
        self.changes = Changes()
        self._task = asyncio.create_task(self._read(), name=f"hutch-follow-{stream.pid}")

    @property
    def done(self) -> bool:
        """Whether following has ended, for whatever reason."""
        return self._task.done()

    @property
    def following(self) -> bool:
        """Whether the stream is still open, so stdin, signals and resizes can travel on it."""
        return not self._task.done() and not self.stream.ended

    def _lost(self, detail: str) -> ConnectionLostError:
        return ConnectionLostError(
            f"{self.stream.doing}: the connection to the process was lost ({detail}); it keeps running in "
            f"the sandbox: reconnect with {self._reconnect}",
            pid=self.stream.pid,
        )

    async def _read(self) -> None:
        try:
            async for response in self.stream.responses():
                event = response.WhichOneof("event")
                if event == "stdout":
                    await self._sink("stdout", response.stdout)
                elif event == "stderr":
                    await self._sink("stderr", response.stderr)
                elif event == "exited":
                    self.outcome = ProcessOutcome.from_proto(response.exited)
                elif event == "dropped_bytes":  # this follower fell behind: output skipped here
                    self.stream.dropped_bytes += response.dropped_bytes
                self.changes.notify()
        except asyncio.CancelledError:
            # grpc.aio reports a locally cancelled call as CancelledError in its reader: either
            # `disconnect` (expected) or the channel being closed underneath the handle.
            if not self._disconnected:
                self._error = self._lost("the channel to the gateway was closed")
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _LOST:
                self._error = self._lost(exc.details() or exc.code().name.lower())
            else:
                self._error = self._connection.error(exc, self.stream.doing)
        except Exception as exc:
            # A callback raised: following stops and the caller gets the exception from `wait`.
            self._error = exc
        finally:
            self.stream.cancel()
            if self.outcome is None and self._error is None and not self._disconnected:
                self._error = self._lost("the stream ended before the process exited")
            self.changes.notify()

    async def wait(self) -> ProcessOutcome:
        """Waits until following ends and returns how the process ended.

        Cancelling the waiting task does not stop following.

        Raises:
            ConnectionLostError: The stream broke, or the handle was disconnected.
            Exception: What a callback raised.
            HutchError: The gateway ended the stream with an error (e.g. the sandbox was killed).
        """
        await asyncio.shield(self._task)
        if self._error is not None:
            raise self._error
        if self.outcome is None:
            raise ConnectionLostError(
                f"{self.stream.doing}: this handle was disconnected from the process; follow it again with "
                f"{self._reconnect}",
                pid=self.stream.pid,
            )
        return self.outcome

    def check(self) -> None:
        """Raises what ended following abnormally (see `wait`); nothing while following or after an exit."""
        if self._task.done() and self._error is not None:
            raise self._error

    def abort(self, error: BaseException) -> None:
        """Stops following because of `error`, which `wait` then raises; the process keeps running."""
        if self._task.done():
            return
        self._error = error
        # Counts as a deliberate stop, so the end of the stream is not taken for a lost connection.
        self._disconnected = True
        self._task.cancel()

    async def disconnect(self) -> None:
        """Stops following; the process keeps running. Returns once the stream is closed."""
        if self._task.done():
            return
        self._disconnected = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
