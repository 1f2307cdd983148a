"""`hutch top`: a live view of the fleet: the region's nodes and your sandboxes, refreshed in place."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hutch import Nodes, Sandbox, SandboxInfo, SandboxState
from hutch.cli._shared import out
from hutch.cli.nodes import heartbeat_text
from hutch.cli.sandbox import duration
from hutch.exceptions import HutchError
from hutch.nodes import NodeInfo

# The states a sandbox holds (or will hold) CPU and memory in.
_HOLDING = (SandboxState.PENDING, SandboxState.RUNNING, SandboxState.STOPPING)


def _share(used: float, total: float) -> str:
    return f"{used / total:.0%}" if total > 0 else "-"


def _nodes_table(nodes: list[NodeInfo], now: datetime) -> Table:
    table = Table(
        "NODE", "CPU ALLOC/TOTAL", "CPU %", "MEM ALLOC/TOTAL", "MEM %", "SANDBOXES", "MINE", "HEARTBEAT",
        title="nodes", title_justify="left",
    )  # fmt: skip
    for node in nodes:
        beat = heartbeat_text(node, now)
        cells = (
            node.id,
            f"{node.cpu_allocated:g}/{node.cpu_total:g}",
            _share(node.cpu_allocated, node.cpu_total),
            f"{node.memory_mb_allocated}/{node.memory_mb_total} MiB",
            _share(node.memory_mb_allocated, node.memory_mb_total),
            str(node.sandboxes),
            str(len(node.own_sandbox_ids)),
            beat,
        )
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _sandboxes_table(sandboxes: list[SandboxInfo], node_of: dict[str, str], now: datetime, limit: int) -> Table:
    by_state = Counter(str(info.state) for info in sandboxes)
    holding = [info for info in sandboxes if info.state in _HOLDING]
    summary = ", ".join(f"{count} {state}" for state, count in sorted(by_state.items())) or "none"
    title = (
        f"your sandboxes: {summary}; holding {sum(i.cpu for i in holding):g} vCPU, "
        f"{sum(i.memory_mb for i in holding)} MiB"
    )
    table = Table("ID", "NAME", "STATE", "NODE", "CPU", "MEMORY", "UP", title=title, title_justify="left")
    # Running first, then the rest; newest first within each state.
    ordered = sorted(
        sandboxes,
        key=lambda i: (
            i.state is not SandboxState.RUNNING,
            str(i.state),
            -(i.created_at.timestamp() if i.created_at else 0.0),
        ),
    )
    for info in ordered[:limit]:
        up = "-"
        if info.state is SandboxState.RUNNING and info.started_at is not None:
            up = duration(max(0.0, (now - info.started_at).total_seconds()))
        cells = (
            info.id,
            info.name or "-",
            str(info.state),
            node_of.get(info.id, "-"),
            f"{info.cpu:g}",
            f"{info.memory_mb} MiB",
            up,
        )
        table.add_row(*(Text(cell) for cell in cells))
    if len(ordered) > limit:
        table.caption = f"{len(ordered) - limit} more not shown (--limit)"
    return table


def frame(limit: int = 20, include_unreachable: bool = False) -> Group:
    """One picture of the fleet: the nodes, then the caller's live sandboxes (two requests)."""
    nodes = Nodes.list(include_unreachable=include_unreachable)
    sandboxes = Sandbox.list()
    now = datetime.now(UTC)
    node_of = {sandbox_id: node.id for node in nodes for sandbox_id in node.own_sandbox_ids}
    header = Text(f"hutch top - {now.astimezone():%H:%M:%S}", style="bold")
    return Group(header, _nodes_table(nodes, now), _sandboxes_table(sandboxes, node_of, now, limit))


def top(
    interval: Annotated[float, typer.Option("--interval", "-n", min=0.2, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit (for scripts).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many sandboxes.")] = 20,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Include nodes that stopped reporting.")] = False,
) -> None:
    """A live view of the fleet: each node's CPU and memory allocated against its total and its
    sandboxes, and your live sandboxes by state with their resources. Ctrl-C quits.
    """
    if once:
        out.print(frame(limit, show_all))
        return
    last = frame(limit, show_all)
    with Live(last, console=out, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    last = frame(limit, show_all)
                    live.update(last, refresh=True)
                except HutchError as exc:  # keep the last picture and say why it is not fresh
                    live.update(Group(last, Text(f"refresh failed: {exc.message}", style="red")), refresh=True)
        except KeyboardInterrupt:
            return
