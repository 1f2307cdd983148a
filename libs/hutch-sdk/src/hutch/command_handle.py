"""Handles on commands running in the background: `sandbox.commands.run(..., background=True)` and
`sandbox.commands.connect(pid)` return one.

A background command keeps running when its handle goes away, when the program that started it
exits, even when the connection drops; `commands.connect(pid)` follows it again from anywhere,
replaying the output the sandbox kept for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
from collections.abc import AsyncIterator, Iterator
from typing import Final

from hutch._callbacks import CallbackThread
from hutch._connection import Connection
from hutch._convert import signal_number
from hutch._follow import Follower, Stream
from hutch._portal import PORTAL
from hutch._remote_process import ProcessStream, kill_process, send_stdin
from hutch._sources import ByteSource
from hutch._text import OutputHandler, TextCollector
from hutch.exceptions import CommandExitError, TimeoutError
from hutch.models import CommandOutput, CommandResult

__all__ = ["AsyncCommandHandle", "CommandHandle"]

_STREAMS: Final[tuple[Stream, Stream]] = ("stdout", "stderr")


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class AsyncCommandHandle:
    """A command running in the background, followed with async/await.

    `wait()` for its result, iterate it (`async for output in handle`) for its output as it comes,
    or let the `on_stdout`/`on_stderr` handlers given to `run` or `connect` receive it. Output is
    also collected on `stdout` and `stderr`.
    """

    def __init__(
        self,
        connection: Connection,
        sandbox_id: str,
        stream: ProcessStream,
        *,
        command: str,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | None = None,
    ) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id
        self._command = command
        self._collectors: dict[Stream, TextCollector] = {
            "stdout": TextCollector(on_stdout),
            "stderr": TextCollector(on_stderr),
        }
        self._log: list[CommandOutput] = []
        self._follower = Follower(connection, stream, self._receive, f"commands.connect({stream.pid})")
        self._feeder = asyncio.create_task(self._feed(stream, stdin)) if stdin is not None else None

    @property
    def pid(self) -> int:
        """The command's process id inside the sandbox."""
        return self._follower.stream.pid

    @property
    def stdout(self) -> str:
        """The standard output received so far."""
        return self._collectors["stdout"].text

    @property
    def stderr(self) -> str:
        """The standard error received so far."""
        return self._collectors["stderr"].text

    @property
    def exit_code(self) -> int | None:
        """The exit status once the command ended (128 + N for signal N), else None."""
        outcome = self._follower.outcome
        return None if outcome is None else outcome.exit_code

    @property
    def dropped_bytes(self) -> int:
        """For a handle from `connect`: earlier output the sandbox no longer kept, so not replayed."""
        return self._follower.stream.dropped_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pid={self.pid}, command={self._command!r}, exit_code={self.exit_code})"

    async def _receive(self, stream: Stream, data: bytes) -> None:
        text = await self._collectors[stream].feed(data)
        if text:
            self._log.append(CommandOutput(stream, text))

    async def _finish(self) -> None:
        # Flushes what an incomplete UTF-8 sequence left at the very end, once the command exited.
        for stream in _STREAMS:
            text = await self._collectors[stream].finish()
            if text:
                self._log.append(CommandOutput(stream, text))

    async def _feed(self, stream: ProcessStream, source: ByteSource) -> None:
        try:
            await stream.feed(source)
        except Exception as exc:
            # The command would wait for the rest of its input forever: close it, and let `wait`
            # report why.
            await stream.send(close_stdin=True)
            self._follower.abort(exc)

    async def wait(self) -> CommandResult:
        """Waits for the command to end.

        Cancelling the waiting task leaves the command and this handle running.

        Returns:
            The command's output and exit status (0).

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than its timeout and was killed.
            ConnectionLostError: The connection to the process was lost (it keeps running; follow
                it again with `commands.connect(pid)`), or the handle was disconnected.
            HutchError: Another failure; the subclass says which.
            Exception: What an output handler raised; the handle then stopped following.
        """
        outcome = await self._follower.wait()
        await self._finish()
        result = CommandResult(
            stdout=self.stdout,
            stderr=self.stderr,
            exit_code=outcome.exit_code,
            error=f"killed by signal {outcome.signal}" if outcome.signal else None,
        )
        if outcome.timed_out:
            raise TimeoutError(f"{self._follower.stream.doing}: ran longer than its timeout, so it was killed")
        if result.exit_code != 0:
            raise CommandExitError(result, self._command)
        return result

    async def __aiter__(self) -> AsyncIterator[CommandOutput]:
        """Yields the output from the start, then as it arrives, until the command ends.

        Several iterations may run at once; each sees all output.

        Raises:
            ConnectionLostError: The connection to the process was lost.
            Exception: What an output handler raised.
        """
        index = 0
        while True:
            while index < len(self._log):
                yield self._log[index]
                index += 1
            if self._follower.done:
                break
            await self._follower.changes.wait()
        self._follower.check()
        if self._follower.outcome is not None:
            await self._finish()
            for output in self._log[index:]:
                yield output

    async def kill(self, signal: int | str = signals.SIGKILL) -> bool:
        """Sends a signal to the command's process group (SIGKILL by default).

        Args:
            signal: A signal number, a `signal.Signals` member or a name such as "TERM".

        Returns:
            True if the signal was delivered, False if the process has ended or does not exist.

        Raises:
            HutchError: The signal could not be sent; the subclass says why.
        """
        return await kill_process(self._connection, self._sandbox_id, self.pid, signal_number(signal))

    async def send_stdin(self, data: str | bytes) -> None:
        """Writes to the command's stdin; it must have been started with `stdin=True`.

        Raises:
            SandboxError: The command has no stdin, or it was closed.
            HutchError: Another failure; the subclass says which.
        """
        payload = _as_bytes(data)
        if not (self._follower.following and await self._follower.stream.send(stdin=payload)):
            await send_stdin(self._connection, self._sandbox_id, self.pid, payload)

    async def close_stdin(self) -> None:
        """Closes the command's stdin, so it reads end of file.

        Raises:
            HutchError: The call failed; the subclass says why.
        """
        if not (self._follower.following and await self._follower.stream.send(close_stdin=True)):
            await send_stdin(self._connection, self._sandbox_id, self.pid, b"", eof=True)

    async def disconnect(self) -> None:
        """Stops following the command; it keeps running in the sandbox.

        Follow it again with `commands.connect(pid)`.
        """
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        await self._follower.disconnect()


