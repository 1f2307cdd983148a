"""`hutch sandbox`: create, list, inspect and kill sandboxes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hutch import (
    HutchError,
    Nodes,
    NotFoundError,
    ResourceExhaustedError,
    Sandbox,
    SandboxError,
    SandboxInfo,
    SandboxState,
)
from hutch.cli._shared import EXIT_ERROR, connected, error_line, out, parse_pairs, print_json, when
from hutch.cli._waiting import waiting

app = typer.Typer(name="sandbox", help="Create, list, inspect and kill sandboxes.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def create(
    template: Annotated[
        str | None, typer.Option("--template", "-t", help="Template to start from (default: base, or the snapshot's).")
    ] = None,
    cpu: Annotated[float | None, typer.Option(help="vCPUs, e.g. 0.5 or 2 (default: 1, or the snapshot's).")] = None,
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="Memory in MiB (default: 512, or the snapshot's).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Unique name: lowercase letters, digits and '-'; usable as the id.")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Metadata pair; repeat for more."),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VALUE", help="Environment variable; repeat for more."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Lifetime in seconds; without it the sandbox lives until killed.")
    ] = None,
    isolation: Annotated[str, typer.Option(help="container, gvisor, or auto (chosen from --trust).")] = "auto",
    trust: Annotated[
        str | None, typer.Option(help="trusted or untrusted (untrusted code gets gVisor under auto).")
    ] = None,
    snapshot: Annotated[
        str | None,
        typer.Option(help="Start from this snapshot (id or name): its files, and under gVisor its processes."),
    ] = None,
    auto_sleep_after: Annotated[
        float | None,
        typer.Option(help="Sleep after this many idle seconds (state kept; the next request wakes it)."),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(help="Region to run it in (default: this gateway's, or the nearest with room)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a sandbox and print its id once it runs."""
    with waiting(f"starting from snapshot {snapshot}" if snapshot else "starting"):
        sandbox = Sandbox.create(
            template=template,
            cpu=cpu,
            memory_mb=memory_mb,
            name=name,
            metadata=parse_pairs(metadata, "--metadata"),
            envs=parse_pairs(env, "--env"),
            timeout=timeout,
            isolation=isolation,
            trust=trust,
            snapshot=snapshot,
            auto_sleep_after=auto_sleep_after,
            region=region,
        )
    try:
        if json_output:
            print_json(sandbox.get_info())
        else:
            out.print(sandbox.id)
    finally:
        sandbox.close()


