"""Waiting for a sandbox's record to change, across gateway replicas.

The projection commits every state change with a NOTIFY; each gateway keeps one LISTEN connection
and wakes the callers waiting on that sandbox, who then re-read the row. Waiters also re-read once a
second, so a lost notification (connection drop) only delays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import asyncpg

from hutch.core import errors
from hutch_gateway.domain import SandboxRecord
from hutch_gateway.store import CHANNEL

log = logging.getLogger(__name__)


class ChangeFeed:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._listeners: list[Callable[[str | None], None]] = []

    def on_change(self, listener: Callable[[str | None], None]) -> None:
        """Calls `listener(sandbox_id)` after every committed change (None: anything may have changed)."""
        self._listeners.append(listener)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self._dsn)
            except Exception as exc:
                log.warning("change feed cannot connect: %r", exc)
                await asyncio.sleep(1)
                continue
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                self._wake_all()  # anything that changed while we were not listening
                while not stop.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _on_notify(self, conn: object, pid: int, channel: str, sandbox_id: str) -> None:
        for listener in self._listeners:
            listener(sandbox_id)
        for event in self._waiters.get(sandbox_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for listener in self._listeners:
            listener(None)
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def wait_until(
        self,
        sandbox_id: str,
        read: Callable[[], Awaitable[SandboxRecord]],
        done: Callable[[SandboxRecord], bool],
        timeout_s: float,
        what: str,
    ) -> SandboxRecord:
        """Re-reads the record whenever it changes until `done(record)`; DeadlineExceeded after `timeout_s`."""
        event = asyncio.Event()
        self._waiters[sandbox_id].add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                event.clear()
                record = await read()
                if done(record):
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise errors.DeadlineExceeded(
                        f"sandbox {sandbox_id} is still {record.state} after {timeout_s:g} s waiting for {what}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 1.0))
        finally:
            waiting = self._waiters.get(sandbox_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[sandbox_id]