class CommandHandle:
    """A command running in the background.

    `wait()` for its result, iterate it (`for output in handle`) for its output as it comes, or let
    the `on_stdout`/`on_stderr` handlers given to `run` or `connect` receive it; output is also
    collected on `stdout` and `stderr`. The handlers run one at a time, in output order, in a thread
    of the handle's own (not the thread that started the command, which is free to go on); they must
    not wait on their own handle.
    """

    def __init__(self, handle: AsyncCommandHandle, callbacks: CallbackThread | None = None) -> None:
        self._async = handle
        # Kept with the handle for as long as its handlers may run.
        self._callbacks = callbacks

    @property
    def pid(self) -> int:
        """The command's process id inside the sandbox."""
        return self._async.pid

    @property
    def stdout(self) -> str:
        """The standard output received so far."""
        return self._async.stdout

    @property
    def stderr(self) -> str:
        """The standard error received so far."""
        return self._async.stderr

    @property
    def exit_code(self) -> int | None:
        """The exit status once the command ended (128 + N for signal N), else None."""
        return self._async.exit_code

    @property
    def dropped_bytes(self) -> int:
        """For a handle from `connect`: earlier output the sandbox no longer kept, so not replayed."""
        return self._async.dropped_bytes

    def __repr__(self) -> str:
        return repr(self._async).replace(type(self._async).__name__, type(self).__name__, 1)

    def wait(self) -> CommandResult:
        """Waits for the command to end.

        Returns:
            The command's output and exit status (0).

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than its timeout and was killed.
            ConnectionLostError: The connection to the process was lost (it keeps running; follow
                it again with `commands.connect(pid)`), or the handle was disconnected.
            HutchError: Another failure; the subclass says which.
            Exception: What an output handler raised; the handle then stopped following.
        """
        return PORTAL.run(self._async.wait())

    def __iter__(self) -> Iterator[CommandOutput]:
        """Yields the output from the start, then as it arrives, until the command ends.

        Raises:
            ConnectionLostError: The connection to the process was lost.
            Exception: What an output handler raised.
        """
        return PORTAL.iterate(aiter(self._async))

    def kill(self, signal: int | str = signals.SIGKILL) -> bool:
        """Sends a signal to the command's process group (SIGKILL by default).

        Args:
            signal: A signal number, a `signal.Signals` member or a name such as "TERM".

        Returns:
            True if the signal was delivered, False if the process has ended or does not exist.

        Raises:
            HutchError: The signal could not be sent; the subclass says why.
        """
        return PORTAL.run(self._async.kill(signal))

    def send_stdin(self, data: str | bytes) -> None:
        """Writes to the command's stdin; it must have been started with `stdin=True`.

        Raises:
            SandboxError: The command has no stdin, or it was closed.
            HutchError: Another failure; the subclass says which.
        """
        PORTAL.run(self._async.send_stdin(data))

    def close_stdin(self) -> None:
        """Closes the command's stdin, so it reads end of file.

        Raises:
            HutchError: The call failed; the subclass says why.
        """
        PORTAL.run(self._async.close_stdin())

    def disconnect(self) -> None:
        """Stops following the command; it keeps running in the sandbox.

        Follow it again with `commands.connect(pid)`.
        """
        PORTAL.run(self._async.disconnect())
