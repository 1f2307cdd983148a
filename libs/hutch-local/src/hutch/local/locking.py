"""One stack changes at a time: up, down and restart of a home directory hold its lock file."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

from hutch.local.paths import StackPaths


@contextlib.contextmanager
def locked(paths: StackPaths) -> Iterator[None]:
    """Serialises up/down/restart on one home directory across processes."""
    paths.local.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
