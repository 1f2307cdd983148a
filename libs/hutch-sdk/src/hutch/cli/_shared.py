"""What every command group of the CLI uses: consoles, exit codes, argument parsing and output."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from hutch import AuthenticationError, HutchError, Sandbox

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_EXEC_TIMEOUT: Final = 124
EXIT_EXEC_FAILED: Final = 125

EXIT_CODES_HELP: Final = (
    "Exit status: 0 success; 1 the request failed (the error line says why); 2 bad command line; "
    "3 no API key, or the gateway rejected it; 130 interrupted. "
    "`hutch exec`, `hutch shell` and `hutch attach` exit with the remote command's own status instead: "
    "124 if it timed out, 125 if hutch itself failed, 128+N if signal N killed it."
)

# Transfers smaller than this finish too fast for a progress bar to help.
PROGRESS_THRESHOLD: Final = 1024 * 1024

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    # Piped output is read by programs and pagers: a table must not wrap or cut an id at 80 columns.
    out.width = 4096


def error_line(message: str) -> None:
    """Prints `error: <message>` in red on stderr."""
    err.print(Text(f"error: {message}", style="red"))


def exit_code_for(error: HutchError) -> int:
    """The exit status for a failed request: 3 for authentication problems, else 1."""
    return EXIT_AUTH if isinstance(error, AuthenticationError) else EXIT_ERROR


def parse_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """Parses repeated KEY=VALUE options into a dict.

    Raises:
        typer.BadParameter: A value has no '=' or an empty key (exit status 2).
    """
    pairs: dict[str, str] = {}
    for value in values or ():
        key, separator, rest = value.partition("=")
        if not separator or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = rest
    return pairs


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    """Writes dataclasses, lists and dicts as indented JSON on stdout, datetimes in ISO 8601."""
    sys.stdout.write(json.dumps(value, indent=2, default=_jsonable) + "\n")


def when(moment: datetime | None) -> str:
    """Formats a timestamp in local time to the second, or "-" when absent."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


@contextlib.contextmanager
def connected(sandbox: str) -> Iterator[Sandbox]:
    """Connects to a sandbox for the duration of a command, closing the channel (not the sandbox) after."""
    handle = Sandbox.connect(sandbox)
    try:
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def transfer_progress(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """Shows a progress bar with bytes and speed on stderr for a large transfer.

    Yields:
        A function to call with each number of bytes moved; it does nothing when no bar is shown
        (small or unknown sizes, or stderr is not a terminal). It may be called from any thread.
    """
    if total is None or total < PROGRESS_THRESHOLD or not err.is_terminal:
        yield lambda _: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda moved: progress.advance(task, moved)
