"""Moving file contents over the Files service, with end-to-end checksums and progress reports.

Both directions hash every byte on the SDK's side and compare with the SHA-256 the sandbox's side
computed over the same bytes: the answer to a Write, the `end` message of a Read. A mismatch, which
no layer in between should ever produce, raises `ChecksumMismatchError` rather than passing for
success. A gateway too old to send a checksum is taken at its word.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import IO, TypeAlias

import grpc.aio

from hutch._connection import WRITE_AFTER_END, Connection
from hutch._sources import ByteSource, iter_chunks, known_size
from hutch.exceptions import ChecksumMismatchError, InternalError
from hutch.v1 import files_pb2

ProgressHandler: TypeAlias = Callable[[int], object]
"""Called with the number of bytes moved so far. With AsyncSandbox it may be a coroutine function."""

_ReadCall: TypeAlias = grpc.aio.UnaryStreamCall[files_pb2.ReadFileRequest, files_pb2.ReadFileResponse]


def verify_checksum(doing: str, *, expected: str, actual: str) -> None:
    """Compares a checksum the other side reported (hex; empty when it sent none) with ours.

    Raises:
        ChecksumMismatchError: They differ.
    """
    if expected and expected.lower() != actual.lower():
        raise ChecksumMismatchError(
            f"{doing}: the data was corrupted on its way (SHA-256 {actual} here, {expected} in the sandbox); "
            "transfer it again",
            expected=expected.lower(),
            actual=actual.lower(),
        )


async def _report(on_progress: ProgressHandler | None, moved: int) -> None:
    if on_progress is not None:
        result = on_progress(moved)
        if inspect.isawaitable(result):
            await result


async def write_file(
    connection: Connection,
    header: files_pb2.WriteFileHeader,
    data: ByteSource,
    *,
    on_progress: ProgressHandler | None,
    doing: str,
) -> files_pb2.FileInfo:
    """Uploads `data` as the file `header` names; returns the written file's info once verified.

    Raises:
        ChecksumMismatchError: The sandbox received other bytes than were sent.
        HutchError: The upload failed; the subclass says why.
    """
    if not header.size:
        header.size = known_size(data) or 0
    digest = hashlib.sha256()
    sent = 0
    call = connection.files.Write(None, metadata=connection.metadata)
    try:
        with connection.translated(doing):
            try:
                await call.write(files_pb2.WriteFileRequest(header=header))
                async for chunk in iter_chunks(data):
                    await call.write(files_pb2.WriteFileRequest(data=chunk))
                    digest.update(chunk)
                    sent += len(chunk)
                    await _report(on_progress, sent)
                # Only `end` commits the file: a stream cut short anywhere on its way writes nothing.
                await call.write(files_pb2.WriteFileRequest(end=files_pb2.WriteFileEnd()))
                await call.done_writing()
            except WRITE_AFTER_END:
                # The gateway ended the call early (e.g. the file is too large); awaiting the call
                # below raises the status it ended with.
                pass
            info = await call
    except BaseException:
        call.cancel()
        raise
    verify_checksum(doing, expected=info.sha256, actual=digest.hexdigest())
    return info


async def open_read(
    connection: Connection, sandbox: str, path: str, doing: str
) -> tuple[files_pb2.FileInfo, AsyncGenerator[bytes, None]]:
    """Opens a file for reading; returns its info and an iterator of its data.

    The iterator checks the checksum when the data ends, raising `ChecksumMismatchError` there; leaving
    it early ends the transfer.

    Raises:
        NotFoundError: The file or the sandbox does not exist.
        HutchError: Another failure; the subclass says which.
    """
    call = connection.files.Read(files_pb2.ReadFileRequest(sandbox=sandbox, path=path), metadata=connection.metadata)
    try:
        with connection.translated(doing):
            first = await call.read()
        if not isinstance(first, files_pb2.ReadFileResponse) or first.WhichOneof("event") != "info":
            raise InternalError(f"{doing}: the gateway sent data before the file's info")
    except BaseException:
        call.cancel()
        raise
    return first.info, _data(connection, call, doing)


async def _data(connection: Connection, call: _ReadCall, doing: str) -> AsyncGenerator[bytes, None]:
    digest = hashlib.sha256()
    try:
        while True:
            with connection.translated(doing):
                response = await call.read()
            if not isinstance(response, files_pb2.ReadFileResponse):
                return
            event = response.WhichOneof("event")
            if event == "data":
                digest.update(response.data)
                yield response.data
            elif event == "end":
                verify_checksum(doing, expected=response.end.sha256, actual=digest.hexdigest())
    finally:
        # Stops the transfer when the caller leaves the stream early.
        call.cancel()


def _partial_path(target: Path) -> Path:
    # Hidden, next to the target (so the final rename stays on one filesystem), and unique, so two
    # downloads to one target cannot write into each other's file.
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.hutch-partial")


def _open_partial(path: Path) -> IO[bytes]:
    # 0o666 before the umask, as a plain `open` would create it; mkstemp would leave it at 0o600.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb")


async def download_file(
    connection: Connection,
    sandbox: str,
    remote: str,
    local: Path,
    *,
    on_progress: ProgressHandler | None,
    doing: str,
) -> files_pb2.FileInfo:
    """Streams a file to `local`, which appears (or is replaced) only once complete and verified.

    Raises:
        ChecksumMismatchError: The data arrived corrupted; nothing was written to `local`.
        HutchError: The download failed; the subclass says why.
        OSError: The local file could not be written.
    """
    partial = _partial_path(local)
    sink = await asyncio.to_thread(_open_partial, partial)
    try:
        try:
            info, chunks = await open_read(connection, sandbox, remote, doing)
            try:
                received = 0
                async for chunk in chunks:
                    # Disk writes happen off the event loop, which keeps serving other calls meanwhile.
                    await asyncio.to_thread(sink.write, chunk)
                    received += len(chunk)
                    await _report(on_progress, received)
            finally:
                await chunks.aclose()
        finally:
            await asyncio.to_thread(sink.close)
        await asyncio.to_thread(os.replace, partial, local)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return info
