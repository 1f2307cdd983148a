"""Time in the ledger: minute rows, query windows, and buckets of a granularity.

The ledger keeps one row per tenant, sandbox and minute (UTC). A report whose window crosses
minute boundaries is shared out in proportion to time, so a long report (after a node-agent was
away) lands where the time was spent; shares are computed from cumulative floors, so they add up
to the report exactly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hutch.core import errors
from hutch_billing_meter.domain.quantities import Usage

MINUTE = timedelta(minutes=1)
# A query answers at most this many buckets; longer windows need a coarser granularity.
MAX_BUCKETS = 50_000


class Granularity(enum.Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def step(self) -> timedelta:
        return {Granularity.MINUTE: MINUTE, Granularity.HOUR: timedelta(hours=1), Granularity.DAY: timedelta(days=1)}[
            self
        ]

    def truncate(self, moment: datetime) -> datetime:
        moment = moment.astimezone(UTC)
        if self is Granularity.MINUTE:
            return moment.replace(second=0, microsecond=0)
        if self is Granularity.HOUR:
            return moment.replace(minute=0, second=0, microsecond=0)
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def floor_minute(moment: datetime) -> datetime:
    return Granularity.MINUTE.truncate(moment)


def ceil_minute(moment: datetime) -> datetime:
    floored = floor_minute(moment)
    return floored if floored == moment.astimezone(UTC) else floored + MINUTE


@dataclass(frozen=True)
class Window:
    """A query's time range, in whole minutes: [start, end)."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: datetime, end: datetime, granularity: Granularity) -> Window:
        """The window from start (rounded down) to end (rounded up) to whole minutes; checked."""
        window = cls(floor_minute(start), ceil_minute(end))
        if window.end <= window.start:
            raise errors.InvalidArgument(f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})")
        buckets = (window.end - granularity.truncate(window.start)) / granularity.step
        if buckets > MAX_BUCKETS:
            raise errors.InvalidArgument(
                f"the window holds {int(buckets)} {granularity.value}s; at most {MAX_BUCKETS} buckets are answered: "
                "ask for a coarser granularity or a shorter window"
            )
        return window


def month_start(moment: datetime) -> datetime:
    """The first instant of moment's calendar month (UTC): when free allowances start over."""
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def split_by_minute(start: datetime, end: datetime, usage: Usage) -> list[tuple[datetime, Usage]]:
    """Shares a report over [start, end) out to the minutes it covers, in proportion to time.

    A report without duration (bytes sent at one moment) goes to the minute of its start.
    """
    first = floor_minute(start)
    if end <= start:
        return [(first, usage)]
    duration = _micros(end - start)
    pieces: list[tuple[datetime, Usage]] = []
    minute = first
    taken = usage.share(0, duration)
    while minute < end:
        upto = min(minute + MINUTE, end)
        covered = usage.share(_micros(upto - start), duration)
        piece = _difference(covered, taken)
        pieces.append((minute, piece))
        taken = covered
        minute += MINUTE
    return pieces


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _difference(later: Usage, earlier: Usage) -> Usage:
    values = {name: getattr(later, name) - getattr(earlier, name) for name in Usage.SUMMED}
    return Usage(**values, memory_peak_bytes=later.memory_peak_bytes)
