"""`hutch.sandboxes`: the region's live sandboxes by state, as a metric.

One `COUNT ... GROUP BY state` every `refresh_s`, cached for the exporter (whose callbacks run in its
own thread and must not touch the database). Ended sandboxes (`killed`, `failed`) are history, not
fleet, and are left out; a state that empties reports 0 rather than vanishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from opentelemetry.metrics import CallbackOptions, Observation

from hutch.core import telemetry

log = logging.getLogger(__name__)

_QUERY = "SELECT state, count(*) FROM sandboxes WHERE state NOT IN ('killed', 'failed') GROUP BY state"


class SandboxStates:
    """Keeps the counts fresh while `run` runs; registers the gauge once constructed."""

    def __init__(self, pool: asyncpg.Pool, region: str, refresh_s: float) -> None:
        self._pool = pool
        self._region = region
        self._refresh_s = refresh_s
        self.counts: dict[str, int] = {}
        global _current
        _current = self

    async def refresh(self) -> None:
        rows = await self._pool.fetch(_QUERY)
        found = {str(state): int(count) for state, count in rows}
        self.counts = {**dict.fromkeys(self.counts, 0), **found}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("counting sandboxes by state failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._refresh_s)

    def observations(self) -> list[Observation]:
        return [
            Observation(count, {"hutch.state": state, "hutch.region": self._region})
            for state, count in self.counts.items()
        ]


# The gateway of this process (the latest one, in tests that start several).
_current: SandboxStates | None = None


def _observe(options: CallbackOptions) -> list[Observation]:
    return _current.observations() if _current is not None else []


telemetry.meter("hutch.gateway").create_observable_gauge(
    "hutch.sandboxes", callbacks=[_observe], unit="{sandbox}", description="Live sandboxes of the region by state"
)
