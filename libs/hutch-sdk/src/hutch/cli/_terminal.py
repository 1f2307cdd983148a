"""The local terminal for `hutch shell`: raw mode, its size, and writing output straight through."""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Iterator
from typing import Final

DEFAULT_SIZE: Final = (80, 24)
# What the gateway accepts for either dimension.
_MAX_CELLS: Final = 1000


def clamp_size(cols: int, rows: int) -> tuple[int, int]:
    """A terminal size the sandbox accepts: a 0 (what some terminals report) becomes the default."""
    cols = cols if cols > 0 else DEFAULT_SIZE[0]
    rows = rows if rows > 0 else DEFAULT_SIZE[1]
    return min(cols, _MAX_CELLS), min(rows, _MAX_CELLS)


def window_size(*descriptors: int) -> tuple[int, int]:
    """(cols, rows) of the first descriptor that is a terminal, else 80x24."""
    for descriptor in descriptors:
        try:
            size = os.get_terminal_size(descriptor)
        except OSError:
            continue
        return clamp_size(size.columns, size.lines)
    return DEFAULT_SIZE


@contextlib.contextmanager
def raw_mode(descriptor: int) -> Iterator[bool]:
    """Puts a terminal in raw mode for the block and restores it after, whatever happens.

    Raw, every key reaches the remote terminal as typed: Ctrl-C is the byte 0x03 for the remote
    shell to act on (as with ssh), not a SIGINT for hutch, and nothing is echoed locally.

    Yields:
        Whether the descriptor is a terminal (when not, nothing changes).
    """
    try:
        saved = termios.tcgetattr(descriptor)
    except (termios.error, OSError):
        yield False
        return
    tty.setraw(descriptor, termios.TCSANOW)
    try:
        yield True
    finally:
        # TCSADRAIN: output already written is shown in raw mode's layout before the modes change.
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


def write_all(descriptor: int, data: bytes) -> None:
    """Writes every byte, resuming after partial writes (a terminal under load takes part at a time)."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]
