"""Scheduler settings (env: HUTCH_SCHEDULER__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

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
    # A node silent this long is declared lost: fenced, and its sandboxes reported lost. Must exceed
    # node_grace_s (a node stops getting sandboxes well before it is given up on).
    node_lost_after_s: float = Field(default=30.0, gt=0)
    # How often heartbeats are checked for lost nodes.
    node_loss_check_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _lost_after_grace(self) -> SchedulerOptions:
        if self.node_lost_after_s <= self.node_grace_s:
            raise ValueError("node_lost_after_s must be larger than node_grace_s")
        return self


class SchedulerSettings(ServiceSettings):
    scheduler: SchedulerOptions = SchedulerOptions()
