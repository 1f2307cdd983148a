"""Reports sandboxes with an idle policy once they have gone unused long enough (sandbox.idle).

Unused means: no connection to its supervisor (see activity.py) and less than IDLE_CPU_SHARE of a
vCPU in every check interval since. The gateway answers a report by putting the sandbox to sleep,
asking the node to take the pause snapshot only if the sandbox is still idle then (`may_sleep`),
so a request that arrives between the report and the pause keeps it awake. A sandbox that stays
idle is reported again every `auto_sleep_after` seconds, in case a report was lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from hutch.core import errors
from hutch_node_agent.activity import Activity
from hutch_node_agent.cgroup_stats import CgroupStats
from hutch_node_agent.domain import LocalSandbox

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
# CPU above this share of one vCPU during a check interval counts as use: a sandbox compiling or
# serving keeps running; an idle shell, an editor or a dev server waiting for requests does not.
IDLE_CPU_SHARE = 0.05
# A sleep goes ahead when the sandbox has been idle at least this share of its policy: the report
# and the gateway's call take a moment, and a second of use since means it is in use again.
STILL_IDLE_SHARE = 0.9

Report = Callable[[LocalSandbox, datetime], Awaitable[None]]


def may_sleep(activity: Activity, sandbox: LocalSandbox) -> bool:
    """Whether a sleep may go ahead now: it has a policy and has stayed unused (STILL_IDLE_SHARE)."""
    policy = sandbox.request.auto_sleep_after_s
    return bool(policy) and activity.idle_for(sandbox.id) >= policy * STILL_IDLE_SHARE


class IdleWatcher:
    def __init__(self, activity: Activity, stats: CgroupStats, report: Report) -> None:
        self._activity = activity
        self._stats = stats
        self._report = report
        self._cpu_ns: dict[str, int] = {}
        self._reported: dict[str, float] = {}

    def check(self, sandboxes: list[LocalSandbox], interval_s: float) -> list[tuple[LocalSandbox, float]]:
        """Samples every running sandbox's CPU; returns those with an idle policy to report, with how
        long each has been idle."""
        due: list[tuple[LocalSandbox, float]] = []
        live = set()
        for sandbox in sandboxes:
            if sandbox.status != "running":
                continue
            # Every running sandbox's CPU counts as use, so the idle time the fleet view shows for
            # one without a policy means what it would for one with.
            live.add(sandbox.id)
            counters = self._stats.read(sandbox.id)
            if counters is not None:
                before = self._cpu_ns.get(sandbox.id)
                self._cpu_ns[sandbox.id] = counters.cpu_ns
                if before is not None and counters.cpu_ns - before > IDLE_CPU_SHARE * interval_s * 1e9:
                    self._activity.touch(sandbox.id)
            policy = sandbox.request.auto_sleep_after_s
            if not policy:
                continue
            idle = self._activity.idle_for(sandbox.id)
            if idle < policy:
                self._reported.pop(sandbox.id, None)
                continue
            last = self._reported.get(sandbox.id)
            if last is None or idle - last >= policy:
                self._reported[sandbox.id] = idle
                due.append((sandbox, idle))
        for gone in set(self._cpu_ns) - live:
            self._cpu_ns.pop(gone, None)
            self._reported.pop(gone, None)
        self._activity.forget_all_but({s.id for s in sandboxes})
        return due

    async def run(self, sandboxes: Callable[[], list[LocalSandbox]], stop: asyncio.Event) -> None:
        while not stop.is_set():
            for sandbox, idle in self.check(sandboxes(), CHECK_INTERVAL_S):
                since = datetime.now(UTC) - timedelta(seconds=idle)
                try:
                    await self._report(sandbox, since)
                    log.info("sandbox %s idle for %.0f s: reported", sandbox.id, idle)
                except errors.Unavailable as exc:
                    self._reported.pop(sandbox.id, None)  # try again next round
                    log.warning("could not report sandbox %s idle: %s", sandbox.id, exc.message)
            try:
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL_S)
            except TimeoutError:
                pass
