"""Data the SDK uploads or feeds to stdin, cut into chunks."""

from __future__ import annotations

import io
import os
import threading

import pytest

from hutch._sources import CHUNK_SIZE, ByteSource, iter_chunks, known_size


async def _collect(source: ByteSource) -> list[bytes]:
    return [chunk async for chunk in iter_chunks(source)]


async def test_in_memory_data_is_cut_into_chunks() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    chunks = await _collect(data)
    assert [len(chunk) for chunk in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 5]
    assert b"".join(chunks) == data
    assert b"".join(await _collect(bytearray(data))) == data
    assert b"".join(await _collect(memoryview(data))) == data
    assert await _collect(b"") == []


async def test_text_is_encoded_as_utf8() -> None:
    assert b"".join(await _collect("héllo ✓")) == "héllo ✓".encode()
    assert b"".join(await _collect(io.StringIO("ünïcode " * 1000))) == ("ünïcode " * 1000).encode()


async def test_file_objects_are_read_to_the_end() -> None:
    data = os.urandom(3 * CHUNK_SIZE + 1)
    source = io.BytesIO(data)
    chunks = await _collect(source)
    assert b"".join(chunks) == data
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)


async def test_a_pipe_is_read_without_blocking_the_event_loop() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:

        def write_later() -> None:
            writer.write(b"late data")
            writer.close()

        timer = threading.Timer(0.2, write_later)
        timer.start()
        # The loop stays free while the reader thread waits for the pipe.
        assert b"".join(await _collect(reader)) == b"late data"
        timer.join()


async def test_read_errors_surface() -> None:
    class Broken:
        def read(self, size: int = -1, /) -> bytes:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await _collect(Broken())


def test_known_sizes() -> None:
    assert known_size(b"abc") == 3
    assert known_size("é") == 2
    assert known_size(memoryview(b"abcd")) == 4
    buffer = io.BytesIO(b"0123456789")
    buffer.seek(4)
    assert known_size(buffer) == 6
    assert buffer.tell() == 4


def test_unknown_sizes() -> None:
    assert known_size(io.StringIO("text")) is None

    class Unseekable:
        def read(self, size: int = -1, /) -> bytes:
            return b""

    assert known_size(Unseekable()) is None
