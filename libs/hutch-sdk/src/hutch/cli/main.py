"""The `hutch` command: sandboxes, commands and files from the terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Annotated

import typer

from hutch.cli import files, local, network, nodes, processes, sandbox, secret, shell, snapshot, template, top, usage
from hutch.cli._shared import EXIT_CODES_HELP, error_line, exit_code_for
from hutch.cli.execute import HELP as EXEC_HELP
from hutch.cli.execute import exec_command
from hutch.cli.preview import preview
from hutch.exceptions import HutchError


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hutch {metadata.version('hutch-sdk')}")
        raise typer.Exit()


app = typer.Typer(
    name="hutch",
    help=(
        "Hutch: a computer for every AI agent. The API key and gateway address come from "
        "HUTCH_API_KEY and HUTCH_ENDPOINT, else from ~/.hutch/config.json, which `hutch local up` writes."
    ),
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Hutch: a computer for every AI agent."""


sandbox.app.command("network")(network.network)
sandbox.app.command("egress")(network.egress)
app.add_typer(sandbox.app)
app.command("exec", help=EXEC_HELP)(exec_command)
app.command("shell", help=shell.HELP)(shell.shell_command)
app.command("ps")(processes.ps)
app.command("attach", help=processes.ATTACH_HELP)(processes.attach)
app.command("kill-process", help=processes.KILL_HELP)(processes.kill_process)
app.command("preview")(preview)
app.command("nodes")(nodes.nodes)
app.command("top")(top.top)
app.add_typer(files.app)
app.add_typer(template.app)
app.add_typer(snapshot.app)
app.add_typer(usage.app)
app.add_typer(secret.app)
local.mount(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the `hutch` command (the console script's entry point) and exits with its status.

    A failed request ends any command with one clean `error: ...` line on stderr, no traceback.

    Args:
        argv: The arguments; sys.argv[1:] when None.
    """
    try:
        app(args=argv, prog_name="hutch")
    except HutchError as exc:
        error_line(exc.message)
        sys.exit(exit_code_for(exc))
