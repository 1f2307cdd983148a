"""Rows of usage as flat records, for files and for CloudEvents.

One record is one sandbox in one bucket. Quantities are in billing units (vCPU-seconds, GiB-seconds,
GB-hours, GB); amounts are decimal strings so money is never rounded through floating point.

CloudEvents follow the 1.0 JSON format that OpenMeter-style systems ingest: `subject` is the tenant
(the customer being metered) and `id` is derived from tenant, sandbox, granularity and bucket, so
exporting the same closed bucket twice gives the same id and the receiver drops the second copy.
Export closed buckets only: a bucket that is still filling would be sent again with the same id and
a larger value, which such a receiver drops too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from hutch_billing_meter.domain.pricing import PriceBook, PricedRow, money

CLOUDEVENTS_SPEC_VERSION: Final = "1.0"
CLOUDEVENT_TYPE: Final = "dev.hutch.usage"

QUANTITY_COLUMNS: Final = (
    "running_seconds",
    "cpu_active_seconds",
    "cpu_allocated_seconds",
    "memory_provisioned_gib_seconds",
    "memory_used_gib_seconds",
    "memory_peak_gib",
    "storage_gb_hours",
    "egress_gb",
)
COST_COLUMNS: Final = ("cost_cpu", "cost_memory", "cost_storage", "cost_egress", "cost_total")
COLUMNS: Final = (
    "window_start",
    "window_end",
    "tenant_id",
    "sandbox_id",
    "labels",
    *QUANTITY_COLUMNS,
    "price_book",
    "currency",
    *COST_COLUMNS,
)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantities(row: PricedRow) -> dict[str, float]:
    usage = row.usage
    return {
        "running_seconds": float(usage.running_seconds),
        "cpu_active_seconds": float(usage.cpu_active_seconds),
        "cpu_allocated_seconds": float(usage.cpu_allocated_seconds),
        "memory_provisioned_gib_seconds": float(usage.memory_provisioned_gib_seconds),
        "memory_used_gib_seconds": float(usage.memory_used_gib_seconds),
        "memory_peak_gib": float(usage.memory_peak_gib),
        "storage_gb_hours": float(usage.storage_gb_hours),
        "egress_gb": float(usage.egress_gb),
    }


def costs(row: PricedRow) -> dict[str, str]:
    gross = row.gross
    return {
        "cost_cpu": money(gross.cpu),
        "cost_memory": money(gross.memory),
        "cost_storage": money(gross.storage),
        "cost_egress": money(gross.egress),
        "cost_total": money(gross.total),
    }


def record(row: PricedRow, tenant_id: str, step: timedelta, book: PriceBook) -> dict[str, Any]:
    """The flat record of one row; costs are gross (free allowances are a property of a whole bill)."""
    return {
        "window_start": rfc3339(row.start),
        "window_end": rfc3339(row.start + step),
        "tenant_id": tenant_id,
        "sandbox_id": row.sandbox_id,
        "labels": dict(row.labels),
        **quantities(row),
        "price_book": book.name,
        "currency": book.currency,
        **costs(row),
    }


def cloudevent(row: PricedRow, tenant_id: str, step: timedelta, granularity: str, region: str) -> dict[str, Any]:
    """One row as a CloudEvents 1.0 JSON object."""
    return {
        "specversion": CLOUDEVENTS_SPEC_VERSION,
        "id": f"{tenant_id}/{row.sandbox_id or '-'}/{granularity}/{rfc3339(row.start)}",
        "source": f"hutch://{region}/billing-meter",
        "type": CLOUDEVENT_TYPE,
        "subject": tenant_id,
        "time": rfc3339(row.start),
        "datacontenttype": "application/json",
        "data": {
            "sandbox_id": row.sandbox_id,
            "window_start": rfc3339(row.start),
            "window_end": rfc3339(row.start + step),
            "labels": dict(row.labels),
            **quantities(row),
        },
    }
