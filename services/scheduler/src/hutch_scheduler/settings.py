"""Scheduler settings (env: HUTCH_SCHEDULER__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from hutch.core.config import ServiceSettings


class SchedulerOptions(BaseModel):
    # A node whose last heartbeat is older than this gets no new sandboxes.
    node_grace_s: float = Field(default=10.0, gt=0)


class SchedulerSettings(ServiceSettings):
    scheduler: SchedulerOptions = SchedulerOptions()
