"""`hutch exec`: run a command in a sandbox as if it ran here.

Output is copied byte for byte, so binary output survives a pipe, which is why this command streams
raw bytes instead of going through `Commands.run`, which decodes text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, BinaryIO

import typer

from hutch._config import ConnectionConfig, resolve
from hutch._connection import Connection
from hutch._convert import process_config
from hutch._portal import PORTAL
from hutch._process import ProcessOutcome, run_process
from hutch._sources import ByteSource
from hutch.cli._shared import EXIT_EXEC_FAILED, EXIT_EXEC_TIMEOUT, connected, error_line, out, parse_pairs
from hutch.exceptions import HutchError
from hutch.v1 import process_pb2

HELP = (
    "Run a command in a sandbox, with its output here and its exit status as hutch's.\n\n"
    "Give several arguments after -- to run a program directly (hutch exec SB -- ls -la /tmp), "
    "or one quoted argument to run it through the shell (hutch exec SB -- 'ls | wc -l'). "
    "When stdin is not a terminal it is passed to the command.\n\n"
    "With --background, hutch prints the command's pid as soon as it started and exits; the command "
    "keeps running (with no time limit unless --timeout is given). Follow it with `hutch attach`, "
    "list it with `hutch ps`, stop it with `hutch kill-process`.\n\n"
    "Exit status: the command's own; 124 if it timed out; 125 if hutch itself failed "
    "(the error line says why); 128+N if signal N killed it."
)


def _stdin_to_pass() -> BinaryIO | None:
    """Stdin, when it can carry data for the command: not a terminal, and not /dev/null."""
    if sys.stdin is None:
        return None
    try:
        descriptor = sys.stdin.fileno()
        if os.isatty(descriptor) or os.path.samestat(os.fstat(descriptor), os.stat(os.devnull)):
            # A terminal would need a pseudo-terminal to be useful, and /dev/null has nothing to
            # send: in both cases the command reads /dev/null in the sandbox instead.
            return None
    except (OSError, ValueError):
        return None
    return sys.stdin.buffer


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        # Flushed per chunk so output shows up as the command produces it.
        stream.flush()

    return write


async def _execute(
    config: ConnectionConfig,
    request: process_pb2.ProcessConfig,
    stdin: ByteSource | None,
    on_stdout: Callable[[bytes], object],
    on_stderr: Callable[[bytes], object],
) -> ProcessOutcome:
    async with Connection(config) as connection:
        return await run_process(
            connection,
            request,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            doing=f"run a command in sandbox {request.sandbox}",
        )


def exec_command(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    command: Annotated[list[str], typer.Argument(metavar="CMD", help="The command and its arguments, after --.")],
    cwd: Annotated[str | None, typer.Option("--cwd", "-w", help="Working directory; home by default.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="User name or uid; root by default.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VALUE", help="Environment variable; repeat for more."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before the command is killed (exit 124); no limit by default.")
    ] = None,
    background: Annotated[
        bool, typer.Option("--background", "-b", help="Print the pid once started and leave it running.")
    ] = False,
) -> None:
    """Run a command in a sandbox, with its output here and its exit status as hutch's."""
    envs = parse_pairs(env, "--env")
    if background:
        _start_in_background(sandbox, command, envs, cwd, user, timeout)
        return
    stdin = _stdin_to_pass()
    try:
        config = resolve()
        request = process_config(
            sandbox,
            command[0] if len(command) == 1 else command,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=stdin is not None,
        )
        outcome = PORTAL.run_relaying(
            lambda relay: _execute(
                config,
                request,
                stdin,
                relay(_writer(sys.stdout.buffer)),
                relay(_writer(sys.stderr.buffer)),
            )
        )
    except HutchError as exc:
        error_line(exc.message)
        raise typer.Exit(EXIT_EXEC_FAILED) from None
    if outcome.timed_out:
        error_line(f"the command was still running after {timeout or 0:g} s, so it was killed")
        raise typer.Exit(EXIT_EXEC_TIMEOUT)
    raise typer.Exit(outcome.exit_code)


def _start_in_background(
    sandbox: str, command: list[str], envs: dict[str, str], cwd: str | None, user: str | None, timeout: float | None
) -> None:
    try:
        with connected(sandbox) as box:
            handle = box.commands.run(
                command[0] if len(command) == 1 else command,
                background=True,
                envs=envs,
                cwd=cwd,
                user=user,
                timeout=timeout,
            )
            handle.disconnect()
    except HutchError as exc:
        error_line(exc.message)
        raise typer.Exit(EXIT_EXEC_FAILED) from None
    out.print(handle.pid)
