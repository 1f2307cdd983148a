"""`hutch usage ...`: what your sandboxes used and cost, exports, and price-book comparisons."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final, cast

import typer
from rich.table import Table
from rich.text import Text

from hutch.cli import _chart
from hutch.cli._shared import err, out, parse_pairs
from hutch.usage import Cost, ExportFormat, Granularity, Usage, UsageBucket, UsageSummary

app = typer.Typer(
    name="usage",
    help=(
        "Usage and cost: active CPU (what was used) beside wall-clock CPU (what was held). Without a "
        "subcommand, shows a table and a chart of the window."
    ),
    invoke_without_command=True,
)

_RELATIVE: Final = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_BAR_WIDTH: Final = 40

FROM_HELP: Final = "Start: ISO 8601 (naive = UTC), 'now', or an age such as 24h, 30m, 7d. Default: 24h."
TO_HELP: Final = "End: as --from. Default: now."


def parse_moment(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive = UTC), 'now', or an age like '24h' / '-30m' (that long ago)."""
    now = now or datetime.now(UTC)
    text = value.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative[2]]: float(relative[1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected ISO 8601, 'now' or an age like 24h, got {value!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _granularity(value: str, option: str = "--granularity") -> Granularity:
    if value not in ("minute", "hour", "day"):
        raise typer.BadParameter("expected minute, hour or day", param_hint=option)
    return cast(Granularity, value)


def _format(value: str) -> ExportFormat:
    if value not in ("csv", "jsonl", "parquet", "cloudevents"):
        raise typer.BadParameter("expected csv, jsonl, parquet or cloudevents", param_hint="--format")
    return cast(ExportFormat, value)


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    until = parse_moment(end, now) if end else now
    return (parse_moment(start, now) if start else until - timedelta(days=1)), until


def _label(moment: datetime, granularity: Granularity) -> str:
    local = moment.astimezone()
    return local.strftime("%m-%d") if granularity == "day" else local.strftime("%H:%M")


def _money(cost: Cost) -> str:
    return f"{cost.total.quantize(Decimal('0.000001')).normalize():f} {cost.currency}"


def _bar(active: float, allocated: float, peak: float) -> Text:
    held = round(_BAR_WIDTH * allocated / peak) if peak else 0
    used = min(held, round(_BAR_WIDTH * active / peak)) if peak else 0
    bar = Text()
    bar.append("█" * used, style="blue")
    bar.append("░" * (held - used), style="bright_blue")
    return bar


def _table(summary: UsageSummary, granularity: Granularity) -> Table:
    table = Table(
        "START",
        "ACTIVE vCPU-s",
        "ALLOCATED vCPU-s",
        "MEM USED GiB-s",
        "MEM PROV. GiB-s",
        "COST",
        "active █ / allocated ░",
        title=f"usage per {granularity} ({summary.price_book})",
    )
    peak = max([b.usage.cpu_allocated_seconds for b in summary.buckets] or [0.0])
    for bucket in summary.buckets:
        usage = bucket.usage
        table.add_row(
            bucket.start.astimezone().strftime("%Y-%m-%d %H:%M"),
            f"{usage.cpu_active_seconds:.2f}",
            f"{usage.cpu_allocated_seconds:.2f}",
            f"{usage.memory_used_gib_seconds:.2f}",
            f"{usage.memory_provisioned_gib_seconds:.2f}",
            _money(bucket.cost),
            _bar(usage.cpu_active_seconds, usage.cpu_allocated_seconds, peak),
        )
    return table


def _totals(summary: UsageSummary) -> Text:
    total = summary.total
    share = (
        f" ({100 * total.cpu_active_seconds / total.cpu_allocated_seconds:.1f}% of held)"
        if total.cpu_allocated_seconds
        else ""
    )
    return Text(
        f"active {total.cpu_active_seconds:.2f} vCPU-s{share}, allocated {total.cpu_allocated_seconds:.2f} vCPU-s, "
        f"memory {total.memory_used_gib_seconds:.2f} GiB-s used / {total.memory_provisioned_gib_seconds:.2f} "
        f"provisioned; cost {_money(summary.gross_cost)} - free {_money(summary.free_tier_credit)} = "
        f"{_money(summary.cost)}"
    )


def write_png(path: Path, buckets: list[UsageBucket], granularity: Granularity) -> None:
    """The active vs allocated chart of `buckets` as a PNG file."""
    points = [
        _chart.Point(_label(b.start, granularity), b.usage.cpu_active_seconds, b.usage.cpu_allocated_seconds)
        for b in buckets
    ]
    path.write_bytes(_chart.render(points, f"vcpu-seconds per {granularity}"))


@app.callback()
def show(
    ctx: typer.Context,
    start: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
    end: Annotated[str | None, typer.Option("--to", help=TO_HELP)] = None,
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="minute, hour or day.")] = "hour",
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="Only this sandbox (its id).")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Only sandboxes with this metadata KEY=VALUE; repeatable.")
    ] = None,
    price_book: Annotated[str | None, typer.Option("--price-book", "-p", help="Price in this book.")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also write the chart to this PNG file.")] = None,
) -> None:
    """Show usage and cost per period: a table, with a bar of active vs allocated CPU per row."""
    if ctx.invoked_subcommand is not None:
        return
    period = _granularity(granularity)
    since, until = _window(start, end)
    summary = Usage.query(
        start=since,
        end=until,
        granularity=period,
        sandbox=sandbox,
        labels=parse_pairs(label, "--label"),
        price_book=price_book,
    )
    out.print(_table(summary, period))
    out.print(_totals(summary))
    if png is not None:
        write_png(png, summary.buckets, period)
        err.print(f"chart written to {png}")


