"""Process lifecycle shared by the services: logging, signals, supervised loops.

A service is a set of long-running loops plus a gRPC server. `supervise()` runs the loops until the
shutdown event is set (SIGTERM/SIGINT) or one of them fails; a failing loop stops the others and its
exception ends the process with a non-zero status (fail fast: a half-working service is worse than
a restarted one).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any


def configure_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s",
    )
    for noisy in ("nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def shutdown_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    return shutdown


async def supervise(shutdown: asyncio.Event, *loops: Coroutine[Any, Any, None], grace_s: float = 5.0) -> None:
    """Runs `loops` until `shutdown` is set or one of them fails.

    The loops watch `shutdown` themselves and get `grace_s` to finish their current work; whatever
    still runs after that is cancelled.
    """
    tasks = [asyncio.create_task(loop) for loop in loops]
    stopper = asyncio.create_task(shutdown.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        shutdown.set()
        stopper.cancel()
        await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
