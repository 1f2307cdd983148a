"""Price books and the arithmetic that turns usage into money. Pure: no I/O, no transport types.

A price book bills CPU one of two ways:

* active-cpu: the CPU time a sandbox used (Cloudflare, Vercel, AWS AgentCore);
* wall-clock: the vCPUs it held for as long as it ran, used or not (E2B, Modal).

Memory is billed on what was provisioned or on what was in use, storage per GB-hour, egress per GB.
Rounding happens per row (one sandbox in one bucket): CPU-seconds are rounded up to whole units
(Cloudflare bills 10 ms increments) and billed memory is never below a minimum while a sandbox runs
(AgentCore bills at least 128 MB). Free allowances are per calendar month (UTC) and are used up in
time order: the first usage of the month is the usage that is free.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from hutch_billing_meter.domain.buckets import month_start
from hutch_billing_meter.domain.quantities import ZERO, Usage

ZERO_AMOUNT = Decimal(0)


class CpuModel(enum.Enum):
    ACTIVE = "active-cpu"
    WALL_CLOCK = "wall-clock"


class MemoryBasis(enum.Enum):
    PROVISIONED = "provisioned"
    USED = "used"


@dataclass(frozen=True)
class Billable:
    """Quantities in the units rates are quoted in: vCPU-seconds, GiB-seconds, GB-hours, GB."""

    cpu: Decimal = ZERO_AMOUNT
    memory: Decimal = ZERO_AMOUNT
    storage: Decimal = ZERO_AMOUNT
    egress: Decimal = ZERO_AMOUNT

    def __add__(self, other: Billable) -> Billable:
        return Billable(
            self.cpu + other.cpu, self.memory + other.memory, self.storage + other.storage, self.egress + other.egress
        )

    def __sub__(self, other: Billable) -> Billable:
        return Billable(
            self.cpu - other.cpu, self.memory - other.memory, self.storage - other.storage, self.egress - other.egress
        )

    def at_most(self, other: Billable) -> Billable:
        """Each quantity capped by the other's, and never below zero."""
        return Billable(
            max(ZERO_AMOUNT, min(self.cpu, other.cpu)),
            max(ZERO_AMOUNT, min(self.memory, other.memory)),
            max(ZERO_AMOUNT, min(self.storage, other.storage)),
            max(ZERO_AMOUNT, min(self.egress, other.egress)),
        )


NOTHING = Billable()


@dataclass(frozen=True)
class Rates:
    """Prices per unit, in the book's currency."""

    cpu_per_vcpu_second: Decimal = ZERO_AMOUNT
    memory_per_gib_second: Decimal = ZERO_AMOUNT
    storage_per_gb_hour: Decimal = ZERO_AMOUNT
    egress_per_gb: Decimal = ZERO_AMOUNT


@dataclass(frozen=True)
class PriceBook:
    name: str
    model: CpuModel
    rates: Rates
    memory_basis: MemoryBasis = MemoryBasis.PROVISIONED
    # CPU-seconds are rounded up to whole units of this size per row; 0: not rounded.
    cpu_unit_seconds: Decimal = ZERO_AMOUNT
    # Billed memory is at least this many GiB for every second a sandbox runs.
    memory_minimum_gib: Decimal = ZERO_AMOUNT
    # Free each calendar month (UTC), in billing units.
    free_per_month: Billable = NOTHING
    currency: str = "USD"
    description: str = ""
    # Where the figures come from: a pricing page and the date of the figure, or "operator".
    source: str = "operator"


@dataclass(frozen=True)
class Cost:
    cpu: Decimal = ZERO_AMOUNT
    memory: Decimal = ZERO_AMOUNT
    storage: Decimal = ZERO_AMOUNT
    egress: Decimal = ZERO_AMOUNT

    @property
    def total(self) -> Decimal:
        return self.cpu + self.memory + self.storage + self.egress

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.cpu + other.cpu, self.memory + other.memory, self.storage + other.storage, self.egress + other.egress
        )

    def __sub__(self, other: Cost) -> Cost:
        return Cost(
            self.cpu - other.cpu, self.memory - other.memory, self.storage - other.storage, self.egress - other.egress
        )


FREE = Cost()


