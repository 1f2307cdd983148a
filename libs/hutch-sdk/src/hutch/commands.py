"""Running commands in a sandbox: `sandbox.commands`."""

from __future__ import annotations

import codecs
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

from hutch._connection import Connection
from hutch._convert import describe_command, process_config
from hutch._portal import PORTAL, Relay
from hutch._process import run_process
from hutch._sources import ByteSource
from hutch.exceptions import CommandExitError, TimeoutError
from hutch.models import CommandResult

__all__ = ["AsyncCommands", "Commands", "OutputHandler"]

OutputHandler: TypeAlias = Callable[[str], object]
"""Receives output as it arrives, decoded as UTF-8. With AsyncSandbox it may be a coroutine function."""

# Seconds a command may run by default; long enough for most tool calls, short enough that a command
# waiting on input nobody sends does not hang an agent.
DEFAULT_TIMEOUT = 60.0


class _TextCollector:
    """Decodes one output stream incrementally, keeping the text and passing it to a handler."""

    def __init__(self, handler: OutputHandler | None) -> None:
        self._handler = handler
        # Incremental, so a multi-byte character split across chunks decodes intact.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []

    async def feed(self, data: bytes) -> None:
        await self._emit(self._decoder.decode(data))

    async def finish(self) -> str:
        await self._emit(self._decoder.decode(b"", final=True))
        return "".join(self._parts)

    async def _emit(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        if self._handler is not None:
            result = self._handler(text)
            if inspect.isawaitable(result):
                await result


class AsyncCommands:
    """Runs commands in one sandbox; reached as `sandbox.commands` on an `AsyncSandbox`."""

    def __init__(self, connection: Connection, sandbox_id: str) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | None = None,
    ) -> CommandResult:
        """Runs a command and waits for it to finish.

        Args:
            cmd: A shell command line, run by bash (or sh), or a list of arguments run directly
                without a shell.
            envs: Environment variables added to the sandbox's own.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.
            timeout: Seconds before the command is killed; None or 0 for no limit.
            on_stdout: Called with standard output text as it arrives; may be a coroutine function.
            on_stderr: Called with standard error text as it arrives; may be a coroutine function.
            stdin: Data written to the command's stdin, which is then closed: str, bytes, or a file
                object read to its end. When None the command reads /dev/null.

        Returns:
            The command's output and exit status (0).

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than `timeout` and was killed.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        config = process_config(
            self._sandbox_id,
            cmd,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=stdin is not None,
        )
        command = describe_command(cmd)
        doing = f"run {command!r} in sandbox {self._sandbox_id}"
        stdout, stderr = _TextCollector(on_stdout), _TextCollector(on_stderr)
        outcome = await run_process(
            self._connection,
            config,
            stdin=stdin,
            on_stdout=stdout.feed,
            on_stderr=stderr.feed,
            doing=doing,
        )
        result = CommandResult(
            stdout=await stdout.finish(),
            stderr=await stderr.finish(),
            exit_code=outcome.exit_code,
            error=f"killed by signal {outcome.signal}" if outcome.signal else None,
        )
        if outcome.timed_out:
            raise TimeoutError(f"{doing}: still running after {timeout or 0:g} s, so it was killed")
        if result.exit_code != 0:
            raise CommandExitError(result, command)
        return result


def _relayed(relay: Relay, handler: OutputHandler | None) -> Callable[[str], object] | None:
    return None if handler is None else relay(handler)


class Commands:
    """Runs commands in one sandbox; reached as `sandbox.commands` on a `Sandbox`."""

    def __init__(self, commands: AsyncCommands) -> None:
        self._async = commands

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: ByteSource | None = None,
    ) -> CommandResult:
        """Runs a command and waits for it to finish.

        The handlers run in the calling thread, in output order, while the command runs; an
        exception a handler raises stops waiting for the command and propagates.

        Args:
            cmd: A shell command line, run by bash (or sh), or a list of arguments run directly
                without a shell.
            envs: Environment variables added to the sandbox's own.
            cwd: Working directory; the user's home directory when None.
            user: User name or numeric uid to run as; root when None.
            timeout: Seconds before the command is killed; None or 0 for no limit.
            on_stdout: Called with standard output text as it arrives.
            on_stderr: Called with standard error text as it arrives.
            stdin: Data written to the command's stdin, which is then closed: str, bytes, or a file
                object read to its end. When None the command reads /dev/null.

        Returns:
            The command's output and exit status (0).

        Raises:
            CommandExitError: The command exited with a non-zero status; its output is on the error.
            TimeoutError: The command ran longer than `timeout` and was killed.
            NotFoundError: The sandbox does not exist.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run_relaying(
            lambda relay: self._async.run(
                cmd,
                envs=envs,
                cwd=cwd,
                user=user,
                timeout=timeout,
                on_stdout=_relayed(relay, on_stdout),
                on_stderr=_relayed(relay, on_stderr),
                stdin=stdin,
            )
        )
