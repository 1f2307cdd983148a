"""Choosing a node for a sandbox. Pure logic: no I/O, no transport types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hutch.core import errors

# "pack": the fullest node that fits (best fit), leaving whole nodes free for large sandboxes and
# for scaling in; "spread": the emptiest, so one node's noisy sandboxes disturb as few as possible.
Strategy = Literal["pack", "spread"]


@dataclass(frozen=True)
class Demand:
    cpu_millis: int
    memory_mb: int
    template: str
    isolation: str = "container"


@dataclass(frozen=True)
class Candidate:
    """A live node with what it offers and what is already placed on it."""

    node_id: str
    cpu_millis_total: int
    memory_mb_total: int
    cpu_millis_used: int
    memory_mb_used: int
    templates: frozenset[str]
    isolation_classes: frozenset[str] = frozenset({"container"})
    # The requesting tenant's sandboxes already placed here.
    tenant_sandboxes: int = 0

    @property
    def cpu_free(self) -> int:
        return self.cpu_millis_total - self.cpu_millis_used

    @property
    def memory_free(self) -> int:
        return self.memory_mb_total - self.memory_mb_used


def choose_node(
    demand: Demand, candidates: list[Candidate], region: str, prefer: str = "", strategy: Strategy = "spread"
) -> str:
    """The node to run the sandbox on.

    `prefer` names a node that already holds what the sandbox starts from (a fork's parent, where it
    was paused): it wins whenever it fits, since starting there copies nothing. Otherwise, among the
    nodes that fit, those holding the fewest of the tenant's sandboxes come first (one node's loss
    takes as little of a tenant's fleet as possible), and among those `strategy` decides by free
    memory, then CPU. Raises when nothing fits, with numbers a person can act on.
    """
    if not candidates:
        raise errors.Unavailable(f"no node is running in region {region!r}: start a node-agent")
    capable = [c for c in candidates if demand.isolation in c.isolation_classes]
    if not capable:
        offered = sorted(set().union(*(c.isolation_classes for c in candidates)))
        raise errors.FailedPrecondition(
            f"no node in region {region!r} runs the {demand.isolation!r} isolation class "
            f"(offered: {', '.join(offered) or 'none'})"
        )
    candidates = capable
    with_template = [c for c in candidates if demand.template in c.templates]
    if not with_template:
        # Only built-in names: a tenant's templates ("<tenant>/<name>") are not for others to see.
        known = sorted(t for t in set().union(*(c.templates for c in candidates)) if "/" not in t)
        raise errors.NotFound(
            f"template {demand.template.rpartition('/')[2]!r} is not installed on any node in region {region!r}; "
            f"available: {', '.join(known) or 'none'}"
        )
    fitting = [c for c in with_template if c.cpu_free >= demand.cpu_millis and c.memory_free >= demand.memory_mb]
    if not fitting:
        best = max(with_template, key=lambda c: (c.memory_free, c.cpu_free))
        raise errors.ResourceExhausted(
            f"no node has room for {demand.cpu_millis / 1000:g} vCPU and {demand.memory_mb} MB "
            f"(the roomiest node, {best.node_id}, has {max(0, best.cpu_free) / 1000:g} vCPU and "
            f"{max(0, best.memory_free)} MB free): kill idle sandboxes, ask for less, or add nodes"
        )
    preferred = [c for c in fitting if c.node_id == prefer]
    if preferred:
        return preferred[0].node_id
    fewest = min(c.tenant_sandboxes for c in fitting)
    fitting = [c for c in fitting if c.tenant_sandboxes == fewest]
    if strategy == "pack":
        return min(fitting, key=lambda c: (c.memory_free, c.cpu_free, c.node_id)).node_id
    return max(fitting, key=lambda c: (c.memory_free, c.cpu_free, c.node_id)).node_id
