"""`hutch files`: list, read, copy and remove a sandbox's files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.table import Table
from rich.text import Text

from hutch import EntryInfo, FilesystemEvent, FileType
from hutch.cli._shared import EXIT_ERROR, connected, error_line, out, print_json, transfer_progress, when

app = typer.Typer(name="files", help="List, read, copy and remove a sandbox's files.", no_args_is_help=True)

SandboxArgument = Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")]
_TYPE_BITS = {FileType.DIR: stat.S_IFDIR, FileType.SYMLINK: stat.S_IFLNK, FileType.FILE: stat.S_IFREG}


class _CountingReader:
    """A binary file that reports every read to a progress callback."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._advance(len(data))
        return data

    # Seeking lets the SDK learn the size up front, so the gateway can refuse an oversized file early.
    def seekable(self) -> bool:
        return self._raw.seekable()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)


def _mode(entry: EntryInfo) -> str:
    return stat.filemode(_TYPE_BITS.get(entry.type, 0) | (entry.mode & 0o7777))


@app.command("ls")
def list_entries(
    sandbox: SandboxArgument,
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="Directory; the home directory, /root, by default.")
    ] = ".",
    depth: Annotated[int, typer.Option(min=1, help="How deep to descend; 1 lists the directory only.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List a directory."""
    with connected(sandbox) as handle:
        entries = handle.files.list(path, depth=depth)
    if json_output:
        print_json(entries)
        return
    table = Table.grid(padding=(0, 2))
    for column in ("mode", "owner", "group", "size", "modified", "name"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for entry in entries:
        name = entry.path if depth > 1 else entry.name
        if entry.symlink_target:
            name += f" -> {entry.symlink_target}"
        cells = (_mode(entry), entry.owner, entry.group, str(entry.size), when(entry.modified_at), name)
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


@app.command()
def cat(
    sandbox: SandboxArgument,
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="Files to print.")],
) -> None:
    """Print files' raw bytes to stdout."""
    with connected(sandbox) as handle:
        for path in paths:
            for chunk in handle.files.read(path, format="stream"):
                sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


@app.command()
def put(
    sandbox: SandboxArgument,
    local: Annotated[Path, typer.Argument(metavar="LOCAL", help="Local file, or - for stdin.", allow_dash=True)],
    remote: Annotated[
        str, typer.Argument(metavar="REMOTE", help="Destination; ending in / puts the file in that directory.")
    ],
) -> None:
    """Upload a file; the sandbox sees it complete or not at all."""
    if remote.endswith("/"):
        remote += "stdin" if str(local) == "-" else local.name
    with connected(sandbox) as handle:
        if str(local) == "-":
            handle.files.write(remote, sys.stdin.buffer)
            return
        with local.open("rb") as source, transfer_progress(local.stat().st_size, local.name) as advance:
            handle.files.write(remote, _CountingReader(source, advance))


@app.command()
def get(
    sandbox: SandboxArgument,
    remote: Annotated[str, typer.Argument(metavar="REMOTE", help="File in the sandbox.")],
    local: Annotated[
        Path | None,
        typer.Argument(
            metavar="LOCAL",
            help="Destination file or directory, or - for stdout; the current directory by default.",
        ),
    ] = None,
) -> None:
    """Download a file; the local file appears only once it is complete."""
    with connected(sandbox) as handle:
        info = handle.files.get_info(remote)
        if info.type is FileType.DIR:
            error_line(f"{info.path} in sandbox {sandbox} is a directory; `hutch files get` copies files")
            raise typer.Exit(EXIT_ERROR)
        if local is not None and str(local) == "-":
            for chunk in handle.files.read(remote, format="stream"):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        target = local or Path(info.name)
        if target.is_dir():
            target /= info.name
        with _replaced_atomically(target) as sink, transfer_progress(info.size, info.name) as advance:
            for chunk in handle.files.read(remote, format="stream"):
                sink.write(chunk)
                advance(len(chunk))


@contextlib.contextmanager
def _replaced_atomically(target: Path) -> Iterator[BinaryIO]:
    # A partial file under a hidden name, renamed over the target only once complete, so an
    # interrupted download never leaves a truncated file that looks finished.
    partial = target.with_name(f".{target.name}.hutch-partial")
    try:
        with partial.open("wb") as sink:
            yield sink
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@app.command("rm")
def remove(
    sandbox: SandboxArgument,
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="Files or directories to remove.")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Remove directories and everything in them.")
    ] = False,
) -> None:
    """Remove files, links and empty directories (with -r, any directory)."""
    with connected(sandbox) as handle:
        for path in paths:
            handle.files.remove(path, recursive=recursive)


@app.command("mkdir")
def make_dir(
    sandbox: SandboxArgument,
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="Directories to create.")],
) -> None:
    """Create directories; one that exists already is left as it is."""
    with connected(sandbox) as handle:
        for path in paths:
            handle.files.make_dir(path)


def describe_event(event: FilesystemEvent) -> str:
    """One line for an event: its type, then the path ("/" after a directory), a rename's old path first."""
    path = event.path + ("/" if event.is_dir else "")
    if event.type == "rename" and event.old_path:
        path = f"{event.old_path}{'/' if event.is_dir else ''} -> {path}"
    return f"{event.type:<7} {path}"


@app.command()
def watch(
    sandbox: SandboxArgument,
    path: Annotated[str, typer.Argument(metavar="PATH", help="Directory to watch.")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also watch every directory below, new ones included.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per event.")] = False,
) -> None:
    """Print changes under a directory as they happen, until Ctrl-C (exit status 130)."""
    with connected(sandbox) as handle:
        watching = handle.files.watch_dir(path, recursive=recursive)
        try:
            for event in watching:
                if json_output:
                    sys.stdout.write(json.dumps(dataclasses.asdict(event)) + "\n")
                else:
                    sys.stdout.write(describe_event(event) + "\n")
                # Flushed per event: whoever reads this (a person, a pipe) wants it when it happens.
                sys.stdout.flush()
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            # An error that ended the watch propagates from the loop already; after Ctrl-C, how the
            # watch ends matters to nobody.
            with contextlib.suppress(Exception):
                watching.stop()
