"""When each sandbox was last used, and whether something holds it open right now.

Every data-plane call reaches a sandbox through a connection to its supervisor (commands, files,
terminals, process streams, file watches, preview tunnels), so counting those connections is how
the node sees use: a sandbox is idle from the moment its last connection closed, and busy while
any is open. CPU use counts as activity too (see IdleWatcher), so a build running on its own keeps
its sandbox awake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Use:
    open: int = 0
    last: float = 0.0


class Activity:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._uses: dict[str, _Use] = {}

    def watcher(self, sandbox_id: str) -> _Watcher:
        return _Watcher(self, sandbox_id)

    def touch(self, sandbox_id: str) -> None:
        self._use(sandbox_id).last = self._clock()

    def idle_for(self, sandbox_id: str) -> float:
        """Seconds since the sandbox was last used; 0 while a connection to it is open."""
        use = self._use(sandbox_id)
        if use.open > 0:
            return 0.0
        return self._clock() - use.last

    def forget_all_but(self, sandbox_ids: set[str]) -> None:
        """Drops what is known of sandboxes that are gone."""
        for gone in set(self._uses) - sandbox_ids:
            del self._uses[gone]

    def _use(self, sandbox_id: str) -> _Use:
        use = self._uses.get(sandbox_id)
        if use is None:  # first seen (started, or found again after a restart): counts as used now
            use = self._uses[sandbox_id] = _Use(last=self._clock())
        return use

    def _opened(self, sandbox_id: str) -> None:
        use = self._use(sandbox_id)
        use.open += 1
        use.last = self._clock()

    def _closed(self, sandbox_id: str) -> None:
        use = self._use(sandbox_id)
        use.open = max(0, use.open - 1)
        use.last = self._clock()


class _Watcher:
    """The supervisor client's view of Activity for one sandbox (a ConnectionWatcher)."""

    def __init__(self, activity: Activity, sandbox_id: str) -> None:
        self._activity = activity
        self._sandbox_id = sandbox_id

    def opened(self) -> None:
        self._activity._opened(self._sandbox_id)

    def closed(self) -> None:
        self._activity._closed(self._sandbox_id)
