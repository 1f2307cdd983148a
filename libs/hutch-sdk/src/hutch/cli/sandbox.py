"""`hutch sandbox`: create, list, inspect and kill sandboxes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hutch import NotFoundError, Sandbox, SandboxError, SandboxInfo, SandboxState
from hutch.cli._shared import EXIT_ERROR, error_line, out, parse_pairs, print_json, when

app = typer.Typer(name="sandbox", help="Create, list, inspect and kill sandboxes.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def create(
    template: Annotated[str, typer.Option("--template", "-t", help="Template to start from.")] = "base",
    cpu: Annotated[float, typer.Option(help="vCPUs, e.g. 0.5 or 2.")] = 1.0,
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Memory in MiB.")] = 512,
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
    json_output: JsonOption = False,
) -> None:
    """Create a sandbox and print its id once it runs."""
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
    json_output: JsonOption = False,
) -> None:
    """List sandboxes, live ones only unless --all is given."""
    states = [state for state in SandboxState if state is not SandboxState.UNSPECIFIED] if show_all else None
    sandboxes = Sandbox.list(metadata=parse_pairs(metadata, "--metadata"), states=states)
    if json_output:
        print_json(sandboxes)
        return
    table = Table("ID", "NAME", "TEMPLATE", "STATE", "CLASS", "CPU", "MEMORY", "CREATED", "METADATA")
    for info in sandboxes:
        cells = (
            info.id,
            info.name or "-",
            info.template,
            _state(info),
            info.isolation or "-",
            f"{info.cpu:g}",
            f"{info.memory_mb} MiB",
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


def _state(info: SandboxInfo) -> str:
    # The reason says why a sandbox failed or was killed, which is what one looks for first.
    return f"{info.state} ({info.state_reason})" if info.state_reason else str(info.state)
