"""Interactive terminals in a sandbox: `sandbox.pty`.

A terminal is a process (a login shell by default) attached to a pseudo-terminal: what it writes
comes back as raw bytes, escape sequences included, and what is sent to it arrives as if typed, so
b"\\x03" is Ctrl-C and b"\\x04" Ctrl-D. A terminal lives on its own: when the handle, the program or
the connection goes away it keeps running, and `pty.connect(pid)` takes it up again.
"""

from __future__ import annotations

import collections
import inspect
import signal as signals
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Final, TypeAlias

from hutch._callbacks import CallbackThread
from hutch._connection import Connection
from hutch._convert import describe_command, process_config, terminal_size
from hutch._follow import Follower, Stream
from hutch._portal import PORTAL
from hutch._remote_process import ProcessStream, kill_process, send_stdin
from hutch.exceptions import ConnectionLostError

__all__ = ["AsyncPty", "AsyncPtyHandle", "DataHandler", "Pty", "PtyHandle"]

DataHandler: TypeAlias = Callable[[bytes], object]
"""Receives a terminal's output, raw bytes as the terminal wrote them. With AsyncSandbox it may be a
coroutine function."""

# Starts the user's login shell as a login would: the shell /etc/passwd names for $USER (set by the
# sandbox for every process), unless that is missing or refuses logins, then bash, then sh. Pure
# POSIX sh, as images need not have getent, awk or even bash.
LOGIN_SHELL: Final = (
    "/bin/sh",
    "-c",
    'shell=; while IFS=: read -r name _ _ _ _ _ login; do if [ "$name" = "$USER" ]; then shell=$login; '
    "break; fi; done 2>/dev/null </etc/passwd; "
    'case "$shell" in */nologin|*/false|"") shell=/bin/bash;; esac; '
    '[ -x "$shell" ] || shell=/bin/bash; [ -x "$shell" ] || shell=/bin/sh; exec "$shell" -l',
)
# What programs in the terminal learn about it when the caller does not say.
DEFAULT_TERM: Final = "xterm-256color"


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class AsyncPtyHandle:
    """A terminal in a sandbox, driven with async/await.

    Its output goes to the `on_data` handler given to `create` or `connect`; without one, iterate
    the handle (`async for data in handle`) to read it.
    """

    def __init__(
        self,
        connection: Connection,
        sandbox_id: str,
        stream: ProcessStream,
        on_data: DataHandler | None = None,
    ) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id
        self._on_data = on_data
        # Kept only without a handler, and emptied by iteration: a terminal may run for days.
        self._unread: collections.deque[bytes] = collections.deque()
        self._follower = Follower(connection, stream, self._receive, f"pty.connect({stream.pid})")

    @property
    def pid(self) -> int:
        """The terminal's process id inside the sandbox."""
        return self._follower.stream.pid

    @property
    def exit_code(self) -> int | None:
        """The exit status once the terminal's process ended (128 + N for signal N), else None."""
        outcome = self._follower.outcome
        return None if outcome is None else outcome.exit_code

    @property
    def dropped_bytes(self) -> int:
        """For a handle from `connect`: earlier output the sandbox no longer kept, so not replayed."""
        return self._follower.stream.dropped_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pid={self.pid}, exit_code={self.exit_code})"

    async def _receive(self, stream: Stream, data: bytes) -> None:
        # A terminal has one output; the pseudo-terminal merges what its process writes to stderr.
        if self._on_data is None:
            self._unread.append(data)
            return
        result = self._on_data(data)
        if inspect.isawaitable(result):
            await result

    async def send_input(self, data: str | bytes) -> None:
        """Sends keystrokes: b"\\r" is Enter, b"\\x03" Ctrl-C, b"\\x04" Ctrl-D; str is encoded as UTF-8.

        Raises:
            NotFoundError: The terminal's process no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        payload = _as_bytes(data)
        if not (self._follower.following and await self._follower.stream.send(stdin=payload)):
            await send_stdin(self._connection, self._sandbox_id, self.pid, payload)

    async def resize(self, cols: int, rows: int) -> None:
        """Changes the terminal's size; its programs get SIGWINCH and redraw.

        Args:
            cols: Columns, 1 to 1000.
            rows: Rows, 1 to 1000.

        Raises:
            InvalidArgumentError: A size is out of range.
            ConnectionLostError: The handle no longer follows the terminal; reconnect first.
        """
        size = terminal_size(cols, rows)
        if not (self._follower.following and await self._follower.stream.send(resize=size)):
            self._follower.check()
            raise ConnectionLostError(
                f"resize terminal {self.pid} in sandbox {self._sandbox_id}: this handle no longer follows "
                f"the terminal; reconnect with pty.connect({self.pid})",
                pid=self.pid,
            )

    async def kill(self) -> bool:
        """Kills the terminal's process group (SIGKILL).

        Returns:
            True if it was killed, False if it has already ended.
        """
        return await kill_process(self._connection, self._sandbox_id, self.pid, signals.SIGKILL)

    async def wait(self) -> int:
        """Waits for the terminal's process to end, e.g. after `exit` in its shell.

        Cancelling the waiting task leaves the terminal and this handle running.

        Returns:
            Its exit status (128 + N when signal N ended it).

        Raises:
            ConnectionLostError: The connection to the terminal was lost (it keeps running; take it up
                again with `pty.connect(pid)`), or the handle was disconnected.
            Exception: What `on_data` raised; the handle then stopped following.
            HutchError: Another failure; the subclass says which.
        """
        return (await self._follower.wait()).exit_code

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yields the terminal's output (when no `on_data` was given) until its process ends.

        Raises:
            ConnectionLostError: The connection to the terminal was lost.
        """
        while True:
            while self._unread:
                yield self._unread.popleft()
            if self._follower.done:
                break
            await self._follower.changes.wait()
        self._follower.check()

    async def disconnect(self) -> None:
        """Stops following the terminal; it keeps running. Take it up again with `pty.connect(pid)`."""
        await self._follower.disconnect()


