"""Export records and their formats: CloudEvents shape, CSV, JSON Lines and Parquet parse back."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.domain.presets import CLOUDFLARE
from hutch_billing_meter.domain.pricing import PricedRow, UsageRow, price_rows
from hutch_billing_meter.domain.quantities import Usage
from hutch_billing_meter.domain.records import cloudevent
from hutch_billing_meter.exports import ExportContext, ExportFormat, encode

S = 1_000_000_000
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def rows() -> list[PricedRow]:
    return price_rows(
        [
            UsageRow(T0, "sb-a", Usage(running_ms=60_000, cpu_active_ns=3 * S, cpu_allocated_ns=60 * S), {"team": "x"}),
            UsageRow(T0 + timedelta(minutes=1), "sb-a", Usage(running_ms=30_000, cpu_active_ns=S // 2)),
            UsageRow(T0, "sb-b", Usage(running_ms=60_000, cpu_active_ns=S, cpu_allocated_ns=120 * S)),
        ],
        CLOUDFLARE,
    )


def test_a_cloudevent_has_the_1_0_attributes_and_a_deterministic_id() -> None:
    row = rows()[0]
    event = cloudevent(row, "tn-1", timedelta(minutes=1), "minute", "local")
    assert set(event) >= {"specversion", "id", "source", "type", "subject", "time", "data"}
    assert event["specversion"] == "1.0"
    assert event["subject"] == "tn-1"
    assert event["time"] == "2026-03-01T10:00:00Z"
    assert event["source"] == "hutch://local/billing-meter"
    assert event["data"]["cpu_active_seconds"] == 3.0
    assert event["data"]["labels"] == {"team": "x"}
    assert event == cloudevent(row, "tn-1", timedelta(minutes=1), "minute", "local")
    other = cloudevent(rows()[1], "tn-1", timedelta(minutes=1), "minute", "local")
    assert other["id"] != event["id"]


async def export(fmt: ExportFormat) -> bytes:
    async def batches() -> AsyncIterator[list[PricedRow]]:
        all_rows = rows()
        yield all_rows[:2]
        yield all_rows[2:]

    context = ExportContext("tn-1", CLOUDFLARE, Granularity.MINUTE, "local")
    return b"".join([piece async for piece in encode(batches(), fmt, context)])


def active_total(values: list[float]) -> float:
    return round(sum(values), 9)


async def test_csv_parses_back_to_the_same_totals() -> None:
    records = list(csv.DictReader(io.StringIO((await export(ExportFormat.CSV)).decode())))
    assert len(records) == 3
    assert active_total([float(r["cpu_active_seconds"]) for r in records]) == 4.5
    assert json.loads(records[0]["labels"]) == {"team": "x"}
    assert records[0]["price_book"] == "cloudflare"


async def test_jsonl_parses_back_to_the_same_totals() -> None:
    records = [json.loads(line) for line in (await export(ExportFormat.JSONL)).decode().splitlines()]
    assert active_total([r["cpu_active_seconds"] for r in records]) == 4.5
    assert active_total([r["cpu_allocated_seconds"] for r in records]) == 180.0


async def test_parquet_parses_back_to_the_same_totals() -> None:
    table = pq.read_table(io.BytesIO(await export(ExportFormat.PARQUET)))
    assert table.num_rows == 3
    assert active_total(table.column("cpu_active_seconds").to_pylist()) == 4.5
    assert str(table.schema.field("cost_total").type) == "decimal128(38, 9)"


async def test_cloudevents_are_one_json_object_a_line() -> None:
    lines = (await export(ExportFormat.CLOUDEVENTS)).decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert len({e["id"] for e in events}) == 3
    assert active_total([e["data"]["cpu_active_seconds"] for e in events]) == 4.5


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_an_empty_export_is_still_a_valid_file(fmt: ExportFormat) -> None:
    async def nothing() -> AsyncIterator[list[PricedRow]]:
        return
        yield []

    context = ExportContext("tn-1", CLOUDFLARE, Granularity.MINUTE, "local")
    data = b"".join([piece async for piece in encode(nothing(), fmt, context)])
    if fmt is ExportFormat.PARQUET:
        assert pq.read_table(io.BytesIO(data)).num_rows == 0
    elif fmt is ExportFormat.CSV:
        assert data.decode().startswith("window_start,")
    else:
        assert data == b""
