"""Which region a create without one goes to: this one while it has room, else the nearest that has.

The decision is the gateway's, before anything is written: a region "has room" for a sandbox when one
of its reachable nodes runs its isolation class and has the memory unallocated. The scheduler still
places the sandbox; this only picks the region whose scheduler gets it.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterable

from hutch.core import errors
from hutch.core.nodes import NodeInfo


class Placement(enum.Enum):
    # Create here whatever the room (a create that names this region, or no other region has room).
    HERE = "here"
    # Create here when there is room, else raise NoRoomInRegion so that the caller tries the next region.
    SPILL = "spill"
    # Create here only when there is room, else refuse (RESOURCE_EXHAUSTED): another region passed it on.
    ONLY_IF_ROOM = "only-if-room"


# Set by the region router around the create it serves; HERE when nothing set it.
PLACEMENT: contextvars.ContextVar[Placement] = contextvars.ContextVar("hutch_placement", default=Placement.HERE)


class NoRoomInRegion(errors.ResourceExhausted):
    """No reachable node of this region has room for the sandbox; nothing was created."""


def has_room(nodes: Iterable[NodeInfo], isolation: str, memory_mb: int) -> bool:
    return any(
        isolation in node.isolation_classes and node.memory_mb_total - node.memory_mb_allocated >= memory_mb
        for node in nodes
    )


def check_room(placement: Placement, nodes: Iterable[NodeInfo], region: str, isolation: str, memory_mb: int) -> None:
    """Raises when `placement` asks for room and the region has none."""
    if placement is Placement.HERE or has_room(nodes, isolation, memory_mb):
        return
    message = f"no node in region {region!r} has {memory_mb} MB free for a {isolation} sandbox"
    if placement is Placement.SPILL:
        raise NoRoomInRegion(message)
    raise errors.ResourceExhausted(message)