class AsyncPty:
    """Starts and reattaches terminals in one sandbox; reached as `sandbox.pty` on an `AsyncSandbox`."""

    def __init__(self, connection: Connection, sandbox_id: str) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id

    async def create(
        self,
        cols: int = 80,
        rows: int = 24,
        on_data: DataHandler | None = None,
        cmd: str | Sequence[str] | None = None,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
    ) -> AsyncPtyHandle:
        """Starts a terminal and returns once its process runs.

        Args:
            cols: Columns, 1 to 1000.
            rows: Rows, 1 to 1000.
            on_data: Called with the terminal's output as it arrives; may be a coroutine function.
            cmd: What runs in it: a shell command line, or an argv run directly. By default the
                user's login shell (as /etc/passwd names it, else bash, else sh), started with -l.
            envs: Environment variables added to the sandbox's own; TERM defaults to xterm-256color.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.

        Returns:
            A handle on the terminal.

        Raises:
            InvalidArgumentError: A size is out of range, or cmd is empty.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        config = process_config(
            self._sandbox_id,
            LOGIN_SHELL if cmd is None else cmd,
            envs={"TERM": DEFAULT_TERM, **(envs or {})},
            cwd=cwd,
            user=user,
            pty=terminal_size(cols, rows),
        )
        what = "a login shell" if cmd is None else repr(describe_command(cmd))
        stream = await ProcessStream.start(
            self._connection, config, f"start a terminal running {what} in sandbox {self._sandbox_id}"
        )
        stream.doing = f"follow terminal {stream.pid} in sandbox {self._sandbox_id}"
        return AsyncPtyHandle(self._connection, self._sandbox_id, stream, on_data)

    async def connect(self, pid: int, on_data: DataHandler | None = None) -> AsyncPtyHandle:
        """Takes up a terminal again, e.g. after a disconnect or from another program.

        The output the sandbox kept for it comes first, then new output.

        Args:
            pid: The terminal's process id.
            on_data: Called with the terminal's output as it arrives; may be a coroutine function.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        doing = f"follow terminal {pid} in sandbox {self._sandbox_id}"
        stream = await ProcessStream.attach(self._connection, self._sandbox_id, pid, doing)
        return AsyncPtyHandle(self._connection, self._sandbox_id, stream, on_data)

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Sends keystrokes to a terminal by its pid, as `PtyHandle.send_input` does.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        await send_stdin(self._connection, self._sandbox_id, pid, _as_bytes(data))

    async def kill(self, pid: int) -> bool:
        """Kills a terminal's process group (SIGKILL) by its pid.

        Returns:
            True if it was killed, False if it has ended or does not exist.
        """
        return await kill_process(self._connection, self._sandbox_id, pid, signals.SIGKILL)


