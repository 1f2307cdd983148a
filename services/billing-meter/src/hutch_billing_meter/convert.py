"""Between the domain's types and the hutch.v1 Usage messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.v1 import usage_pb2
from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.domain.pricing import Cost, PriceBook, money
from hutch_billing_meter.domain.quantities import Usage
from hutch_billing_meter.exports import ExportFormat
from hutch_billing_meter.service import UsageFilter

GRANULARITIES: dict[int, Granularity] = {
    usage_pb2.GRANULARITY_MINUTE: Granularity.MINUTE,
    usage_pb2.GRANULARITY_HOUR: Granularity.HOUR,
    usage_pb2.GRANULARITY_DAY: Granularity.DAY,
}

FORMATS: dict[int, ExportFormat] = {
    usage_pb2.EXPORT_FORMAT_UNSPECIFIED: ExportFormat.CSV,
    usage_pb2.EXPORT_FORMAT_CSV: ExportFormat.CSV,
    usage_pb2.EXPORT_FORMAT_JSONL: ExportFormat.JSONL,
    usage_pb2.EXPORT_FORMAT_PARQUET: ExportFormat.PARQUET,
    usage_pb2.EXPORT_FORMAT_CLOUDEVENTS: ExportFormat.CLOUDEVENTS,
}


def granularity(value: int, default: Granularity) -> Granularity:
    if value == usage_pb2.GRANULARITY_UNSPECIFIED:
        return default
    found = GRANULARITIES.get(value)
    if found is None:
        raise errors.InvalidArgument(f"unknown granularity {value}")
    return found


def export_format(value: int) -> ExportFormat:
    found = FORMATS.get(value)
    if found is None:
        raise errors.InvalidArgument(f"unknown export format {value}")
    return found


def _moment(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def usage_filter(selector: usage_pb2.UsageSelector) -> UsageFilter:
    return UsageFilter(
        start=_moment(selector.start, selector.HasField("start")),
        end=_moment(selector.end, selector.HasField("end")),
        sandbox_id=selector.sandbox_id,
        labels=dict(selector.labels),
    )


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def quantities(usage: Usage) -> usage_pb2.UsageQuantities:
    return usage_pb2.UsageQuantities(
        running_seconds=float(usage.running_seconds),
        cpu_active_seconds=float(usage.cpu_active_seconds),
        cpu_allocated_seconds=float(usage.cpu_allocated_seconds),
        memory_provisioned_gib_seconds=float(usage.memory_provisioned_gib_seconds),
        memory_used_gib_seconds=float(usage.memory_used_gib_seconds),
        memory_peak_gib=float(usage.memory_peak_gib),
        storage_gb_hours=float(usage.storage_gb_hours),
        egress_gb=float(usage.egress_gb),
    )


def cost(amounts: Cost, currency: str) -> usage_pb2.Cost:
    return usage_pb2.Cost(
        currency=currency,
        cpu=money(amounts.cpu),
        memory=money(amounts.memory),
        storage=money(amounts.storage),
        egress=money(amounts.egress),
        total=money(amounts.total),
    )


def _rate(value: object) -> str:
    return format(value, "f")


def price_book(book: PriceBook) -> usage_pb2.PriceBook:
    rates, free = book.rates, book.free_per_month
    return usage_pb2.PriceBook(
        name=book.name,
        description=book.description,
        model=book.model.value,
        memory_basis=book.memory_basis.value,
        currency=book.currency,
        cpu_per_vcpu_second=_rate(rates.cpu_per_vcpu_second.normalize()),
        memory_per_gib_second=_rate(rates.memory_per_gib_second.normalize()),
        storage_per_gb_hour=_rate(rates.storage_per_gb_hour.normalize()),
        egress_per_gb=_rate(rates.egress_per_gb.normalize()),
        cpu_unit_seconds=_rate(book.cpu_unit_seconds.normalize()),
        memory_minimum_gib=_rate(book.memory_minimum_gib.normalize()),
        free_cpu_vcpu_seconds=_rate(free.cpu.normalize()),
        free_memory_gib_seconds=_rate(free.memory.normalize()),
        free_storage_gb_hours=_rate(free.storage.normalize()),
        free_egress_gb=_rate(free.egress.normalize()),
        source=book.source,
    )
