"""hutch-scheduler: run the scheduler (settings from HUTCH_* env)."""

from __future__ import annotations

import asyncio

from hutch.core.lifecycle import configure_logging
from hutch_scheduler import app
from hutch_scheduler.settings import SchedulerSettings


def main() -> None:
    settings = SchedulerSettings()
    configure_logging(settings.log_level, "scheduler")
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
