"""Usage and cost: what your sandboxes used, and what it costs under any price book.

Hutch measures every sandbox two ways, the CPU it actually used (active vCPU-seconds) and the CPU
it held (allocated vCPU-seconds, wall-clock), with memory, stored bytes and bytes sent out; a price
book turns either view into money.

    from hutch import Usage

    summary = Usage.query(granularity="hour")
    print(summary.total.cpu_active_seconds, summary.cost.total)
    Usage.export(format="parquet", out="usage.parquet")
    for line in Usage.compare(shape="background-coding-agent").costs:
        print(line.price_book, line.cost.total)

Times are datetimes; naive ones are taken as UTC. A window defaults to the last day.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from google.protobuf.timestamp_pb2 import Timestamp

from hutch._config import resolve
from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch.exceptions import InvalidArgumentError
from hutch.v1 import usage_pb2, usage_pb2_grpc

if TYPE_CHECKING:
    from hutch.v1.usage_pb2_grpc import UsageAsyncStub

Granularity = Literal["minute", "hour", "day"]
ExportFormat = Literal["csv", "jsonl", "parquet", "cloudevents"]

_GRANULARITY: dict[str, usage_pb2.Granularity.ValueType] = {
    "minute": usage_pb2.GRANULARITY_MINUTE,
    "hour": usage_pb2.GRANULARITY_HOUR,
    "day": usage_pb2.GRANULARITY_DAY,
}
_FORMAT: dict[str, usage_pb2.ExportFormat.ValueType] = {
    "csv": usage_pb2.EXPORT_FORMAT_CSV,
    "jsonl": usage_pb2.EXPORT_FORMAT_JSONL,
    "parquet": usage_pb2.EXPORT_FORMAT_PARQUET,
    "cloudevents": usage_pb2.EXPORT_FORMAT_CLOUDEVENTS,
}


@dataclass(frozen=True)
class UsageQuantities:
    """Quantities over some time.

    Attributes:
        running_seconds: Sandbox-seconds of running time.
        cpu_active_seconds: vCPU-seconds of CPU time actually used.
        cpu_allocated_seconds: vCPU-seconds held, used or not (the wall-clock view).
        memory_provisioned_gib_seconds: Memory limit times time.
        memory_used_gib_seconds: Memory in use times time.
        memory_peak_gib: The highest memory use seen.
        storage_gb_hours: Bytes stored times time.
        egress_gb: Bytes sent out.
    """

    running_seconds: float = 0.0
    cpu_active_seconds: float = 0.0
    cpu_allocated_seconds: float = 0.0
    memory_provisioned_gib_seconds: float = 0.0
    memory_used_gib_seconds: float = 0.0
    memory_peak_gib: float = 0.0
    storage_gb_hours: float = 0.0
    egress_gb: float = 0.0

    @classmethod
    def from_proto(cls, message: usage_pb2.UsageQuantities) -> UsageQuantities:
        return cls(
            running_seconds=message.running_seconds,
            cpu_active_seconds=message.cpu_active_seconds,
            cpu_allocated_seconds=message.cpu_allocated_seconds,
            memory_provisioned_gib_seconds=message.memory_provisioned_gib_seconds,
            memory_used_gib_seconds=message.memory_used_gib_seconds,
            memory_peak_gib=message.memory_peak_gib,
            storage_gb_hours=message.storage_gb_hours,
            egress_gb=message.egress_gb,
        )


def _amount(text: str) -> Decimal:
    return Decimal(text or "0")


@dataclass(frozen=True)
class Cost:
    """Money, exact (Decimal), by what it is for."""

    currency: str = "USD"
    cpu: Decimal = Decimal(0)
    memory: Decimal = Decimal(0)
    storage: Decimal = Decimal(0)
    egress: Decimal = Decimal(0)
    total: Decimal = Decimal(0)

    @classmethod
    def from_proto(cls, message: usage_pb2.Cost) -> Cost:
        return cls(
            currency=message.currency or "USD",
            cpu=_amount(message.cpu),
            memory=_amount(message.memory),
            storage=_amount(message.storage),
            egress=_amount(message.egress),
            total=_amount(message.total),
        )


@dataclass(frozen=True)
class UsageBucket:
    """One minute, hour or day (of one sandbox, when asked per sandbox)."""

    start: datetime
    usage: UsageQuantities
    cost: Cost
    sandbox_id: str = ""


@dataclass(frozen=True)
class UsageSummary:
    """What `Usage.query` answers.

    Attributes:
        tenant_id: Whose usage this is (always the caller's).
        price_book: The book the costs are in.
        buckets: Per period (and sandbox), in time order.
        total: The whole window's usage.
        gross_cost: Before free allowances.
        free_tier_credit: What the allowances took off (none for a query filtered by sandbox or labels).
        cost: What is owed.
    """

    tenant_id: str
    price_book: str
    buckets: list[UsageBucket]
    total: UsageQuantities
    gross_cost: Cost
    free_tier_credit: Cost
    cost: Cost


@dataclass(frozen=True)
class PriceBook:
    """A way to turn usage into money.

    Attributes:
        model: "active-cpu" (CPU billed on what is used) or "wall-clock" (on what is held).
        memory_basis: "provisioned" or "used".
        rates: Per-unit prices: cpu_per_vcpu_second, memory_per_gib_second, storage_per_gb_hour,
            egress_per_gb.
        cpu_unit_seconds: CPU is rounded up to whole units of this per sandbox and bucket.
        memory_minimum_gib: Billed memory is never below this while a sandbox runs.
        free_per_month: Allowances per calendar month: cpu_vcpu_seconds, memory_gib_seconds,
            storage_gb_hours, egress_gb.
        source: Where the figures come from (a vendor's pricing page and date), or "operator".
    """

    name: str
    description: str
    model: str
    memory_basis: str
    currency: str
    rates: Mapping[str, Decimal]
    cpu_unit_seconds: Decimal
    memory_minimum_gib: Decimal
    free_per_month: Mapping[str, Decimal]
    source: str
    default: bool = False

    @classmethod
    def from_proto(cls, message: usage_pb2.PriceBook, default: bool) -> PriceBook:
        return cls(
            name=message.name,
            description=message.description,
            model=message.model,
            memory_basis=message.memory_basis,
            currency=message.currency,
            rates={
                "cpu_per_vcpu_second": _amount(message.cpu_per_vcpu_second),
                "memory_per_gib_second": _amount(message.memory_per_gib_second),
                "storage_per_gb_hour": _amount(message.storage_per_gb_hour),
                "egress_per_gb": _amount(message.egress_per_gb),
            },
            cpu_unit_seconds=_amount(message.cpu_unit_seconds),
            memory_minimum_gib=_amount(message.memory_minimum_gib),
            free_per_month={
                "cpu_vcpu_seconds": _amount(message.free_cpu_vcpu_seconds),
                "memory_gib_seconds": _amount(message.free_memory_gib_seconds),
                "storage_gb_hours": _amount(message.free_storage_gb_hours),
                "egress_gb": _amount(message.free_egress_gb),
            },
            source=message.source,
            default=default,
        )


@dataclass(frozen=True)
class PriceBookCost:
    price_book: str
    model: str
    cost: Cost


@dataclass(frozen=True)
class CostComparison:
    """One workload priced under every book, cheapest first (gross: no free allowances)."""

    workload: str
    description: str
    usage: UsageQuantities
    costs: list[PriceBookCost] = field(default_factory=list)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    return stamp


def _selector(
    start: datetime | None, end: datetime | None, sandbox: str | None, labels: Mapping[str, str] | None
) -> usage_pb2.UsageSelector:
    selector = usage_pb2.UsageSelector(sandbox_id=sandbox or "", labels=dict(labels or {}))
    if start is not None:
        selector.start.CopyFrom(_timestamp(start))
    if end is not None:
        selector.end.CopyFrom(_timestamp(end))
    return selector


def _granularity(value: str) -> usage_pb2.Granularity.ValueType:
    if value not in _GRANULARITY:
        raise InvalidArgumentError(f"granularity must be one of {', '.join(_GRANULARITY)}, not {value!r}")
    return _GRANULARITY[value]


def _format(value: str) -> usage_pb2.ExportFormat.ValueType:
    if value not in _FORMAT:
        raise InvalidArgumentError(f"format must be one of {', '.join(_FORMAT)}, not {value!r}")
    return _FORMAT[value]


def _comparison(message: usage_pb2.CompareCostsResponse) -> CostComparison:
    return CostComparison(
        workload=message.workload,
        description=message.description,
        usage=UsageQuantities.from_proto(message.usage),
        costs=[PriceBookCost(c.price_book, c.model, Cost.from_proto(c.cost)) for c in message.costs],
    )


class _UsageConnection(Connection):
    @property
    def usage(self) -> UsageAsyncStub:
        """The Usage service; opens the channel if needed (call from inside the event loop)."""
        return usage_pb2_grpc.UsageStub(self._open().channel)

    async def __aenter__(self) -> _UsageConnection:
        return self


class AsyncUsage:
    """Usage queries, exports and cost comparisons (coroutines; `Usage` is the blocking mirror)."""

    @staticmethod
    async def query(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: Granularity = "hour",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        by_sandbox: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> UsageSummary:
        """Usage and cost of your sandboxes per minute, hour or day.

        Args:
            start: The window's start (rounded down to the minute); default a day before `end`.
            end: The window's end (rounded up to the minute); default now.
            granularity: "minute", "hour" or "day".
            sandbox: Only this sandbox (its id).
            labels: Only sandboxes whose metadata holds all of these pairs.
            price_book: The book to price in; default the installation's.
            by_sandbox: One bucket per sandbox and period.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.

        Raises:
            InvalidArgumentError: A bad window, granularity or price book name.
        """
        request = usage_pb2.QueryUsageRequest(
            selector=_selector(start, end, sandbox, labels),
            granularity=_granularity(granularity),
            price_book=price_book or "",
            by_sandbox=by_sandbox,
        )
        async with _UsageConnection(resolve(api_key, endpoint, None)) as connection:
            response = await connection.unary("query usage", connection.usage.Query, request)
        return UsageSummary(
            tenant_id=response.tenant_id,
            price_book=response.price_book,
            buckets=[
                UsageBucket(
                    start=bucket.start.ToDatetime(tzinfo=UTC),
                    usage=UsageQuantities.from_proto(bucket.usage),
                    cost=Cost.from_proto(bucket.cost),
                    sandbox_id=bucket.sandbox_id,
                )
                for bucket in response.buckets
            ],
            total=UsageQuantities.from_proto(response.total_usage),
            gross_cost=Cost.from_proto(response.gross_cost),
            free_tier_credit=Cost.from_proto(response.free_tier_credit),
            cost=Cost.from_proto(response.total_cost),
        )

    @staticmethod
    async def export_chunks(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        format: ExportFormat = "csv",
        granularity: Granularity = "minute",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> AsyncIterator[bytes]:
        """The export's bytes as the server streams them (see `export`)."""
        request = usage_pb2.ExportUsageRequest(
            selector=_selector(start, end, sandbox, labels),
            granularity=_granularity(granularity),
            price_book=price_book or "",
            format=_format(format),
        )
        async with _UsageConnection(resolve(api_key, endpoint, None)) as connection:
            call = connection.usage.Export(request, metadata=connection.metadata)
            with connection.translated("export usage"):
                async for chunk in call:
                    if chunk.data:
                        yield chunk.data

    @overload
    @staticmethod
    async def export(
        *,
        start: datetime | None = ...,
        end: datetime | None = ...,
        format: ExportFormat = ...,
        granularity: Granularity = ...,
        sandbox: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        price_book: str | None = ...,
        out: None = ...,
        api_key: str | None = ...,
        endpoint: str | None = ...,
    ) -> bytes: ...
    @overload
    @staticmethod
    async def export(
        *,
        start: datetime | None = ...,
        end: datetime | None = ...,
        format: ExportFormat = ...,
        granularity: Granularity = ...,
        sandbox: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        price_book: str | None = ...,
        out: str | os.PathLike[str],
        api_key: str | None = ...,
        endpoint: str | None = ...,
    ) -> int: ...
    @staticmethod
    async def export(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        format: ExportFormat = "csv",
        granularity: Granularity = "minute",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        out: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> bytes | int:
        """Per-sandbox usage rows of a window as a file, produced by the server.

        Args:
            format: "csv", "jsonl", "parquet", or "cloudevents" (CloudEvents 1.0, one JSON object a
                line, as OpenMeter-style systems ingest them).
            granularity: One row per sandbox and "minute" (default), "hour" or "day".
            out: Write to this file instead of returning the bytes.
            start, end, sandbox, labels, price_book, api_key, endpoint: As for `query`.

        Returns:
            The bytes, or with `out` the number of bytes written.
        """
        chunks = AsyncUsage.export_chunks(
            start=start,
            end=end,
            format=format,
            granularity=granularity,
            sandbox=sandbox,
            labels=labels,
            price_book=price_book,
            api_key=api_key,
            endpoint=endpoint,
        )
        if out is None:
            return b"".join([chunk async for chunk in chunks])
        written = 0
        with Path(out).open("wb") as file:
            async for chunk in chunks:
                file.write(chunk)
                written += len(chunk)
        return written

    @staticmethod
    async def compare(
        *,
        shape: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> CostComparison:
        """One workload priced under every price book, cheapest first.

        Args:
            shape: A named workload: "background-coding-agent" (mostly waiting on a model),
                "rl-burst" (saturates its vCPUs, then dies) or "computer-use-session" (long). Without
                it, your real usage in the window (start, end, sandbox, labels as for `query`).
        """
        if shape:
            request = usage_pb2.CompareCostsRequest(shape=shape)
        else:
            request = usage_pb2.CompareCostsRequest(measured=_selector(start, end, sandbox, labels))
        async with _UsageConnection(resolve(api_key, endpoint, None)) as connection:
            response = await connection.unary("compare costs", connection.usage.Compare, request)
        return _comparison(response)

    @staticmethod
    async def price_books(*, api_key: str | None = None, endpoint: str | None = None) -> list[PriceBook]:
        """The price books this installation offers; `default` marks the one queries use unasked."""
        async with _UsageConnection(resolve(api_key, endpoint, None)) as connection:
            response = await connection.unary(
                "list price books", connection.usage.ListPriceBooks, usage_pb2.ListPriceBooksRequest()
            )
        return [PriceBook.from_proto(b, b.name == response.default_price_book) for b in response.price_books]


class Usage:
    """Usage queries, exports and cost comparisons (blocking; see `AsyncUsage` for the arguments)."""

    @staticmethod
    def query(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: Granularity = "hour",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        by_sandbox: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> UsageSummary:
        """Usage and cost of your sandboxes per minute, hour or day."""
        return PORTAL.run(
            AsyncUsage.query(
                start=start,
                end=end,
                granularity=granularity,
                sandbox=sandbox,
                labels=labels,
                price_book=price_book,
                by_sandbox=by_sandbox,
                api_key=api_key,
                endpoint=endpoint,
            )
        )

    @staticmethod
    def export_chunks(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        format: ExportFormat = "csv",
        granularity: Granularity = "minute",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> Iterator[bytes]:
        """The export's bytes as the server streams them."""
        return PORTAL.iterate(
            AsyncUsage.export_chunks(
                start=start,
                end=end,
                format=format,
                granularity=granularity,
                sandbox=sandbox,
                labels=labels,
                price_book=price_book,
                api_key=api_key,
                endpoint=endpoint,
            )
        )

    @overload
    @staticmethod
    def export(
        *,
        start: datetime | None = ...,
        end: datetime | None = ...,
        format: ExportFormat = ...,
        granularity: Granularity = ...,
        sandbox: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        price_book: str | None = ...,
        out: None = ...,
        api_key: str | None = ...,
        endpoint: str | None = ...,
    ) -> bytes: ...
    @overload
    @staticmethod
    def export(
        *,
        start: datetime | None = ...,
        end: datetime | None = ...,
        format: ExportFormat = ...,
        granularity: Granularity = ...,
        sandbox: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        price_book: str | None = ...,
        out: str | os.PathLike[str],
        api_key: str | None = ...,
        endpoint: str | None = ...,
    ) -> int: ...
    @staticmethod
    def export(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        format: ExportFormat = "csv",
        granularity: Granularity = "minute",
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        price_book: str | None = None,
        out: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> bytes | int:
        """Per-sandbox usage rows of a window as a file: the bytes, or with `out` how many were written."""
        chunks = Usage.export_chunks(
            start=start,
            end=end,
            format=format,
            granularity=granularity,
            sandbox=sandbox,
            labels=labels,
            price_book=price_book,
            api_key=api_key,
            endpoint=endpoint,
        )
        if out is None:
            return b"".join(chunks)
        written = 0
        with Path(out).open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
                written += len(chunk)
        return written

    @staticmethod
    def compare(
        *,
        shape: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sandbox: str | None = None,
        labels: Mapping[str, str] | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> CostComparison:
        """One workload (a named shape, or your usage in a window) priced under every book."""
        return PORTAL.run(
            AsyncUsage.compare(
                shape=shape, start=start, end=end, sandbox=sandbox, labels=labels, api_key=api_key, endpoint=endpoint
            )
        )

    @staticmethod
    def price_books(*, api_key: str | None = None, endpoint: str | None = None) -> list[PriceBook]:
        """The price books this installation offers."""
        return PORTAL.run(AsyncUsage.price_books(api_key=api_key, endpoint=endpoint))


__all__ = [
    "AsyncUsage",
    "Cost",
    "CostComparison",
    "ExportFormat",
    "Granularity",
    "PriceBook",
    "PriceBookCost",
    "Usage",
    "UsageBucket",
    "UsageQuantities",
    "UsageSummary",
]
