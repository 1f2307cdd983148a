"""What a node-agent does when it finds that the scheduler declared its node lost (fenced it).

While the node was silent (a partition, a long pause, a crash), the platform reported its sandboxes
lost (or started them elsewhere). Whatever the node still runs is therefore stale: before it
heartbeats again, it stops every sandbox it has without reporting them (their end was already
reported), then heartbeats as a new run (a new epoch) and only then removes its fence, so the
gateway routes to it again only once nothing stale is left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from hutch.core.nodes import Fence
from hutch_node_agent.sandboxes import SandboxManager

log = logging.getLogger(__name__)

# The stop reason of a sandbox stopped because its node was fenced; no sandbox.stopped goes out for it.
FENCED = "fenced"


class FenceGuard:
    def __init__(self, kv: KeyValue, node_id: str, manager: SandboxManager) -> None:
        self._kv = kv
        self._node_id = node_id
        self._manager = manager

    async def fenced(self) -> Fence | None:
        entry = await self._entry()
        return None if entry is None else Fence.decode(self._node_id, entry[1])

    async def _entry(self) -> tuple[int, bytes] | None:
        try:
            entry = await self._kv.get(self._node_id)
        except NotFoundError:
            return None
        if not entry.value or entry.revision is None:
            return None
        return entry.revision, entry.value

    async def clear(self, beat_as_new: Callable[[], Awaitable[None]]) -> bool:
        """If the node is fenced: stops its stale sandboxes, heartbeats as a new run, removes the
        fence. Returns whether it was fenced. Raises (and the caller must not heartbeat) when the
        fenced bucket cannot be read."""
        entry = await self._entry()
        if entry is None:
            return False
        revision, value = entry
        fence = Fence.decode(self._node_id, value)
        stale = self._manager.all()
        log.warning(
            "node %s was declared lost at %s; stopping its %d stale sandbox(es)",
            self._node_id,
            fence.fenced_at.isoformat(),
            len(stale),
        )
        for sandbox in stale:
            try:
                await self._manager.kill(sandbox.id, FENCED)
            except Exception:
                log.exception("stopping stale sandbox %s failed", sandbox.id)
        if self._manager.all():
            raise RuntimeError("stale sandboxes are still running; staying fenced")
        await beat_as_new()
        # Only the fence read above: a newer one (the node was lost again meanwhile) stays.
        await self._kv.delete(self._node_id, last=revision)
        log.info("node %s is back as a new run; fence removed", self._node_id)
        return True
