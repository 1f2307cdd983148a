"""`hutch secret`: secrets your sandboxes use without holding them, and their grants."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from hutch.cli._shared import out, parse_pairs, print_json, when
from hutch.secrets import Secret

app = typer.Typer(
    name="secret", help="Secrets injected at the network edge, and who may use them.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _read_value(value: str | None, from_env: str | None) -> bytes:
    if value is not None and from_env is not None:
        raise typer.BadParameter("give --value or --from-env, not both")
    if from_env is not None:
        found = os.environ.get(from_env)
        if found is None:
            raise typer.BadParameter(f"the environment has no {from_env}")
        return found.encode()
    if value is not None:
        return value.encode()
    return sys.stdin.buffer.read().rstrip(b"\n")


ValueOption = Annotated[
    str | None, typer.Option("--value", help="The value (visible in your shell's history: prefer stdin).")
]
FromEnvOption = Annotated[str | None, typer.Option("--from-env", metavar="VAR", help="Read the value from $VAR.")]


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The secret's name, e.g. GITHUB_TOKEN.")],
    value: ValueOption = None,
    from_env: FromEnvOption = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
) -> None:
    """Store a secret (the value is read from stdin unless --value or --from-env gives it)."""
    info = Secret.create(name, _read_value(value, from_env), description)
    out.print(f"{info.name} v{info.version}")


@app.command("list")
def list_secrets(json_output: JsonOption = False) -> None:
    """Your secrets (never their values)."""
    found = Secret.list()
    if json_output:
        print_json(found)
        return
    table = Table("NAME", "VERSION", "UPDATED", "DESCRIPTION", box=None)
    for info in found:
        table.add_row(info.name, str(info.version), when(info.updated_at), info.description)
    out.print(table)


@app.command()
def rotate(name: Annotated[str, typer.Argument()], value: ValueOption = None, from_env: FromEnvOption = None) -> None:
    """Replace a secret's value (read from stdin unless --value or --from-env gives it)."""
    info = Secret.rotate(name, _read_value(value, from_env))
    out.print(f"{info.name} v{info.version}")


@app.command()
def delete(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a secret and every grant of it."""
    Secret.delete(name)
    out.print(name)


@app.command()
def grant(
    name: Annotated[str, typer.Argument(help="The secret.")],
    host: Annotated[list[str], typer.Option("--host", help="A host it may be sent to (repeatable).")],
    sandbox: Annotated[list[str] | None, typer.Option("--sandbox", help="A sandbox id (repeatable).")] = None,
    sandbox_name: Annotated[
        list[str] | None, typer.Option("--sandbox-name", help="A sandbox name (repeatable).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE every covered sandbox carries (repeatable).")
    ] = None,
    header: Annotated[
        str | None, typer.Option("--header", help="Inject as this header, e.g. 'Authorization: Bearer {value}'.")
    ] = None,
    placeholder: Annotated[
        bool, typer.Option("--placeholder", help="Swap hutch-secret://NAME for the value on the wire.")
    ] = False,
) -> None:
    """Let sandboxes use a secret for some hosts; prints the grant's id."""
    created = Secret.grant(
        name,
        hosts=host,
        sandbox_ids=sandbox or [],
        sandbox_names=sandbox_name or [],
        labels=parse_pairs(label, "--label"),
        header=header,
        placeholder=placeholder,
    )
    out.print(created.id)


@app.command()
def grants(
    name: Annotated[str | None, typer.Argument(help="Only this secret's grants.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List grants."""
    found = Secret.grants(name)
    if json_output:
        print_json(found)
        return
    table = Table("ID", "SECRET", "HOSTS", "SANDBOXES", "INJECTS", box=None)
    for item in found:
        who = [*item.sandbox_ids, *item.sandbox_names, *(f"{k}={v}" for k, v in item.labels.items())]
        table.add_row(item.id, item.secret, " ".join(item.hosts), " ".join(who), item.header or "placeholder")
    out.print(table)


@app.command()
def revoke(grant_id: Annotated[str, typer.Argument(metavar="GRANT")]) -> None:
    """Remove a grant."""
    Secret.revoke(grant_id)
    out.print(grant_id)


@app.command()
def audit(
    name: Annotated[str | None, typer.Argument(help="Only this secret.")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    json_output: JsonOption = False,
) -> None:
    """Who used a secret: one line per resolution by the egress-proxy (newest first)."""
    found = Secret.audit(name, limit=limit)
    if json_output:
        print_json(found)
        return
    table = Table("WHEN", "SECRET", "VERSION", "SANDBOX", "HOST", "BY", box=None)
    for use in found:
        table.add_row(when(use.at), use.secret, str(use.version), use.sandbox_id, use.host, use.resolver)
    out.print(table)
