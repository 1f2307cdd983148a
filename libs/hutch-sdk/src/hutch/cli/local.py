"""`hutch local`: the hutch-local package's commands when it is installed, else how to get them."""

from __future__ import annotations

import importlib

import typer

from hutch.cli._shared import EXIT_ERROR, error_line

_MODULE = "hutch.local.cli"
_HELP = "Run the whole Hutch platform on this machine (needs the hutch-local package)."


def mount(app: typer.Typer) -> None:
    """Adds `hutch local` to the app: hutch-local's own commands, or one that explains how to get them."""
    try:
        module = importlib.import_module(_MODULE)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("hutch.local", _MODULE):
            reason = (
                "`hutch local` needs the hutch-local package: install it next to hutch-sdk, e.g. "
                "`pip install hutch-local`"
            )
        else:
            # Installed but broken: say so rather than pretend it is missing.
            reason = f"`hutch local` could not be loaded from {_MODULE}: {exc}"
        _mount_explanation(app, reason)
        return
    local_app = getattr(module, "app", None)
    if not isinstance(local_app, typer.Typer):
        _mount_explanation(app, f"`hutch local` could not be loaded: {_MODULE} has no typer app named `app`")
        return
    app.add_typer(local_app, name="local")


def _mount_explanation(app: typer.Typer, reason: str) -> None:
    @app.command(
        "local",
        help=_HELP,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def local(ctx: typer.Context) -> None:
        error_line(reason)
        raise typer.Exit(EXIT_ERROR)
