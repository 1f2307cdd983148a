"""Usage rows as files: CSV, JSON Lines, Parquet, and CloudEvents as JSON lines.

Each format is produced a batch of rows at a time, so an export of a long window is streamed to
the caller without ever being held whole in memory.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hutch_billing_meter.domain import records
from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.domain.pricing import PriceBook, PricedRow


class ExportFormat(enum.Enum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"
    CLOUDEVENTS = "cloudevents"

    @property
    def content_type(self) -> str:
        return {
            ExportFormat.CSV: "text/csv",
            ExportFormat.JSONL: "application/x-ndjson",
            ExportFormat.PARQUET: "application/vnd.apache.parquet",
            ExportFormat.CLOUDEVENTS: "application/cloudevents+json; charset=utf-8; format=jsonl",
        }[self]


@dataclass(frozen=True)
class ExportContext:
    tenant_id: str
    book: PriceBook
    granularity: Granularity
    region: str


async def encode(
    batches: AsyncIterator[list[PricedRow]], fmt: ExportFormat, context: ExportContext
) -> AsyncIterator[bytes]:
    """The export's bytes, a piece per batch of rows."""
    if fmt is ExportFormat.PARQUET:
        async for piece in _parquet(batches, context):
            yield piece
        return
    if fmt is ExportFormat.CSV:
        yield _csv_line(list(records.COLUMNS)).encode()
    async for batch in batches:
        yield _text(batch, fmt, context)


def _text(batch: list[PricedRow], fmt: ExportFormat, context: ExportContext) -> bytes:
    step = context.granularity.step
    lines = []
    for row in batch:
        if fmt is ExportFormat.CLOUDEVENTS:
            event = records.cloudevent(row, context.tenant_id, step, context.granularity.value, context.region)
            lines.append(json.dumps(event, separators=(",", ":")) + "\n")
        elif fmt is ExportFormat.JSONL:
            lines.append(json.dumps(records.record(row, context.tenant_id, step, context.book)) + "\n")
        else:
            record = records.record(row, context.tenant_id, step, context.book)
            record["labels"] = json.dumps(record["labels"], sort_keys=True)
            lines.append(_csv_line([record[column] for column in records.COLUMNS]))
    return "".join(lines).encode()


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


_MONEY = pa.decimal128(38, 9)

PARQUET_SCHEMA = pa.schema(
    [
        pa.field("window_start", pa.timestamp("s", tz="UTC")),
        pa.field("window_end", pa.timestamp("s", tz="UTC")),
        pa.field("tenant_id", pa.string()),
        pa.field("sandbox_id", pa.string()),
        # JSON text: the sandbox's metadata.
        pa.field("labels", pa.string()),
        *(pa.field(name, pa.float64()) for name in records.QUANTITY_COLUMNS),
        pa.field("price_book", pa.string()),
        pa.field("currency", pa.string()),
        *(pa.field(name, _MONEY) for name in records.COST_COLUMNS),
    ]
)


class _Sink(io.RawIOBase):
    """A write-only file that hands out what was written since the last `take()`."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self._pieces.append(piece)
        self._position += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        taken, self._pieces = b"".join(self._pieces), []
        return taken


def _table(batch: list[PricedRow], context: ExportContext) -> pa.Table:
    step = context.granularity.step
    columns: dict[str, list[Any]] = {field.name: [] for field in PARQUET_SCHEMA}
    for row in batch:
        record = records.record(row, context.tenant_id, step, context.book)
        record["window_start"] = row.start.astimezone(UTC)
        record["window_end"] = (row.start + step).astimezone(UTC)
        record["labels"] = json.dumps(record["labels"], sort_keys=True)
        for name in records.COST_COLUMNS:
            record[name] = Decimal(record[name])
        for name, values in columns.items():
            values.append(record[name])
    return pa.Table.from_pydict(columns, schema=PARQUET_SCHEMA)


async def _parquet(batches: AsyncIterator[list[PricedRow]], context: ExportContext) -> AsyncIterator[bytes]:
    sink = _Sink()
    writer = pq.ParquetWriter(sink, PARQUET_SCHEMA)
    try:
        async for batch in batches:
            # Encoding and compressing a row group is CPU work: off the event loop.
            await asyncio.to_thread(writer.write_table, _table(batch, context))
            piece = sink.take()
            if piece:
                yield piece
    finally:
        writer.close()
    yield sink.take()
