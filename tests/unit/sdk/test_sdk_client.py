"""The SDK against an in-process fake gateway: streaming, callbacks, errors, and the sync bridge."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import hutch
from hutch import (
    AlreadyExistsError,
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxError,
    SandboxState,
    UnavailableError,
)

if TYPE_CHECKING:
    from conftest import FakeGateway


@pytest.fixture
def sandbox(connection: dict[str, Any]) -> Iterator[Sandbox]:
    with Sandbox.create(envs={"FROM_SANDBOX": "yes"}, **connection) as created:
        yield created


def test_run_returns_output_and_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo hello; echo oops >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hello\n", "oops\n", 0, None)


def test_argv_runs_without_a_shell(sandbox: Sandbox) -> None:
    assert sandbox.commands.run(["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"


def test_environment_and_working_directory(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo $FROM_SANDBOX $EXTRA; pwd", envs={"EXTRA": "x"}, cwd="/tmp")
    assert result.stdout.splitlines()[0] == "yes x"
    assert result.stdout.splitlines()[1].endswith("/tmp")


def test_non_zero_exit_raises_with_the_output(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as caught:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert isinstance(caught.value, SandboxError)
    assert (caught.value.exit_code, caught.value.stdout, caught.value.stderr) == (3, "partial\n", "broken\n")


def test_signal_death_reports_128_plus_the_signal(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as caught:
        sandbox.commands.run("kill -9 $$")
    assert caught.value.exit_code == 128 + 9
    assert caught.value.error == "killed by signal 9"


def test_timeout_raises_timeout_error(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(hutch.TimeoutError, match="still running after 0.5 s"):
        sandbox.commands.run("sleep 30", timeout=0.5)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("stdin", ["text ✓", b"\x00\xffbinary", io.BytesIO(b"from a file")])
def test_stdin_is_sent_then_closed(sandbox: Sandbox, stdin: str | bytes | io.BytesIO) -> None:
    expected = stdin.getvalue() if isinstance(stdin, io.BytesIO) else stdin
    expected_bytes = expected.encode() if isinstance(expected, str) else expected
    assert sandbox.commands.run("od -An -tx1 -v", stdin=stdin).stdout.split() == [
        f"{byte:02x}" for byte in expected_bytes
    ]


def test_large_stdin_streams_in_chunks(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("wc -c", stdin=os.urandom(5 * 1024 * 1024 + 3)).stdout.strip() == "5242883"


def test_a_failing_stdin_source_surfaces_its_error(sandbox: Sandbox) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("the pipe broke")
            return b"first chunk"

    with pytest.raises(OSError, match="the pipe broke"):
        sandbox.commands.run("cat; sleep 30", stdin=Broken())
    assert sandbox.commands.run("echo fine").stdout == "fine\n"


def test_without_stdin_the_command_reads_nothing(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", timeout=5).stdout == ""


def test_callbacks_stream_in_order_on_the_calling_thread(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str, str]] = []
    caller = threading.current_thread().name
    result = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done",
        on_stdout=lambda text: seen.append(("out", text, threading.current_thread().name)),
        on_stderr=lambda text: seen.append(("err", text, threading.current_thread().name)),
    )
    assert "".join(text for kind, text, _ in seen if kind == "out") == result.stdout == "out1\nout2\nout3\n"
    assert "".join(text for kind, text, _ in seen if kind == "err") == result.stderr
    assert {thread for _, _, thread in seen} == {caller}


def test_multibyte_characters_split_across_chunks_decode_intact(sandbox: Sandbox) -> None:
    text = "✓" * 100_000
    assert sandbox.commands.run("cat", stdin=text).stdout == text


def test_invalid_utf8_is_replaced(sandbox: Sandbox) -> None:
    assert sandbox.commands.run(["printf", "a\\377b"]).stdout == "a\ufffdb"


def test_a_callback_exception_stops_the_command_and_propagates(sandbox: Sandbox) -> None:
    class Enough(Exception):
        pass

    def stop(_: str) -> None:
        raise Enough

    started = time.monotonic()
    with pytest.raises(Enough):
        sandbox.commands.run("echo first; sleep 30", on_stdout=stop)
    assert time.monotonic() - started < 10
    assert sandbox.commands.run("echo still usable").stdout == "still usable\n"


def test_a_callback_may_use_the_sync_api(sandbox: Sandbox) -> None:
    written: list[str] = []

    def save(text: str) -> None:
        sandbox.files.write("/tmp/echoed", text)
        written.append(sandbox.files.read("/tmp/echoed"))

    sandbox.commands.run("echo nested", on_stdout=save)
    assert written == ["nested\n"]


def test_sync_api_works_inside_a_running_event_loop(connection: dict[str, Any]) -> None:
    async def inside() -> str:
        with Sandbox.create(**connection) as box:
            return box.commands.run("echo from a loop").stdout

    assert asyncio.run(inside()) == "from a loop\n"


def test_binary_files_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(5 * 1024 * 1024 + 11)
    info = sandbox.files.write("/tmp/blob.bin", data)
    assert (info.path, info.size, info.type) == ("/tmp/blob.bin", len(data), "file")
    assert sandbox.files.read("/tmp/blob.bin", format="bytes") == data
    assert b"".join(sandbox.files.read("/tmp/blob.bin", format="stream")) == data


def test_text_and_file_objects_write(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.files.write("notes.txt", "héllo")
    assert sandbox.files.read("notes.txt") == "héllo"
    assert sandbox.files.get_info("notes.txt").path == "/root/notes.txt"
    local = tmp_path / "local.bin"
    local.write_bytes(b"x" * 3000)
    with local.open("rb") as source:
        assert sandbox.files.write("/tmp/from-file", source, mode=0o600).mode == 0o600
    assert sandbox.files.read("/tmp/from-file", format="bytes") == b"x" * 3000


def test_leaving_a_stream_early_releases_it(sandbox: Sandbox) -> None:
    sandbox.files.write("/tmp/big", os.urandom(2 * 1024 * 1024))
    stream = sandbox.files.read("/tmp/big", format="stream")
    first = next(stream)
    assert first
    stream.close()
    assert sandbox.files.exists("/tmp/big")


def test_reading_a_missing_file_fails_before_streaming(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError, match="/tmp/missing"):
        sandbox.files.read("/tmp/missing", format="stream")


def test_directory_operations(sandbox: Sandbox) -> None:
    assert sandbox.files.make_dir("/tmp/work/sub") is True
    assert sandbox.files.make_dir("/tmp/work/sub") is False
    sandbox.files.write("/tmp/work/sub/a.txt", "a")
    names = {entry.name for entry in sandbox.files.list("/tmp/work", depth=2)}
    assert names == {"sub", "a.txt"}
    moved = sandbox.files.rename("/tmp/work/sub/a.txt", "/tmp/work/b.txt")
    assert moved.path == "/tmp/work/b.txt"
    assert not sandbox.files.exists("/tmp/work/sub/a.txt")
    with pytest.raises(SandboxError):
        sandbox.files.remove("/tmp/work")
    sandbox.files.remove("/tmp/work", recursive=True)
    assert not sandbox.files.exists("/tmp/work")
    with pytest.raises(InvalidArgumentError):
        sandbox.files.list("/tmp", depth=0)


def test_connect_by_name_and_list_by_metadata(connection: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    name = f"named-{run}"
    boxes = [Sandbox.create(name=name if i == 0 else None, metadata={"run": run}, **connection) for i in range(3)]
    try:
        connected = Sandbox.connect(name, **connection)
        assert connected.id == boxes[0].id
        assert connected.name == name
        connected.close()
        # Three sandboxes span two pages of the fake's two-per-page listing.
        assert {info.id for info in Sandbox.list(metadata={"run": run}, **connection)} == {b.id for b in boxes}
        assert Sandbox.list(metadata={"run": "nothing"}, **connection) == []
        with pytest.raises(AlreadyExistsError):
            Sandbox.create(name=name, **connection)
    finally:
        for box in boxes:
            box.kill()
    assert Sandbox.list(metadata={"run": run}, **connection) == []
    killed = Sandbox.list(metadata={"run": run}, states=["killed"], **connection)
    assert {info.state for info in killed} == {SandboxState.KILLED}


def test_kill_twice_and_the_class_level_variants(connection: dict[str, Any]) -> None:
    box = Sandbox.create(**connection)
    assert Sandbox.get_info(box.id, **connection).state == "running"
    assert box.is_running()
    final = box.kill()
    assert (final.state, final.ended_at is not None) == (SandboxState.KILLED, True)
    assert not box.is_running()
    with pytest.raises(SandboxError, match="already killed"):
        box.kill()
    with pytest.raises(SandboxError):
        Sandbox.kill(box.id, **connection)
    with pytest.raises(NotFoundError):
        Sandbox.kill("sb-does-not-exist", **connection)
    box.close()


def test_context_manager_kills_and_tolerates_an_earlier_kill(connection: dict[str, Any]) -> None:
    with Sandbox.create(**connection) as box:
        sandbox_id = box.id
    assert Sandbox.get_info(sandbox_id, **connection).state == "killed"
    with Sandbox.create(**connection) as box:
        box.kill()


def test_create_rejects_bad_arguments(connection: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError, match="nonexistent"):
        Sandbox.create(template="nonexistent", **connection)
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(cpu=-1, **connection)
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(memory_mb=10**9, **connection)
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(name="Bad Name!", **connection)


def test_wrong_or_missing_key(gateway: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthenticationError, match="unknown API key"):
        Sandbox.list(api_key="hk_wrong", endpoint=gateway.endpoint)
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path))
    monkeypatch.delenv("HUTCH_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="hutch local up"):
        Sandbox.create(endpoint=gateway.endpoint)


def test_unreachable_gateway() -> None:
    with pytest.raises(UnavailableError, match="cannot reach the Hutch gateway at 127.0.0.1:1"):
        Sandbox.list(api_key="hk_any", endpoint="127.0.0.1:1")


def test_gateway_reporting_a_dependency_down(connection: dict[str, Any]) -> None:
    with pytest.raises(UnavailableError) as caught:
        Sandbox.create(template="needs-a-node", **connection)
    assert "no node is running" in caught.value.message
    assert "cannot reach" not in caught.value.message


def test_kill_is_callable_on_instances_and_on_the_class() -> None:
    assert Sandbox.kill.__name__ == "_kill_by_id_sync"
    assert Sandbox.get_info.__doc__ and "by id or name" in Sandbox.get_info.__doc__


async def test_async_sandbox(connection: dict[str, Any]) -> None:
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    async with await AsyncSandbox.create(metadata={"api": "async"}, **connection) as box:
        result = await box.commands.run("echo one; echo two", on_stdout=collect)
        assert result.stdout == "one\ntwo\n" == "".join(chunks)
        await box.files.write("/tmp/a.bin", b"\x00\x01")
        assert await box.files.read("/tmp/a.bin", format="bytes") == b"\x00\x01"
        assert [chunk async for chunk in await box.files.read("/tmp/a.bin", format="stream")] == [b"\x00\x01"]
        assert (await box.get_info()).metadata == {"api": "async"}
        assert (await AsyncSandbox.get_info(box.id, **connection)).id == box.id
        with pytest.raises(CommandExitError):
            await box.commands.run("exit 4")
    assert not await box.is_running()
    await box.close()


async def test_cancelling_a_command_propagates_cancellation_untouched(connection: dict[str, Any]) -> None:
    async with await AsyncSandbox.create(**connection) as box:
        task = asyncio.create_task(box.commands.run("sleep 30"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await box.commands.run("echo after")).stdout == "after\n"
