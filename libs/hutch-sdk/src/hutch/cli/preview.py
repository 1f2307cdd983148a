"""`hutch preview`: a URL that reaches a port inside a sandbox, and who may open it."""

from __future__ import annotations

from typing import Annotated

import typer

from hutch.cli._shared import connected, out


def preview(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    port: Annotated[int, typer.Argument(metavar="PORT", min=1, max=65535, help="The port inside the sandbox.")],
    public: Annotated[
        bool | None,
        typer.Option(
            "--public/--private",
            help="Let anyone open the port without a token, or require one again; unchanged by default.",
        ),
    ] = None,
    expires: Annotated[
        int, typer.Option("--expires", min=1, metavar="SECONDS", help="How long the URL's token stays valid.")
    ] = 3600,
) -> None:
    """Print a URL that reaches PORT inside the sandbox (HTTP and WebSockets)."""
    with connected(sandbox) as box:
        if public is not None:
            box.set_port_public(port, public)
        url = box.get_preview_url(port, expires_in=expires)
    out.print(url)