@app.command("list")
def list_sandboxes(
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Only sandboxes with this pair; repeatable."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Include killed and failed sandboxes.")] = False,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", "-s", help="Only sandboxes in this state (running, paused, ...); repeatable."),
    ] = None,
    all_regions: Annotated[
        bool, typer.Option("--all-regions", help="Every region's sandboxes, with a REGION column.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """List sandboxes, live ones only unless --all or --state is given.

    UP is how long a running sandbox has been running since it first started; IDLE is how long
    since it was last in use (an API call or connection to it, or CPU above 5% of a vCPU). NODE is
    shown for the sandboxes of the region called.
    """
    states: list[SandboxState | str] | None = list(state) if state else None
    if show_all and not states:
        states = [s for s in SandboxState if s is not SandboxState.UNSPECIFIED]
    sandboxes = Sandbox.list(metadata=parse_pairs(metadata, "--metadata"), states=states, all_regions=all_regions)
    if json_output:
        print_json(sandboxes)
        return
    node_of = _nodes_of_own_sandboxes() if any(i.state is SandboxState.RUNNING for i in sandboxes) else {}
    now = datetime.now(UTC)
    columns = ["ID", "NAME", "STATE", *(["REGION"] if all_regions else []), "NODE", "CLASS", "CPU", "MEMORY"]
    table = Table(*columns, "UP", "IDLE", "CREATED", "METADATA")
    for info in sandboxes:
        cells = (
            info.id,
            info.name or "-",
            _state(info),
            *([info.region or "-"] if all_regions else []),
            # Nodes are listed for the region called only.
            node_of.get(info.id, "-"),
            info.isolation or "-",
            f"{info.cpu:g}",
            f"{info.memory_mb} MiB",
            _up(info, now),
            _idle(info, now),
            when(info.created_at),
            " ".join(f"{key}={value}" for key, value in sorted(info.metadata.items())) or "-",
        )
        # Text, not str: names and metadata are the user's and must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


@app.command()
def get(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    json_output: JsonOption = False,
) -> None:
    """Show one sandbox."""
    info = Sandbox.get_info(sandbox)
    if json_output:
        print_json(info)
        return
    table = Table.grid(padding=(0, 2))
    rows = [
        ("id", info.id),
        ("name", info.name or "-"),
        ("template", info.template),
        ("state", _state(info)),
        ("cpu", f"{info.cpu:g} vCPU"),
        ("memory", f"{info.memory_mb} MiB"),
        ("region", info.region or "-"),
        ("isolation", info.isolation or "-"),
        ("created", when(info.created_at)),
        ("started", when(info.started_at)),
        ("ended", when(info.ended_at)),
        ("timeout", f"{info.timeout} s" if info.timeout else "none"),
        ("expires", when(info.expires_at)),
        ("idle", _idle(info, datetime.now(UTC))),
        ("public ports", " ".join(str(port) for port in info.public_ports) or "-"),
    ]
    rows.extend((f"metadata.{key}", value) for key, value in sorted(info.metadata.items()))
    for key, value in rows:
        table.add_row(Text(key, style="bold"), Text(value))
    out.print(table)


@app.command()
def kill(
    sandboxes: Annotated[list[str], typer.Argument(metavar="SANDBOX", help="Sandbox ids or names.")],
) -> None:
    """Kill sandboxes, printing each id once it has stopped.

    Goes on with the others when one is already killed or does not exist, and then exits with 1.
    """
    failed = False
    for sandbox in sandboxes:
        try:
            info = Sandbox.kill(sandbox)
        except (NotFoundError, SandboxError) as exc:
            error_line(exc.message)
            failed = True
        else:
            out.print(info.id)
    if failed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def pause(
    sandboxes: Annotated[list[str], typer.Argument(metavar="SANDBOX", help="Sandbox ids or names.")],
) -> None:
    """Pause sandboxes: snapshot each and free its CPU and memory until it is resumed.

    Prints each id once paused. Goes on with the others when one cannot be paused, then exits with 1.
    """
    _each(sandboxes, "pausing", Sandbox.pause)


@app.command()
def resume(
    sandboxes: Annotated[list[str], typer.Argument(metavar="SANDBOX", help="Sandbox ids or names.")],
) -> None:
    """Resume paused sandboxes, printing each id once it runs again.

    Goes on with the others when one cannot be resumed, then exits with 1.
    """
    _each(sandboxes, "resuming", Sandbox.resume)


def _each(sandboxes: list[str], doing: str, action: Callable[[str], SandboxInfo]) -> None:
    failed = False
    for sandbox in sandboxes:
        try:
            with waiting(f"{doing} {sandbox}"):
                info = action(sandbox)
        except (NotFoundError, SandboxError, ResourceExhaustedError) as exc:
            error_line(exc.message)
            failed = True
        else:
            out.print(info.id)
    if failed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def fork(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=100, help="How many children.")] = 1,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Added to each child's metadata; repeatable."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Fork a running sandbox into new ones that start with its state; print their ids once they run.

    Each child gets a copy of the files (under gVisor also of the running processes). All or
    nothing: if one cannot start, none is kept.
    """
    extra = parse_pairs(metadata, "--metadata")
    with connected(sandbox) as parent, waiting(f"forking {sandbox} into {count}"):
        children = parent.fork(count, extra)
    try:
        if json_output:
            print_json([child.get_info() for child in children])
        else:
            for child in children:
                out.print(child.id)
    finally:
        for child in children:
            child.close()


def _nodes_of_own_sandboxes() -> dict[str, str]:
    """Which node runs each of the caller's running sandboxes (from the fleet view); empty when the
    gateway cannot say."""
    try:
        nodes = Nodes.list()
    except HutchError:
        return {}
    return {sandbox_id: node.id for node in nodes for sandbox_id in node.own_sandbox_ids}


def _up(info: SandboxInfo, now: datetime) -> str:
    if info.state is not SandboxState.RUNNING or info.started_at is None:
        return "-"
    return duration(max(0.0, (now - info.started_at).total_seconds()))


def _idle(info: SandboxInfo, now: datetime) -> str:
    if info.state is not SandboxState.RUNNING or info.idle_since is None:
        return "-"
    return duration(max(0.0, (now - info.idle_since).total_seconds()))


def duration(seconds: float) -> str:
    """A short human duration: 42s, 5m12s, 3h04m, 2d05h."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _state(info: SandboxInfo) -> str:
    # The reason says why a sandbox failed or was killed, which is what one looks for first.
    return f"{info.state} ({info.state_reason})" if info.state_reason else str(info.state)


def parse_lifetime(value: str) -> float | None:
    """SECONDS or "none" (also 0, "off"): the new lifetime, None for no timeout.

    Raises:
        typer.BadParameter: It is neither (exit status 2).
    """
    text = value.strip().lower()
    if text in ("none", "off", "0"):
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 2**32:
        raise typer.BadParameter(f"expected a positive number of seconds or none, got {value!r}", param_hint="SECONDS")
    return seconds


@app.command()
def resize(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    cpu: Annotated[float | None, typer.Option(help="New vCPUs, e.g. 0.5 or 2 (default: unchanged).")] = None,
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="New memory in MiB (default: unchanged).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a running sandbox's CPU and memory in place; its processes keep running."""
    if cpu is None and memory_mb is None:
        raise typer.BadParameter("give --cpu, --memory-mb or both", param_hint="--cpu/--memory-mb")
    with connected(sandbox) as box:
        info = box.resize(cpu=cpu, memory_mb=memory_mb)
    if json_output:
        print_json(info)
    else:
        out.print(f"{info.id} {info.cpu:g} vCPU {info.memory_mb} MiB")


@app.command("set-timeout")
def set_timeout(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    seconds: Annotated[
        str, typer.Argument(metavar="SECONDS|none", help="Seconds from now until it is killed, or none.")
    ],
) -> None:
    """Set how long a sandbox may still live, counted from now; `none` lets it live until killed."""
    lifetime = parse_lifetime(seconds)
    with connected(sandbox) as box:
        info = box.set_timeout(lifetime)
    out.print(f"{info.id} expires {when(info.expires_at)}" if info.expires_at else f"{info.id} lives until killed")
