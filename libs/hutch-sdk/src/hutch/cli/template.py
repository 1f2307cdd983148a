"""`hutch template ...`: import OCI images as templates, list and delete them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from hutch.cli._shared import err, out, when
from hutch.templates import Template

app = typer.Typer(name="template", help="Import OCI images as templates; list and delete them.", no_args_is_help=True)


@app.command("import")
def import_image(
    archive: Annotated[Path, typer.Argument(help="A `docker save` tarball, or an OCI image layout (folder or tar).")],
    name: Annotated[str, typer.Option("--name", "-n", help="The template's name.")],
) -> None:
    """Import an image as a template, on every node; print its name once sandboxes can use it."""
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task(f"uploading {archive.name}", total=None)
        template = Template.import_image(
            archive, name, on_progress=lambda sent, total: progress.update(task, completed=sent, total=total)
        )
    out.print(template.name)


@app.command("list")
def list_templates() -> None:
    """List the built-in templates and yours."""
    table = Table("NAME", "KIND", "SOURCE", "SIZE", "USER", "WORKDIR", "CREATED")
    for template in Template.list():
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    template.name,
                    "built-in" if template.builtin else "imported",
                    template.source[:19] or "-",
                    f"{template.size_bytes / 2**20:.1f} MiB" if template.size_bytes else "-",
                    template.user,
                    template.workdir,
                    when(template.created_at),
                )
            )
        )
    out.print(table)


@app.command()
def delete(name: Annotated[str, typer.Argument(help="The template's name.")]) -> None:
    """Delete one of your templates (refused while a live sandbox uses it)."""
    Template.delete(name)
    out.print(name)
