"""Running commands in a sandbox: `sandbox.commands`."""

from __future__ import annotations

import builtins
import enum
import signal as signals
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, overload

from hutch._callbacks import CallbackThread
from hutch._connection import Connection
from hutch._convert import describe_command, process_config, signal_number
from hutch._portal import PORTAL, Relay
from hutch._process import run_process
from hutch._remote_process import ProcessStream, kill_process, list_processes, send_stdin
from hutch._sources import ByteSource
from hutch._text import OutputHandler, TextCollector
from hutch.command_handle import AsyncCommandHandle, CommandHandle
from hutch.exceptions import CommandExitError, InvalidArgumentError, TimeoutError
from hutch.models import CommandResult, ProcessInfo

__all__ = ["AsyncCommands", "Commands", "OutputHandler"]

# Seconds a command may run by default; long enough for most tool calls, short enough that a command
# waiting on input nobody sends does not hang an agent. Background commands have no limit by default:
# they are servers and watchers, meant to run until killed.
DEFAULT_TIMEOUT = 60.0


class _Default(enum.Enum):
    # Tells "no timeout given" from an explicit None, which the two kinds of command default apart.
    TIMEOUT = enum.auto()


_DEFAULT_TIMEOUT: Final = _Default.TIMEOUT


def _stdin_parts(stdin: ByteSource | bool | None, background: bool) -> tuple[bool, ByteSource | None]:
    """(whether the process gets a stdin pipe, data to send into it) for `run`'s `stdin` argument."""
    if stdin is True:
        if not background:
            raise InvalidArgumentError(
                "stdin=True keeps stdin open for send_stdin, which needs background=True; "
                "to pass data to a command, give it as stdin"
            )
        return True, None
    if stdin is None or stdin is False:
        return False, None
    return True, stdin


def _timeout(timeout: float | None | _Default, background: bool) -> float | None:
    if isinstance(timeout, _Default):
        return None if background else DEFAULT_TIMEOUT
    return timeout


