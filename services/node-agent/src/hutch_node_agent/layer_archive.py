"""A writable layer as one byte stream (what a snapshot uploads) and back.

The stream is a POSIX tar written by GNU tar, which keeps everything an overlay upper layer is made
of: whiteouts (0/0 character devices), opaque folders and capabilities (extended attributes of every
namespace), hard links, sparse files, numeric owners. Entries are sorted by name so that the same
tree always gives the same bytes, which is what lets content-defined chunking find the unchanged
parts of a layer from one snapshot to the next.

Owners are stored as the host sees them (shifted into the node's user-namespace range); the shift is
recorded with the snapshot, and a node with another shift moves them on unpacking. Access and
change times are not kept (a restored file's ctime is when it was restored).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from hutch.core import errors

READ_SIZE = 1024 * 1024
_COMMON = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=posix")
# Without these, every header would carry the file's access and change times (which reading the
# layer itself moves), and extended headers would be named after the tar process's pid: every
# snapshot of an unchanged file would differ, defeating deduplication.
_STABLE_HEADERS = "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"


async def pack(upper: Path) -> AsyncIterator[bytes]:
    """The layer's tar stream, in pieces of up to READ_SIZE bytes."""
    proc = await asyncio.create_subprocess_exec(
        "tar", "--create", "--file=-", f"--directory={upper}", "--sort=name", "--sparse", _STABLE_HEADERS,
        *_COMMON, ".",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        limit=READ_SIZE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    finished = False
    try:
        while chunk := await proc.stdout.read(READ_SIZE):
            yield chunk
        code = await proc.wait()
        finished = True
        if code != 0:
            raise errors.Internal(f"cannot archive the layer {upper}: {(await stderr).decode(errors='replace')}")
    finally:
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        stderr.cancel()


async def unpack(chunks: AsyncIterator[bytes], upper: Path) -> None:
    """Writes a layer's tar stream into the (empty) folder `upper`."""
    proc = await asyncio.create_subprocess_exec(
        "tar", "--extract", "--file=-", f"--directory={upper}", "--same-owner", "--preserve-permissions",
        "--delay-directory-restore", *_COMMON,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    try:
        try:
            async for chunk in chunks:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # tar stopped reading: its exit status and message say why
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        stderr.cancel()
        raise
    if code != 0:
        message = (await stderr).decode(errors="replace").strip()
        raise errors.Internal(f"cannot unpack a layer into {upper}: {message or f'tar exited {code}'}")
    stderr.cancel()
