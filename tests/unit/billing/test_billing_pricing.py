"""Pricing arithmetic: both CPU models, memory bases, rounding, free allowances, money."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hutch_billing_meter.domain.pricing import (
    Billable,
    CpuModel,
    MemoryBasis,
    PriceBook,
    Rates,
    UsageRow,
    billable,
    combine,
    money,
    price_rows,
    totals,
)
from hutch_billing_meter.domain.quantities import Usage

S = 1_000_000_000  # ns per second
GIB_S = 1024 * 1000  # MiB-ms per GiB-second

RATES = Rates(
    cpu_per_vcpu_second=Decimal("0.00002"),
    memory_per_gib_second=Decimal("0.000001"),
    storage_per_gb_hour=Decimal("0.1"),
    egress_per_gb=Decimal("0.05"),
)
ACTIVE = PriceBook(name="active", model=CpuModel.ACTIVE, rates=RATES)
WALL = PriceBook(name="wall", model=CpuModel.WALL_CLOCK, rates=RATES)


def at(minute: int, day: int = 1, month: int = 3) -> datetime:
    return datetime(2026, month, day, 10, minute, tzinfo=UTC)


def busy_fifth() -> Usage:
    """An hour on one vCPU, busy a fifth of the time (Cloudflare's own pricing example)."""
    return Usage(running_ms=3600_000, cpu_active_ns=720 * S, cpu_allocated_ns=3600 * S)


def test_active_cpu_bills_what_was_used_and_wall_clock_what_was_held() -> None:
    assert billable(busy_fifth(), ACTIVE).cpu == Decimal(720)
    assert billable(busy_fifth(), WALL).cpu == Decimal(3600)
    # Cloudflare's changelog example: $0.072 for the hour held becomes $0.0144 for what was used.
    assert price_rows([UsageRow(at(0), "sb", busy_fifth())], ACTIVE)[0].gross.cpu == Decimal("0.0144")
    assert price_rows([UsageRow(at(0), "sb", busy_fifth())], WALL)[0].gross.cpu == Decimal("0.072")


def test_cpu_is_rounded_up_to_whole_units() -> None:
    book = PriceBook(name="b", model=CpuModel.ACTIVE, rates=RATES, cpu_unit_seconds=Decimal("0.01"))
    assert billable(Usage(cpu_active_ns=1), book).cpu == Decimal("0.01")
    assert billable(Usage(cpu_active_ns=10_000_000), book).cpu == Decimal("0.01")
    assert billable(Usage(cpu_active_ns=10_000_001), book).cpu == Decimal("0.02")
    assert billable(Usage(), book).cpu == 0
    per_second = PriceBook(name="s", model=CpuModel.WALL_CLOCK, rates=RATES, cpu_unit_seconds=Decimal(1))
    assert billable(Usage(cpu_allocated_ns=S + 1), per_second).cpu == 2


def test_memory_is_billed_on_its_basis_and_never_below_the_minimum() -> None:
    usage = Usage(running_ms=10_000, memory_provisioned_mib_ms=4 * 10 * GIB_S, memory_used_mib_ms=1 * 10 * GIB_S)
    assert billable(usage, ACTIVE).memory == Decimal(40)
    used = PriceBook(name="u", model=CpuModel.ACTIVE, rates=RATES, memory_basis=MemoryBasis.USED)
    assert billable(usage, used).memory == Decimal(10)
    floor = PriceBook(
        name="f", model=CpuModel.ACTIVE, rates=RATES, memory_basis=MemoryBasis.USED, memory_minimum_gib=Decimal(2)
    )
    assert billable(usage, floor).memory == Decimal(20)


def test_storage_and_egress_are_priced_per_gb_hour_and_gb() -> None:
    usage = Usage(storage_byte_seconds=2 * 10**9 * 3600, egress_bytes=3 * 10**9)
    cost = price_rows([UsageRow(at(0), "", usage)], ACTIVE)[0].gross
    assert cost.storage == Decimal("0.2")
    assert cost.egress == Decimal("0.15")


def test_free_allowance_is_used_up_in_time_order_and_starts_over_each_month() -> None:
    book = PriceBook(name="free", model=CpuModel.ACTIVE, rates=RATES, free_per_month=Billable(cpu=Decimal(100)))
    rows = [
        UsageRow(at(2), "sb-b", Usage(cpu_active_ns=80 * S)),
        UsageRow(at(1), "sb-a", Usage(cpu_active_ns=60 * S)),
        UsageRow(at(1, day=1, month=4), "sb-a", Usage(cpu_active_ns=30 * S)),
    ]
    priced = price_rows(rows, book, free_tier=True)
    assert [(row.start, row.sandbox_id) for row in priced] == [(at(1), "sb-a"), (at(2), "sb-b"), (at(1, 1, 4), "sb-a")]
    assert priced[0].net.cpu == 0  # 60 of the 100 free
    assert priced[1].net.cpu == Decimal(40) * RATES.cpu_per_vcpu_second  # 40 free, 40 billed
    assert priced[2].net.cpu == 0  # a new month
    assert price_rows(rows, book, free_tier=False)[0].credit.total == 0


def test_usage_earlier_in_the_month_has_already_taken_its_share_of_the_allowance() -> None:
    book = PriceBook(name="free", model=CpuModel.ACTIVE, rates=RATES, free_per_month=Billable(cpu=Decimal(100)))
    month = datetime(2026, 3, 1, tzinfo=UTC)
    priced = price_rows(
        [UsageRow(at(1), "sb", Usage(cpu_active_ns=50 * S))],
        book,
        free_tier=True,
        used_before={month: Billable(cpu=Decimal(70))},
    )
    assert priced[0].credit.cpu == Decimal(30) * RATES.cpu_per_vcpu_second


def test_rows_combine_into_buckets_with_or_without_sandboxes() -> None:
    rows = [
        UsageRow(at(1), "sb-a", Usage(cpu_active_ns=S, memory_peak_bytes=5)),
        UsageRow(at(1), "sb-b", Usage(cpu_active_ns=2 * S, memory_peak_bytes=9)),
        UsageRow(at(2), "sb-a", Usage(cpu_active_ns=3 * S)),
    ]
    priced = price_rows(rows, ACTIVE)
    merged = combine(priced, by_sandbox=False)
    assert [(b.start, b.sandbox_id, b.usage.cpu_active_ns) for b in merged] == [(at(1), "", 3 * S), (at(2), "", 3 * S)]
    assert merged[0].usage.memory_peak_bytes == 9
    assert len(combine(priced, by_sandbox=True)) == 3
    assert totals(priced).usage.cpu_active_ns == 6 * S
    assert totals(priced).gross.total == sum((row.gross.total for row in priced), Decimal(0))


def test_money_is_a_plain_decimal_string() -> None:
    assert money(Decimal("0.0144")) == "0.0144"
    assert money(Decimal(3)) == "3.00"
    assert money(Decimal("0.0000000004")) == "0.00"
    assert money(Decimal("1E-7")) == "0.0000001"
    assert money(Decimal("-0.0000000001")) == "0.00"
