"""Automatic memory: raises a sandbox's memory limit before its processes would be OOM-killed.

A sandbox created with a memory ceiling starts with its memory_mb and grows up to the ceiling.
On cgroup v1 the OOM killer of its cgroup is switched off while it may still grow, so a process
that reaches the limit waits for memory instead of dying; every POLL_S the node looks at each such
sandbox and, when what its processes hold (page cache the kernel can drop left out) is above
GROW_AT of its limit or its tasks are waiting, raises the limit (by half, or to what it holds over
GROW_AT, at least GROW_MIN_MB, at most to the ceiling) through the same path as a resize
(the node's free memory is checked, the record, config and metering follow, the scheduler and the
gateway learn the size from `sandbox.resized`). When it cannot grow (ceiling reached, node full)
the OOM killer is switched back on and `sandbox.memory_capped` tells the owner. A gVisor sandbox
on a full node is first offered a move: `sandbox.needs_room` asks the gateway to pause it and resume
it at the larger size on a node with room (its memory and processes go with it); meanwhile it keeps
trying to grow here, and may use up to the size it asked for (lent, not reserved: a task waiting
at the limit could not be stopped for the move's checkpoint); needing more, it asks again. If no
move came within MOVE_WAIT_S the loan goes back, or, when the sandbox holds it, it is capped where
it is. On cgroup v2 there is no such switch: growth relies on the polling alone, so a process that
allocates faster than one limit step per POLL_S can still meet the OOM killer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from hutch.core import errors
from hutch_node_agent.cgroup_limits import CgroupLimits, MemoryPressure
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.runtime import GVISOR
from hutch_node_agent.sandboxes import SandboxManager

log = logging.getLogger(__name__)

POLL_S = 0.1
# How long a sandbox that asked to be moved waits for the move before it is capped where it is.
MOVE_WAIT_S = 60.0
GROW_AT = 0.85
GROW_MIN_MB = 32
GROW_STEP_MB = 32

Capped = Callable[[LocalSandbox, str], Awaitable[None]]
Grown = Callable[[LocalSandbox, int], Awaitable[None]]
NeedsRoom = Callable[[LocalSandbox, int], Awaitable[None]]


def next_limit_mb(pressure: MemoryPressure, current_mb: int, ceiling_mb: int) -> int | None:
    """The limit to grow to now, or None while the sandbox has room enough. Pure."""
    limit = pressure.limit_bytes if pressure.limit_bytes > 0 else current_mb * 2**20
    if not pressure.waiting and pressure.usage_bytes < GROW_AT * limit:
        return None
    usage_mb = pressure.usage_bytes / 2**20
    wanted = max(current_mb * 1.5, current_mb + GROW_MIN_MB, usage_mb / GROW_AT)
    rounded = math.ceil(wanted / GROW_STEP_MB) * GROW_STEP_MB
    return min(ceiling_mb, rounded)


class MemoryAutoscaler:
    def __init__(
        self,
        manager: SandboxManager,
        limits: CgroupLimits,
        on_grown: Grown,
        on_capped: Capped,
        on_needs_room: NeedsRoom | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._limits = limits
        self._on_grown = on_grown
        self._on_capped = on_capped
        self._on_needs_room = on_needs_room
        self._clock = clock
        self._held: set[str] = set()
        self._capped: set[str] = set()
        # Sandboxes waiting to be moved to a node with room: until when they wait, and the most
        # they asked for (and were lent).
        self._moving: dict[str, float] = {}
        self._asked: dict[str, int] = {}

    async def check(self) -> None:
        live = set()
        for sandbox in self._manager.all():
            ceiling = sandbox.request.memory_ceiling_mb
            if sandbox.status != "running" or ceiling <= 0:
                continue
            live.add(sandbox.id)
            try:
                await self._check_one(sandbox, ceiling)
            except errors.HutchError as exc:
                log.warning("automatic memory of sandbox %s: %s", sandbox.id, exc.message)
        self._held &= live
        self._capped &= live
        self._moving = {k: v for k, v in self._moving.items() if k in live}
        self._asked = {k: v for k, v in self._asked.items() if k in self._moving}

    async def _check_one(self, sandbox: LocalSandbox, ceiling: int) -> None:
        current = sandbox.request.memory_mb
        if sandbox.id in self._capped:
            return
        waiting_until = self._moving.get(sandbox.id)
        if waiting_until is not None and self._clock() >= waiting_until:
            await self._end_wait(sandbox)
            if sandbox.id in self._capped:
                return
        if sandbox.id not in self._held and current < ceiling:
            held = await asyncio.to_thread(self._limits.hold_at_limit, sandbox.id, True)
            self._held.update([sandbox.id] if held else [])
        pressure = await asyncio.to_thread(self._limits.memory_pressure, sandbox.id)
        if pressure is None:
            return
        target = next_limit_mb(pressure, current, ceiling)
        if target is None:
            return
        if target <= current:
            await self._cap(sandbox, f"it reached its memory ceiling of {ceiling} MB")
            return
        try:
            await self._manager.resize(sandbox.id, 0, target)
        except errors.ResourceExhausted as exc:
            await self._no_room(sandbox, target, exc.message)
            return
        self._moving.pop(sandbox.id, None)
        self._asked.pop(sandbox.id, None)
        log.info("sandbox %s needed more memory: %d MB -> %d MB", sandbox.id, current, target)
        await self._on_grown(sandbox, current)

    async def _no_room(self, sandbox: LocalSandbox, target: int, why: str) -> None:
        """The node is full: a gVisor sandbox asks to be moved, a container (whose processes a move
        would lose) is capped at once."""
        if self._on_needs_room is None or sandbox.request.isolation != GVISOR:
            await self._cap(sandbox, f"its node has no memory left for it to grow ({why})")
            return
        # Lent, not reserved: a task held at the limit could not be stopped for the move's
        # checkpoint, so until the move the sandbox may use what it needs. Each time it needs more
        # it asks again, so that it is resumed elsewhere with what it holds.
        asked = self._asked.get(sandbox.id, 0)
        if target <= asked:
            return
        await asyncio.to_thread(self._limits.set_memory_limit, sandbox.id, target * 2**20)
        self._asked[sandbox.id] = target
        self._moving.setdefault(sandbox.id, self._clock() + MOVE_WAIT_S)
        log.info("sandbox %s needs %d MB, more than its node has: asking for a move", sandbox.id, target)
        await self._on_needs_room(sandbox, target)

    async def _end_wait(self, sandbox: LocalSandbox) -> None:
        """No move came in time: what was lent goes back; a sandbox that holds it is capped."""
        del self._moving[sandbox.id]
        self._asked.pop(sandbox.id, None)
        try:
            await asyncio.to_thread(self._limits.set_memory_limit, sandbox.id, sandbox.request.memory_mb * 2**20)
        except errors.FailedPrecondition:
            log.warning("sandbox %s keeps the memory it was lent: it uses it", sandbox.id)
            await self._cap(sandbox, "its node has no memory left for it to grow, and no move came")
            return
        log.info("sandbox %s was not moved, and fits in its %d MB again", sandbox.id, sandbox.request.memory_mb)

    async def _cap(self, sandbox: LocalSandbox, reason: str) -> None:
        self._capped.add(sandbox.id)
        if sandbox.id in self._held:
            await asyncio.to_thread(self._limits.hold_at_limit, sandbox.id, False)
            self._held.discard(sandbox.id)
        log.info("sandbox %s stays at %d MB: %s", sandbox.id, sandbox.request.memory_mb, reason)
        await self._on_capped(sandbox, reason)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), POLL_S)
            except TimeoutError:
                pass