class AsyncCommands:
    """Runs commands in one sandbox; reached as `sandbox.commands` on an `AsyncSandbox`."""

    def __init__(self, connection: Connection, sandbox_id: str) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | None = None,
    ) -> CommandResult: ...
    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> AsyncCommandHandle: ...
    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = ...,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> CommandResult | AsyncCommandHandle: ...
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None | _Default = _DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Runs a command; waits for it to finish, or with `background=True` returns once it started.

        Args:
            cmd: A shell command line, run by bash (or sh), or a list of arguments run directly
                without a shell.
            background: Return a handle as soon as the command has started. The command keeps
                running when the handle, the program or the connection goes away; follow it again
                with `connect(pid)`.
            envs: Environment variables added to the sandbox's own.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.
            timeout: Seconds before the command is killed; None or 0 for no limit. Defaults to
                60 s, and to no limit for a background command.
            on_stdout: Called with standard output text as it arrives; may be a coroutine function.
            on_stderr: Called with standard error text as it arrives; may be a coroutine function.
            stdin: Data written to the command's stdin, which is then closed: str, bytes, or a file
                object read to its end. With `background=True` it may also be True, which keeps
                stdin open for `send_stdin`. When None the command reads /dev/null.

        Returns:
            The command's output and exit status (0); with `background=True`, a handle on the
            running command.

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than `timeout` and was killed.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        has_stdin, data = _stdin_parts(stdin, background)
        limit = _timeout(timeout, background)
        config = process_config(
            self._sandbox_id,
            cmd,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=limit,
            stdin=has_stdin,
            background=background,
        )
        command = describe_command(cmd)
        doing = f"run {command!r} in sandbox {self._sandbox_id}"
        if background:
            stream = await ProcessStream.start(self._connection, config, doing)
            stream.doing = f"follow process {stream.pid} ({command!r}) in sandbox {self._sandbox_id}"
            return AsyncCommandHandle(
                self._connection,
                self._sandbox_id,
                stream,
                command=command,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                stdin=data,
            )
        stdout, stderr = TextCollector(on_stdout), TextCollector(on_stderr)
        outcome = await run_process(
            self._connection,
            config,
            stdin=data,
            on_stdout=stdout.feed,
            on_stderr=stderr.feed,
            doing=doing,
        )
        await stdout.finish()
        await stderr.finish()
        result = CommandResult(
            stdout=stdout.text,
            stderr=stderr.text,
            exit_code=outcome.exit_code,
            error=f"killed by signal {outcome.signal}" if outcome.signal else None,
        )
        if outcome.timed_out:
            raise TimeoutError(f"{doing}: still running after {limit or 0:g} s, so it was killed")
        if result.exit_code != 0:
            raise CommandExitError(result, command)
        return result

    async def connect(
        self,
        pid: int,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> AsyncCommandHandle:
        """Follows a background command (or a terminal's output) by its pid.

        The output the sandbox kept for it (the last 256 KiB by default) comes first, then new
        output as it is produced.

        Args:
            pid: The process id `run(..., background=True)` or `list()` gave.
            on_stdout: Called with standard output text as it arrives; may be a coroutine function.
            on_stderr: Called with standard error text as it arrives; may be a coroutine function.

        Returns:
            A handle on the command.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        doing = f"follow process {pid} in sandbox {self._sandbox_id}"
        stream = await ProcessStream.attach(self._connection, self._sandbox_id, pid, doing)
        return AsyncCommandHandle(
            self._connection,
            self._sandbox_id,
            stream,
            command=f"process {pid}",
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def list(self) -> builtins.list[ProcessInfo]:
        """Lists the sandbox's background commands and terminals, running and recently finished.

        Raises:
            HutchError: The call failed; the subclass says why.
        """
        return await list_processes(self._connection, self._sandbox_id)

    async def kill(self, pid: int, signal: int | str = signals.SIGKILL) -> bool:
        """Sends a signal to a process's group (SIGKILL by default).

        Args:
            pid: The process id.
            signal: A signal number, a `signal.Signals` member or a name such as "TERM".

        Returns:
            True if the signal was delivered, False if the process has ended or does not exist.

        Raises:
            InvalidArgumentError: The signal is unknown.
            HutchError: Another failure; the subclass says which.
        """
        return await kill_process(self._connection, self._sandbox_id, pid, signal_number(signal))

    async def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        """Writes to the stdin of a background command started with `stdin=True`.

        Args:
            pid: The process id.
            data: What to write; str is encoded as UTF-8.
            eof: Close the command's stdin after `data`.

        Raises:
            NotFoundError: The sandbox has no such process.
            SandboxError: The command has no stdin, or it was closed.
            HutchError: Another failure; the subclass says which.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        await send_stdin(self._connection, self._sandbox_id, pid, payload, eof=eof)


def _relayed(relay: Relay, handler: OutputHandler | None) -> Callable[[str], object] | None:
    return None if handler is None else relay(handler)


class Commands:
    """Runs commands in one sandbox; reached as `sandbox.commands` on a `Sandbox`."""

    def __init__(self, commands: AsyncCommands) -> None:
        self._async = commands

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | None = None,
    ) -> CommandResult: ...
    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> CommandHandle: ...
    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = ...,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> CommandResult | CommandHandle: ...
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None | _Default = _DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | bool | None = None,
    ) -> CommandResult | CommandHandle:
        """Runs a command; waits for it to finish, or with `background=True` returns once it started.

        A foreground command's handlers run in the calling thread, in output order, while it runs;
        an exception a handler raises stops waiting for the command and propagates. A background
        command's handlers run in a thread of its handle's own (see `CommandHandle`).

        Args:
            cmd: A shell command line, run by bash (or sh), or a list of arguments run directly
                without a shell.
            background: Return a handle as soon as the command has started. The command keeps
                running when the handle, the program or the connection goes away; follow it again
                with `connect(pid)`.
            envs: Environment variables added to the sandbox's own.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.
            timeout: Seconds before the command is killed; None or 0 for no limit. Defaults to
                60 s, and to no limit for a background command.
            on_stdout: Called with standard output text as it arrives.
            on_stderr: Called with standard error text as it arrives.
            stdin: Data written to the command's stdin, which is then closed: str, bytes, or a file
                object read to its end. With `background=True` it may also be True, which keeps
                stdin open for `send_stdin`. When None the command reads /dev/null.

        Returns:
            The command's output and exit status (0); with `background=True`, a handle on the
            running command.

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than `timeout` and was killed.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        if background:
            callbacks = CallbackThread("hutch-command-callbacks")
            handle = PORTAL.run(
                self._async.run(
                    cmd,
                    background=True,
                    envs=envs,
                    cwd=cwd,
                    user=user,
                    timeout=_timeout(timeout, background=True),
                    on_stdout=_relayed(callbacks.relay, on_stdout),
                    on_stderr=_relayed(callbacks.relay, on_stderr),
                    stdin=stdin,
                )
            )
            return CommandHandle(handle, callbacks)
        _, data = _stdin_parts(stdin, background=False)
        return PORTAL.run_relaying(
            lambda relay: self._async.run(
                cmd,
                envs=envs,
                cwd=cwd,
                user=user,
                timeout=_timeout(timeout, background=False),
                on_stdout=_relayed(relay, on_stdout),
                on_stderr=_relayed(relay, on_stderr),
                stdin=data,
            )
        )

    def connect(
        self,
        pid: int,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandHandle:
        """Follows a background command (or a terminal's output) by its pid.

        The output the sandbox kept for it (the last 256 KiB by default) comes first, then new
        output as it is produced. The handlers run in a thread of the handle's own.

        Args:
            pid: The process id `run(..., background=True)` or `list()` gave.
            on_stdout: Called with standard output text as it arrives.
            on_stderr: Called with standard error text as it arrives.

        Returns:
            A handle on the command.

        Raises:
            NotFoundError: The sandbox has no such process.
            HutchError: Another failure; the subclass says which.
        """
        callbacks = CallbackThread("hutch-command-callbacks")
        handle = PORTAL.run(
            self._async.connect(
                pid,
                on_stdout=_relayed(callbacks.relay, on_stdout),
                on_stderr=_relayed(callbacks.relay, on_stderr),
            )
        )
        return CommandHandle(handle, callbacks)

    def list(self) -> builtins.list[ProcessInfo]:
        """Lists the sandbox's background commands and terminals, running and recently finished.

        Raises:
            HutchError: The call failed; the subclass says why.
        """
        return PORTAL.run(self._async.list())

    def kill(self, pid: int, signal: int | str = signals.SIGKILL) -> bool:
        """Sends a signal to a process's group (SIGKILL by default).

        Args:
            pid: The process id.
            signal: A signal number, a `signal.Signals` member or a name such as "TERM".

        Returns:
            True if the signal was delivered, False if the process has ended or does not exist.

        Raises:
            InvalidArgumentError: The signal is unknown.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.kill(pid, signal))

    def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        """Writes to the stdin of a background command started with `stdin=True`.

        Args:
            pid: The process id.
            data: What to write; str is encoded as UTF-8.
            eof: Close the command's stdin after `data`.

        Raises:
            NotFoundError: The sandbox has no such process.
            SandboxError: The command has no stdin, or it was closed.
            HutchError: Another failure; the subclass says which.
        """
        PORTAL.run(self._async.send_stdin(pid, data, eof))
