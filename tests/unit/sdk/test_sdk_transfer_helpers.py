"""The pieces of file transfers and handle callbacks that need no gateway: checksums, partial files,
and the thread that runs a handle's callbacks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from hutch import ChecksumMismatchError, HutchError
from hutch import _callbacks as callbacks_module
from hutch._callbacks import CallbackThread
from hutch._transfer import _open_partial, _partial_path, verify_checksum


def test_matching_checksums_pass_in_any_case() -> None:
    digest = hashlib.sha256(b"data").hexdigest()
    verify_checksum("read f", expected=digest.upper(), actual=digest)


def test_no_checksum_from_an_older_gateway_is_taken_at_its_word() -> None:
    verify_checksum("read f", expected="", actual=hashlib.sha256(b"x").hexdigest())


def test_a_mismatch_is_a_clear_error() -> None:
    sent, received = hashlib.sha256(b"sent").hexdigest(), hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ChecksumMismatchError) as caught:
        verify_checksum("write /root/f in sandbox sb-1", expected=received, actual=sent)
    error = caught.value
    assert isinstance(error, HutchError)
    assert (error.expected, error.actual) == (received, sent)
    assert error.message.startswith("write /root/f in sandbox sb-1: the data was corrupted")
    assert "again" in error.message


def test_partial_files_are_hidden_unique_and_next_to_the_target(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    first, second = _partial_path(target), _partial_path(target)
    assert first != second
    assert first.parent == target.parent
    assert first.name.startswith(".big.bin.") and first.name.endswith(".hutch-partial")


def test_partial_files_get_the_usual_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = tmp_path / ".f.partial"
        with _open_partial(path) as sink:
            sink.write(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):
        _open_partial(path)


async def test_callbacks_run_in_order_on_one_other_thread() -> None:
    runner = CallbackThread("test-callbacks")
    seen: list[tuple[int, str]] = []

    def record(item: int) -> None:
        seen.append((item, threading.current_thread().name))

    relayed = runner.relay(record)
    for item in range(20):
        await relayed(item)
    assert [item for item, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"test-callbacks"}


async def test_a_callback_exception_reaches_the_async_side() -> None:
    def explode(item: int) -> None:
        raise ValueError(f"bad {item}")

    with pytest.raises(ValueError, match="bad 3"):
        await CallbackThread("test-callbacks").relay(explode)(3)


async def test_an_idle_callback_thread_ends_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks_module, "_IDLE_S", 0.05)
    runner = CallbackThread("test-idle-callbacks")
    relayed = runner.relay(lambda _: None)
    await relayed(1)

    def alive() -> bool:
        return any(thread.name == "test-idle-callbacks" for thread in threading.enumerate())

    for _ in range(100):
        if not alive():
            break
        await asyncio.sleep(0.02)
    assert not alive()
    seen: list[int] = []
    await runner.relay(seen.append)(2)
    assert seen == [2]
