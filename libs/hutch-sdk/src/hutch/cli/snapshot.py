"""`hutch snapshot`: take, list, inspect, copy and delete snapshots."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hutch import NotFoundError, SandboxError, Snapshot, SnapshotInfo
from hutch.cli._shared import EXIT_ERROR, error_line, out, parse_pairs, print_json, when
from hutch.cli._waiting import size, waiting

app = typer.Typer(name="snapshot", help="Take, list, inspect, copy and delete snapshots.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PURPOSES = ("user", "pause", "fork")


@app.command()
def create(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    name: Annotated[
        str | None, typer.Option(help="Unique name: lowercase letters, digits and '-'; usable as the id.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE", help="Label pair; repeat for more."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Snapshot a running sandbox (it keeps running) and print the snapshot's id once it is stored."""
    labels = parse_pairs(label, "--label")
    with waiting(f"snapshotting {sandbox}"):
        info = Snapshot.create(sandbox, name=name, labels=labels)
    if json_output:
        print_json(info)
    else:
        out.print(info.id)


@app.command("list")
def list_snapshots(
    sandbox: Annotated[str | None, typer.Option(help="Only snapshots of this sandbox (id or name).")] = None,
    purpose: Annotated[
        list[str] | None,
        typer.Option(help="Only these: user (taken with `snapshot create`), pause, fork; repeatable."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Include pause and fork snapshots.")] = False,
    json_output: JsonOption = False,
) -> None:
    """List snapshots, newest first: those taken with `snapshot create` unless told otherwise."""
    for value in purpose or ():
        if value not in PURPOSES:
            raise typer.BadParameter(f"expected one of {', '.join(PURPOSES)}, got {value!r}", param_hint="--purpose")
    snapshots = Snapshot.list(sandbox=sandbox, purposes=PURPOSES if show_all else purpose)
    if json_output:
        print_json(snapshots)
        return
    table = Table("ID", "NAME", "SANDBOX", "KIND", "PURPOSE", "TEMPLATE", "SIZE", "STORED", "CREATED", "LABELS")
    for info in snapshots:
        cells = (
            info.id,
            info.name or "-",
            info.sandbox_id or "-",
            info.kind,
            info.purpose,
            info.template or "-",
            size(info.size_bytes),
            size(info.stored_bytes),
            when(info.created_at),
            _labels(info) or "-",
        )
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


@app.command()
def get(
    snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id or name.")],
    json_output: JsonOption = False,
) -> None:
    """Show one snapshot."""
    info = Snapshot.get(snapshot)
    if json_output:
        print_json(info)
        return
    table = Table.grid(padding=(0, 2))
    rows = [
        ("id", info.id),
        ("name", info.name or "-"),
        ("sandbox", info.sandbox_id or "-"),
        ("kind", info.kind),
        ("purpose", info.purpose),
        ("template", info.template or "-"),
        ("isolation", info.isolation or "-"),
        ("size", size(info.size_bytes)),
        ("stored", size(info.stored_bytes)),
        ("created", when(info.created_at)),
        ("region", info.region or "-"),
    ]
    rows.extend((f"label.{key}", value) for key, value in sorted(info.labels.items()))
    for key, value in rows:
        table.add_row(Text(key, style="bold"), Text(value))
    out.print(table)


@app.command()
def copy(
    snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id or name.")],
    to_region: Annotated[
        str | None, typer.Option("--to", metavar="REGION", help="Where the copy goes (default: this gateway's).")
    ] = None,
    from_region: Annotated[
        str | None, typer.Option("--from", metavar="REGION", help="Where the snapshot is (default: this gateway's).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Copy a snapshot to another region, where `hutch sandbox create --snapshot` can then use it."""
    with waiting(f"copying {snapshot} to {to_region or 'this region'}"):
        info = Snapshot.copy(snapshot, to_region, from_region=from_region)
    if json_output:
        print_json(info)
    else:
        out.print(f"{info.id} in {info.region}")


@app.command()
def delete(
    snapshots: Annotated[list[str], typer.Argument(metavar="SNAPSHOT", help="Snapshot ids or names.")],
) -> None:
    """Delete snapshots, printing each id once deleted.

    Goes on with the others when one cannot be deleted (unknown, or holding a paused sandbox), and
    then exits with 1.
    """
    failed = False
    for snapshot in snapshots:
        try:
            Snapshot.delete(snapshot)
        except (NotFoundError, SandboxError) as exc:
            error_line(exc.message)
            failed = True
        else:
            out.print(snapshot)
    if failed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def usage(json_output: JsonOption = False) -> None:
    """What your snapshots hold and take up."""
    info = Snapshot.usage()
    if json_output:
        print_json(info)
        return
    table = Table.grid(padding=(0, 2))
    for key, value in (
        ("snapshots", str(info.snapshots)),
        ("size", size(info.logical_bytes)),
        ("stored", size(info.stored_bytes)),
        ("cached", size(info.cached_bytes)),
    ):
        table.add_row(Text(key, style="bold"), Text(value))
    out.print(table)


def _labels(info: SnapshotInfo) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(info.labels.items()))
