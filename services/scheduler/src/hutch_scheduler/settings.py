"""Scheduler settings (env: HUTCH_SCHEDULER__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from hutch.core.config import ServiceSettings
from hutch_scheduler.placement import Strategy


class SchedulerOptions(BaseModel):
    # A node whose last heartbeat is older than this gets no new sandboxes.
    node_grace_s: float = Field(default=10.0, gt=0)
    # How nodes are filled (see placement.Strategy).
    strategy: Strategy = "pack"
    # Memory a node offers = what it reports × this. Above 1, sandboxes share memory they rarely
    # all use at once (idle agents); the node's own OOM protection is then what keeps it up.
    memory_overcommit: float = Field(default=1.0, ge=1.0, le=4.0)


class SchedulerSettings(ServiceSettings):
    scheduler: SchedulerOptions = SchedulerOptions()
