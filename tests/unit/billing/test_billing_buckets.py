"""Window bucketing: minute shares add up exactly, windows are whole minutes and bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.core import errors
from hutch_billing_meter.domain.buckets import MAX_BUCKETS, Granularity, Window, month_start, split_by_minute
from hutch_billing_meter.domain.quantities import Usage, total

T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


def test_a_report_inside_one_minute_stays_whole() -> None:
    usage = Usage(running_ms=10_000, cpu_active_ns=7, memory_peak_bytes=42)
    assert split_by_minute(T0 + timedelta(seconds=10), T0 + timedelta(seconds=20), usage) == [(T0, usage)]


def test_a_report_across_minutes_is_shared_by_time() -> None:
    usage = Usage(running_ms=90_000, cpu_active_ns=90, memory_peak_bytes=42)
    pieces = split_by_minute(T0 + timedelta(seconds=30), T0 + timedelta(minutes=2), usage)
    assert [minute for minute, _ in pieces] == [T0, T0 + timedelta(minutes=1)]
    assert [piece.cpu_active_ns for _, piece in pieces] == [30, 60]
    assert [piece.running_ms for _, piece in pieces] == [30_000, 60_000]
    assert all(piece.memory_peak_bytes == 42 for _, piece in pieces)


def test_a_report_without_duration_lands_in_its_minute() -> None:
    usage = Usage(egress_bytes=5)
    assert split_by_minute(T0 + timedelta(seconds=59), T0 + timedelta(seconds=59), usage) == [(T0, usage)]


@given(
    start_us=st.integers(min_value=0, max_value=10**9),
    length_us=st.integers(min_value=1, max_value=4 * 3600 * 10**6),
    cpu=st.integers(min_value=0, max_value=10**15),
    memory=st.integers(min_value=0, max_value=10**12),
)
def test_shares_always_add_up_to_the_report(start_us: int, length_us: int, cpu: int, memory: int) -> None:
    usage = Usage(running_ms=length_us // 1000, cpu_active_ns=cpu, memory_used_mib_ms=memory, egress_bytes=cpu)
    start = T0 + timedelta(microseconds=start_us)
    pieces = split_by_minute(start, start + timedelta(microseconds=length_us), usage)
    summed = total([piece for _, piece in pieces])
    assert (summed.running_ms, summed.cpu_active_ns, summed.memory_used_mib_ms, summed.egress_bytes) == (
        usage.running_ms,
        cpu,
        memory,
        cpu,
    )
    assert all(piece.cpu_active_ns >= 0 for _, piece in pieces)


def test_windows_are_whole_minutes() -> None:
    window = Window.of(T0 + timedelta(seconds=5), T0 + timedelta(minutes=3, seconds=1), Granularity.MINUTE)
    assert window == Window(T0, T0 + timedelta(minutes=4))
    assert Window.of(T0, T0 + timedelta(minutes=1), Granularity.HOUR).end == T0 + timedelta(minutes=1)


def test_bad_or_huge_windows_are_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="before it starts"):
        Window.of(T0, T0 - timedelta(minutes=1), Granularity.HOUR)
    with pytest.raises(errors.InvalidArgument, match="coarser granularity"):
        Window.of(T0, T0 + timedelta(minutes=MAX_BUCKETS + 1), Granularity.MINUTE)
    Window.of(T0, T0 + timedelta(minutes=MAX_BUCKETS + 1), Granularity.HOUR)


def test_granularities_truncate_in_utc() -> None:
    moment = datetime(2026, 3, 1, 10, 37, 12, tzinfo=UTC)
    assert Granularity.MINUTE.truncate(moment) == datetime(2026, 3, 1, 10, 37, tzinfo=UTC)
    assert Granularity.HOUR.truncate(moment) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert Granularity.DAY.truncate(moment) == datetime(2026, 3, 1, tzinfo=UTC)
    assert month_start(moment) == datetime(2026, 3, 1, tzinfo=UTC)
