"""A spinner with the elapsed time on stderr while a long request runs (snapshots, pauses, forks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from hutch.cli._shared import err


@contextlib.contextmanager
def waiting(description: str) -> Iterator[None]:
    """Shows `description`, a spinner and the time so far until the block ends.

    Only on a terminal: piped or redirected stderr gets nothing, so scripts see only their output.
    The line disappears when the block ends.
    """
    if not err.is_terminal:
        yield
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        progress.add_task(description, total=None)
        yield


def size(count: int) -> str:
    """A byte count for people: 1.5 MiB, 320 B."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
