"""`hutch nodes`: the region's nodes, their capacity and what is free (the fleet view)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hutch import Nodes
from hutch.cli._shared import out, print_json
from hutch.cli.sandbox import duration
from hutch.nodes import NodeInfo


def heartbeat_text(node: NodeInfo, now: datetime) -> str:
    """How long ago the node last reported, and whether it is out of reach."""
    beat = "-"
    if node.last_heartbeat is not None:
        beat = f"{duration(max(0.0, (now - node.last_heartbeat).total_seconds()))} ago"
    return beat if node.alive else f"{beat} (unreachable)"


def nodes(
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Include nodes that stopped reporting (they get no new sandboxes).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the region's nodes: CPU and memory offered, allocated and free, sandboxes, classes.

    SANDBOXES counts every tenant's; MINE counts yours.
    """
    found = Nodes.list(include_unreachable=show_all)
    if json_output:
        print_json(found)
        return
    now = datetime.now(UTC)
    table = Table(
        "NODE", "CPU FREE", "CPU ALLOC", "CPU TOTAL", "MEM FREE", "MEM ALLOC", "MEM TOTAL",
        "SANDBOXES", "MINE", "CLASSES", "HEARTBEAT",
    )  # fmt: skip
    for node in found:
        beat = heartbeat_text(node, now)
        cells = (
            node.id,
            f"{node.cpu_free:g}",
            f"{node.cpu_allocated:g}",
            f"{node.cpu_total:g}",
            f"{node.memory_mb_free} MiB",
            f"{node.memory_mb_allocated} MiB",
            f"{node.memory_mb_total} MiB",
            str(node.sandboxes),
            str(len(node.own_sandbox_ids)),
            ",".join(node.isolation_classes) or "-",
            beat,
        )
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)
