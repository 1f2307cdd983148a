"""The Usage API's use cases: query, export, compare and list price books, always for one tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from hutch_billing_meter import store
from hutch_billing_meter.domain.buckets import Granularity, Window, month_start
from hutch_billing_meter.domain.catalogue import PriceBooks
from hutch_billing_meter.domain.pricing import (
    PriceBook,
    PricedRow,
    Totals,
    UsageRow,
    billable_total,
    combine,
    price_rows,
    totals,
)
from hutch_billing_meter.domain.quantities import Usage, total
from hutch_billing_meter.domain.shapes import shape
from hutch_billing_meter.exports import ExportContext, ExportFormat, encode
from hutch_billing_meter.store import Selection

# When a query names no window: the last day.
DEFAULT_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class UsageFilter:
    """What a caller asks about, before it is checked: times may be missing."""

    start: datetime | None = None
    end: datetime | None = None
    sandbox_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    tenant_id: str
    book: PriceBook
    window: Window
    buckets: list[PricedRow]
    totals: Totals


@dataclass(frozen=True)
class BookCost:
    book: PriceBook
    cost: Totals


@dataclass(frozen=True)
class Comparison:
    workload: str
    description: str
    usage: Usage
    costs: list[BookCost]


class UsageService:
    def __init__(
        self,
        db: asyncpg.Pool,
        books: PriceBooks,
        region: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self.books = books
        self._region = region
        self._clock = clock

    def _selection(self, tenant_id: str, wanted: UsageFilter, granularity: Granularity) -> Selection:
        end = wanted.end or self._clock()
        start = wanted.start or end - DEFAULT_WINDOW
        return Selection(tenant_id, Window.of(start, end, granularity), wanted.sandbox_id, dict(wanted.labels))

    async def query(
        self,
        tenant_id: str,
        wanted: UsageFilter,
        granularity: Granularity,
        book_name: str = "",
        by_sandbox: bool = False,
    ) -> QueryResult:
        book = self.books.get(book_name)
        selection = self._selection(tenant_id, wanted, granularity)
        rows = await store.usage_rows(self._db, selection, granularity)
        # Allowances belong to the tenant's whole bill: a slice of it (one sandbox, some labels)
        # is shown at its gross cost.
        free_tier = not selection.sandbox_id and not selection.labels
        used_before = {}
        month = month_start(selection.window.start)
        if free_tier and month < selection.window.start:
            earlier = Selection(tenant_id, Window(month, selection.window.start))
            used_before[month] = billable_total(await store.usage_rows(self._db, earlier, Granularity.DAY), book)
        priced = price_rows(rows, book, free_tier=free_tier, used_before=used_before)
        return QueryResult(tenant_id, book, selection.window, combine(priced, by_sandbox), totals(priced))

    async def export(
        self, tenant_id: str, wanted: UsageFilter, granularity: Granularity, fmt: ExportFormat, book_name: str = ""
    ) -> AsyncIterator[bytes]:
        """The rows of the selection, one per sandbox and bucket, encoded in `fmt`, piece by piece."""
        book = self.books.get(book_name)
        selection = self._selection(tenant_id, wanted, granularity)

        async def priced() -> AsyncIterator[list[PricedRow]]:
            async for batch in store.stream_usage_rows(self._db, selection, granularity):
                yield price_rows(batch, book)

        context = ExportContext(tenant_id, book, granularity, self._region)
        async for piece in encode(priced(), fmt, context):
            yield piece

    async def compare_measured(self, tenant_id: str, wanted: UsageFilter) -> Comparison:
        """The caller's real usage in a window, priced under every book."""
        selection = self._selection(tenant_id, wanted, Granularity.HOUR)
        rows = await store.usage_rows(self._db, selection, Granularity.HOUR)
        window = selection.window
        return self._compare("measured", f"usage from {window.start.isoformat()} to {window.end.isoformat()}", rows)

    def compare_shape(self, name: str) -> Comparison:
        """A named workload shape priced under every book."""
        chosen = shape(name)
        row = UsageRow(start=self._clock(), sandbox_id=chosen.name, usage=chosen.usage())
        return self._compare(chosen.name, chosen.description, [row])

    def _compare(self, workload: str, description: str, rows: list[UsageRow]) -> Comparison:
        costs = [BookCost(book, totals(price_rows(rows, book))) for book in self.books.all()]
        costs.sort(key=lambda item: (item.cost.gross.total, item.book.name))
        return Comparison(workload, description, total([row.usage for row in rows]), costs)
