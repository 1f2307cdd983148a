"""`hutch ps`, `hutch attach` and `hutch kill-process`: background commands and terminals.

`hutch exec --background` starts a command that outlives hutch; these list such commands, follow
their output again and signal them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Annotated, BinaryIO

import typer
from rich.table import Table
from rich.text import Text

from hutch import HutchError, ProcessInfo
from hutch._config import ConnectionConfig, resolve
from hutch._connection import Connection
from hutch._convert import signal_number
from hutch._follow import Follower, Stream
from hutch._portal import PORTAL, Relay
from hutch._process import ProcessOutcome
from hutch._remote_process import ProcessStream
from hutch.cli._shared import EXIT_ERROR, EXIT_EXEC_FAILED, connected, err, error_line, out, print_json, when

SandboxArgument = Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")]
PidArgument = Annotated[int, typer.Argument(metavar="PID", help="The process id, as `hutch ps` lists it.")]

EXIT_DETACHED = 130

ATTACH_HELP = (
    "Follow a background command's output: what the sandbox kept of it first, then live.\n\n"
    "Ctrl-C detaches (exit status 130) and leaves the command running. When the command ends, hutch "
    "exits with its status (125 if hutch itself failed)."
)
KILL_HELP = (
    "Send a signal to a background command or terminal (and its process group): SIGKILL unless --signal says otherwise."
)


def describe_state(info: ProcessInfo) -> str:
    """How a process stands, in words: "running", "exited 3" or "killed by SIGTERM"."""
    if info.running:
        return "running"
    if info.signal:
        try:
            name = signal.Signals(info.signal).name
        except ValueError:
            name = f"signal {info.signal}"
        return f"killed by {name}"
    return f"exited {info.exit_code}"


def describe_command(info: ProcessInfo) -> str:
    """The command line a process runs: its shell line, else its argv joined."""
    return info.cmd or " ".join(info.args)


def parse_signal(value: str) -> int:
    """A signal from the command line: a number, or a name with or without SIG ("TERM", "SIGHUP").

    Raises:
        typer.BadParameter: It is neither (exit status 2).
    """
    try:
        return signal_number(value)
    except HutchError as exc:
        raise typer.BadParameter(exc.message, param_hint="--signal") from None


def ps(
    sandbox: SandboxArgument,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List a sandbox's background commands and terminals, running and recently ended."""
    with connected(sandbox) as box:
        processes = box.commands.list()
    if json_output:
        print_json(processes)
        return
    table = Table("PID", "STATE", "TTY", "USER", "STARTED", "COMMAND")
    for info in processes:
        cells = (
            str(info.pid),
            describe_state(info),
            "pty" if info.pty else "-",
            info.user or "-",
            when(info.started_at),
            describe_command(info),
        )
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


async def _follow(config: ConnectionConfig, sandbox: str, pid: int, relay: Relay) -> ProcessOutcome:
    sinks = {"stdout": relay(_writer(sys.stdout.buffer)), "stderr": relay(_writer(sys.stderr.buffer))}

    async def sink(stream: Stream, data: bytes) -> None:
        await sinks[stream](data)

    async with Connection(config) as connection:
        attached = await ProcessStream.attach(connection, sandbox, pid, f"follow process {pid} in sandbox {sandbox}")
        if attached.dropped_bytes:
            await relay(lambda note: err.print(note, style="dim"))(
                f"({attached.dropped_bytes} bytes of earlier output were no longer kept)"
            )
        return await Follower(connection, attached, sink, f"`hutch attach {sandbox} {pid}`").wait()


def attach(sandbox: SandboxArgument, pid: PidArgument) -> None:
    """Follow a background command's output; Ctrl-C detaches and leaves it running."""
    try:
        config = resolve()
        outcome = PORTAL.run_relaying(lambda relay: _follow(config, sandbox, pid, relay))
    except KeyboardInterrupt:
        err.print(f"detached; process {pid} keeps running", style="dim")
        raise typer.Exit(EXIT_DETACHED) from None
    except HutchError as exc:
        error_line(exc.message)
        raise typer.Exit(EXIT_EXEC_FAILED) from None
    raise typer.Exit(outcome.exit_code)


def kill_process(
    sandbox: SandboxArgument,
    pid: PidArgument,
    signal_name: Annotated[
        str, typer.Option("--signal", "-s", metavar="SIGNAL", help="A number or a name: TERM, INT, HUP, KILL...")
    ] = "KILL",
) -> None:
    """Send a signal (SIGKILL by default) to a background command or terminal."""
    number = parse_signal(signal_name)
    with connected(sandbox) as box:
        delivered = box.commands.kill(pid, number)
    if not delivered:
        error_line(f"sandbox {sandbox} has no process {pid}")
        raise typer.Exit(EXIT_ERROR)