def billable(usage: Usage, book: PriceBook) -> Billable:
    """What a row of usage is billed as under `book`, rounding rules applied."""
    cpu = usage.cpu_active_seconds if book.model is CpuModel.ACTIVE else usage.cpu_allocated_seconds
    if book.cpu_unit_seconds > 0:
        units = (cpu / book.cpu_unit_seconds).to_integral_value(rounding=ROUND_CEILING)
        cpu = units * book.cpu_unit_seconds
    memory = (
        usage.memory_used_gib_seconds if book.memory_basis is MemoryBasis.USED else usage.memory_provisioned_gib_seconds
    )
    memory = max(memory, book.memory_minimum_gib * usage.running_seconds)
    return Billable(cpu=cpu, memory=memory, storage=usage.storage_gb_hours, egress=usage.egress_gb)


def cost_of(quantities: Billable, rates: Rates) -> Cost:
    return Cost(
        cpu=quantities.cpu * rates.cpu_per_vcpu_second,
        memory=quantities.memory * rates.memory_per_gib_second,
        storage=quantities.storage * rates.storage_per_gb_hour,
        egress=quantities.egress * rates.egress_per_gb,
    )


@dataclass(frozen=True)
class UsageRow:
    """One sandbox's usage in one bucket, as the ledger answers it."""

    start: datetime
    sandbox_id: str
    usage: Usage
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PricedRow:
    start: datetime
    sandbox_id: str
    usage: Usage
    gross: Cost
    credit: Cost
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def net(self) -> Cost:
        return self.gross - self.credit


def price_rows(
    rows: Iterable[UsageRow],
    book: PriceBook,
    *,
    free_tier: bool = False,
    used_before: Mapping[datetime, Billable] | None = None,
) -> list[PricedRow]:
    """Prices each row; with `free_tier`, takes the month's allowance off the earliest rows first.

    `used_before` holds, per month start, what was billable in that month before the first row
    (the part of the month before the window), which has already used up allowance.
    """
    used_before = used_before or {}
    remaining: dict[datetime, Billable] = {}
    priced = []
    for row in sorted(rows, key=lambda r: (r.start, r.sandbox_id)):
        quantities = billable(row.usage, book)
        gross = cost_of(quantities, book.rates)
        credit = FREE
        if free_tier:
            month = month_start(row.start)
            left = remaining.get(month)
            if left is None:
                left = (book.free_per_month - used_before.get(month, NOTHING)).at_most(book.free_per_month)
            free = quantities.at_most(left)
            remaining[month] = left - free
            credit = cost_of(free, book.rates)
        priced.append(PricedRow(row.start, row.sandbox_id, row.usage, gross, credit, row.labels))
    return priced


def billable_total(rows: Iterable[UsageRow], book: PriceBook) -> Billable:
    total = NOTHING
    for row in rows:
        total = total + billable(row.usage, book)
    return total


def combine(rows: Iterable[PricedRow], by_sandbox: bool) -> list[PricedRow]:
    """Rows added up per bucket (and per sandbox when `by_sandbox`), in time order."""
    merged: dict[tuple[datetime, str], PricedRow] = {}
    for row in rows:
        key = (row.start, row.sandbox_id if by_sandbox else "")
        seen = merged.get(key)
        if seen is None:
            merged[key] = replace(row, sandbox_id=key[1], labels=row.labels if by_sandbox else {})
        else:
            merged[key] = replace(
                seen, usage=seen.usage + row.usage, gross=seen.gross + row.gross, credit=seen.credit + row.credit
            )
    return [merged[key] for key in sorted(merged)]


@dataclass(frozen=True)
class Totals:
    usage: Usage
    gross: Cost
    credit: Cost

    @property
    def net(self) -> Cost:
        return self.gross - self.credit


def totals(rows: Iterable[PricedRow]) -> Totals:
    usage, gross, credit = ZERO, FREE, FREE
    for row in rows:
        usage, gross, credit = usage + row.usage, gross + row.gross, credit + row.credit
    return Totals(usage, gross, credit)


def money(amount: Decimal) -> str:
    """An amount as a plain decimal string to the nano-unit, without trailing zeros past cents."""
    rounded = amount.quantize(Decimal("0.000000001"), rounding=ROUND_HALF_EVEN)
    text = format(rounded if not rounded.is_zero() else ZERO_AMOUNT, "f")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"