class PtyHandle:
    """A terminal in a sandbox.

    Its output goes to the `on_data` handler given to `create` or `connect`, which runs in a thread
    of the handle's own, one call at a time, in output order; without a handler, iterate the handle
    (`for data in handle`) to read it.
    """

    def __init__(self, handle: AsyncPtyHandle, callbacks: CallbackThread | None = None) -> None:
        self._async = handle
        # Kept with the handle for as long as its handler may run.
        self._callbacks = callbacks

    @property
    def pid(self) -> int:
        """The terminal's process id inside the sandbox."""
        return self._async.pid

    @property
    def exit_code(self) -> int | None:
        """The exit status once the terminal's process ended (128 + N for signal N), else None."""
        return self._async.exit_code

    @property
    def dropped_bytes(self) -> int:
        """For a handle from `connect`: earlier output the sandbox no longer kept, so not replayed."""
        return self._async.dropped_bytes

    def __repr__(self) -> str:
        return repr(self._async).replace(type(self._async).__name__, type(self).__name__, 1)

    def send_input(self, data: str | bytes) -> None:
        """Sends keystrokes: b"\\r" is Enter, b"\\x03" Ctrl-C, b"\\x04" Ctrl-D; str is encoded as UTF-8.

        Raises:
            NotFoundError: The terminal's process no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        PORTAL.run(self._async.send_input(data))

    def resize(self, cols: int, rows: int) -> None:
        """Changes the terminal's size; its programs get SIGWINCH and redraw.

        Args:
            cols: Columns, 1 to 1000.
            rows: Rows, 1 to 1000.

        Raises:
            InvalidArgumentError: A size is out of range.
            ConnectionLostError: The handle no longer follows the terminal; reconnect first.
        """
        PORTAL.run(self._async.resize(cols, rows))

    def kill(self) -> bool:
        """Kills the terminal's process group (SIGKILL).

        Returns:
            True if it was killed, False if it has already ended.
        """
        return PORTAL.run(self._async.kill())

    def wait(self) -> int:
        """Waits for the terminal's process to end, e.g. after `exit` in its shell.

        Returns:
            Its exit status (128 + N when signal N ended it).

        Raises:
            ConnectionLostError: The connection to the terminal was lost (it keeps running; take it up
                again with `pty.connect(pid)`), or the handle was disconnected.
            Exception: What `on_data` raised; the handle then stopped following.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.wait())

    def __iter__(self) -> Iterator[bytes]:
        """Yields the terminal's output (when no `on_data` was given) until its process ends.

        Raises:
            ConnectionLostError: The connection to the terminal was lost.
        """
        return PORTAL.iterate(aiter(self._async))

    def disconnect(self) -> None:
        """Stops following the terminal; it keeps running. Take it up again with `pty.connect(pid)`."""
        PORTAL.run(self._async.disconnect())


class Pty:
    """Starts and reattaches terminals in one sandbox; reached as `sandbox.pty` on a `Sandbox`."""

    def __init__(self, pty: AsyncPty) -> None:
        self._async = pty

    def create(
        self,
        cols: int = 80,
        rows: int = 24,
        on_data: DataHandler | None = None,
        cmd: str | Sequence[str] | None = None,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
    ) -> PtyHandle:
        """Starts a terminal and returns once its process runs.

        Args:
            cols: Columns, 1 to 1000.
            rows: Rows, 1 to 1000.
            on_data: Called with the terminal's output as it arrives, in a thread of the handle's own.
            cmd: What runs in it: a shell command line, or an argv run directly. By default the
                user's login shell (as /etc/passwd names it, else bash, else sh), started with -l.
            envs: Environment variables added to the sandbox's own; TERM defaults to xterm-256color.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.

        Returns:
            A handle on the terminal.

        Raises:
            InvalidArgumentError: A size is out of range, or cmd is empty.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        callbacks = CallbackThread("hutch-pty-callbacks")
        relayed = None if on_data is None else callbacks.relay(on_data)
        handle = PORTAL.run(self._async.create(cols, rows, relayed, cmd, envs, cwd, user))
        return PtyHandle(handle, callbacks)

    def connect(self, pid: int, on_data: DataHandler | None = None) -> PtyHandle:
        """Takes up a terminal again, e.g. after a disconnect or from another program.

        The output the sandbox kept for it comes first, then new output.

        Args:
            pid: The terminal's process id.
            on_data: Called with the terminal's output as it arrives, in a thread of the handle's own.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        callbacks = CallbackThread("hutch-pty-callbacks")
        relayed = None if on_data is None else callbacks.relay(on_data)
        return PtyHandle(PORTAL.run(self._async.connect(pid, relayed)), callbacks)

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Sends keystrokes to a terminal by its pid, as `PtyHandle.send_input` does.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        PORTAL.run(self._async.send_stdin(pid, data))

    def kill(self, pid: int) -> bool:
        """Kills a terminal's process group (SIGKILL) by its pid.

        Returns:
            True if it was killed, False if it has ended or does not exist.
        """
        return PORTAL.run(self._async.kill(pid))