@app.command()
def export(
    start: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
    end: Annotated[str | None, typer.Option("--to", help=TO_HELP)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv, jsonl, parquet or cloudevents.")] = "csv",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="minute, hour or day.")] = "minute",
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="Only this sandbox (its id).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE; repeatable.")] = None,
    price_book: Annotated[str | None, typer.Option("--price-book", "-p", help="Price in this book.")] = None,
) -> None:
    """Export per-sandbox rows: CSV, JSON Lines, Parquet, or CloudEvents for OpenMeter-style systems."""
    chosen = _format(fmt)
    if chosen == "parquet" and output is None and sys.stdout.isatty():
        raise typer.BadParameter("Parquet is binary: give --out FILE or redirect stdout", param_hint="--out")
    since, until = _window(start, end)
    chunks = Usage.export_chunks(
        start=since,
        end=until,
        format=chosen,
        granularity=_granularity(granularity),
        sandbox=sandbox,
        labels=parse_pairs(label, "--label"),
        price_book=price_book,
    )
    written = 0
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    with output.open("wb") as file:
        for chunk in chunks:
            file.write(chunk)
            written += len(chunk)
    err.print(f"{written} bytes written to {output}")


@app.command()
def compare(
    shape: Annotated[
        str | None,
        typer.Option(
            "--shape", help="background-coding-agent, rl-burst or computer-use-session; without it, your real usage."
        ),
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
    end: Annotated[str | None, typer.Option("--to", help=TO_HELP)] = None,
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="Only this sandbox (its id).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE; repeatable.")] = None,
) -> None:
    """Price one workload under every price book, side by side, cheapest first."""
    since, until = _window(start, end)
    result = Usage.compare(shape=shape, start=since, end=until, sandbox=sandbox, labels=parse_pairs(label, "--label"))
    usage = result.usage
    out.print(Text(f"{result.workload}: {result.description}"))
    out.print(
        Text(
            f"active {usage.cpu_active_seconds:.2f} vCPU-s, allocated {usage.cpu_allocated_seconds:.2f} vCPU-s, "
            f"memory {usage.memory_used_gib_seconds:.2f} GiB-s used / "
            f"{usage.memory_provisioned_gib_seconds:.2f} provisioned"
        )
    )
    table = Table("PRICE BOOK", "MODEL", "CPU", "MEMORY", "STORAGE", "EGRESS", "TOTAL")
    for line in result.costs:
        cost = line.cost
        table.add_row(
            line.price_book,
            line.model,
            *(
                f"{amount.quantize(Decimal('0.000001')).normalize():f}"
                for amount in (cost.cpu, cost.memory, cost.storage, cost.egress)
            ),
            _money(cost),
        )
    out.print(table)


@app.command("price-books")
def price_books() -> None:
    """List the price books: model, rates and where their figures come from."""
    table = Table("NAME", "MODEL", "MEMORY", "vCPU-s", "GiB-s", "CPU UNIT", "SOURCE")
    for book in Usage.price_books():
        table.add_row(
            f"{book.name} (default)" if book.default else book.name,
            book.model,
            book.memory_basis,
            f"{book.rates['cpu_per_vcpu_second']:f}",
            f"{book.rates['memory_per_gib_second']:f}",
            f"{book.cpu_unit_seconds:f} s",
            Text(book.source),
        )
    out.print(table)


__all__ = ["ExportFormat", "app", "parse_moment", "write_png"]
