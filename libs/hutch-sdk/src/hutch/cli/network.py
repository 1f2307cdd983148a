"""`hutch sandbox network` and `hutch sandbox egress`: what a sandbox may reach, what it sent where."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hutch.cli._shared import connected, out, print_json, when
from hutch.network import NetworkPolicy

SandboxArgument = Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_policy(policy: NetworkPolicy) -> None:
    for key in ("allow", "deny", "passthrough"):
        entries = getattr(policy, key)
        out.print(f"{key}: {' '.join(entries) if entries else '-'}")


def network(
    sandbox: SandboxArgument,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="Allow this host, *.domain, CIDR (repeatable).")
    ] = None,
    deny: Annotated[list[str] | None, typer.Option("--deny", help="Deny this entry (repeatable).")] = None,
    passthrough: Annotated[
        list[str] | None, typer.Option("--passthrough", help="Relay this host's TLS untouched (repeatable).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a sandbox's network policy, or replace it when any option is given."""
    with connected(sandbox) as box:
        if allow is None and deny is None and passthrough is None:
            policy = box.get_network()
        else:
            policy = box.update_network(allow=allow or [], deny=deny or [], passthrough=passthrough or [])
    if json_output:
        print_json(policy)
        return
    _print_policy(policy)


def egress(sandbox: SandboxArgument, json_output: JsonOption = False) -> None:
    """Bytes sent to and received from each destination, requests and refusals."""
    with connected(sandbox) as box:
        report = box.egress()
    if json_output:
        print_json(report)
        return
    table = Table("DESTINATION", "OUT", "IN", "REQUESTS", "REFUSED", "LAST SEEN", box=None)
    for row in report.destinations:
        table.add_row(
            row.destination,
            str(row.bytes_out),
            str(row.bytes_in),
            str(row.requests),
            str(row.refused),
            when(row.last_seen),
        )
    out.print(table)
    out.print(f"total: {report.bytes_out} bytes out, {report.bytes_in} bytes in")
