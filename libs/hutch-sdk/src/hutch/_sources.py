"""Data the SDK sends: file contents and command stdin, cut into chunks for streaming.

A source is in-memory data (str, bytes, bytearray, memoryview) or anything with a `read(size)`
method: a file opened in either mode, `sys.stdin.buffer`, a socket file. Reading from such an object
can block for as long as its writer pleases, so it happens in a daemon thread that stays a couple of
chunks ahead of the network; the event loop never blocks, and an abandoned read cannot keep the
process alive at exit.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final, Protocol, TypeAlias

CHUNK_SIZE: Final = 1024 * 1024
# Chunks the reader thread may hold ready; bounds memory when the network is slower than the source.
_READ_AHEAD: Final = 2


class Readable(Protocol):
    """Anything with `read(size)`, e.g. a file opened in binary or text mode."""

    def read(self, size: int = -1, /) -> bytes | str:
        """Returns up to `size` bytes or characters; empty at end of file."""
        ...


ByteSource: TypeAlias = str | bytes | bytearray | memoryview | Readable


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _split(data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


def known_size(source: ByteSource) -> int | None:
    """Returns how many bytes the source holds from its current position, or None if unknown.

    Only in-memory data and seekable binary streams have a known size: a text stream's size in
    characters says nothing exact about its size in UTF-8 bytes.
    """
    if isinstance(source, str):
        return len(source.encode("utf-8"))
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source).nbytes
    if isinstance(source, io.TextIOBase):
        return None
    seekable = getattr(source, "seekable", None)
    tell = getattr(source, "tell", None)
    seek = getattr(source, "seek", None)
    if not (callable(seekable) and callable(tell) and callable(seek)):
        return None
    try:
        if not seekable():
            return None
        position = int(tell())
        end = int(seek(0, io.SEEK_END))
        seek(position)
    except (OSError, ValueError):
        return None
    return max(0, end - position)


class _ThreadedReader:
    """Reads a blocking source in a daemon thread and hands chunks to the event loop."""

    def __init__(self, read: Callable[[int], bytes | str], loop: asyncio.AbstractEventLoop) -> None:
        self._read = read
        self._loop = loop
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._credits = threading.Semaphore(_READ_AHEAD)
        self._stopped = threading.Event()
        threading.Thread(target=self._pump, name="hutch-source-reader", daemon=True).start()

    def _pump(self) -> None:
        while True:
            self._credits.acquire()
            if self._stopped.is_set():
                return
            item: bytes | BaseException | None
            try:
                item = _as_bytes(self._read(CHUNK_SIZE)) or None
            except Exception as exc:
                item = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:
                # The loop is closed: nobody is left to read what this thread would hand over.
                return
            if not isinstance(item, bytes):
                return

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                self._credits.release()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                for chunk in _split(item):
                    yield chunk
        finally:
            # Wakes the thread if it waits for a credit, so it exits instead of reading on.
            self._stopped.set()
            self._credits.release()


async def iter_chunks(source: ByteSource) -> AsyncIterator[bytes]:
    """Yields the source's bytes in chunks of at most `CHUNK_SIZE`.

    Args:
        source: In-memory data, or an object with `read(size)`; str data is encoded as UTF-8.
    """
    if isinstance(source, str | bytes | bytearray | memoryview):
        for chunk in _split(_as_bytes(source) if isinstance(source, str) else source):
            yield chunk
        return
    # read1 returns what is available instead of waiting for a full chunk, so a pipe's data flows as
    # soon as it is written.
    read: Callable[[int], bytes | str] = getattr(source, "read1", None) or source.read
    async for chunk in _ThreadedReader(read, asyncio.get_running_loop()).chunks():
        yield chunk
