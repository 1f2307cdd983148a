"""The Python SDK against the whole local stack: sandboxes, commands, files, errors and isolation.

Every sandbox a test creates is killed by a fixture finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch import (
    AlreadyExistsError,
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    EntryInfo,
    FileType,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxError,
    SandboxInfo,
    SandboxState,
    UnavailableError,
)
from hutch._config import resolve
from hutch._connection import Connection
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def _kill_quietly(sandbox: Sandbox) -> None:
    try:
        sandbox.kill()
    except (NotFoundError, SandboxError):
        pass
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the local stack."""
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module", params=["container", "gvisor"])
def sandbox(request: pytest.FixtureRequest, connection: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox per isolation class, shared by the tests that only run commands and touch files:
    everything the SDK offers must behave the same under both classes."""
    box = Sandbox.create(
        metadata={"suite": "e2e-sdk"}, envs={"FROM_SANDBOX": "yes"}, isolation=request.param, **connection
    )
    try:
        yield box
    finally:
        _kill_quietly(box)


@pytest.fixture
def make_sandbox(connection: dict[str, str]) -> Iterator[Callable[..., Sandbox]]:
    """Creates sandboxes of the test's own and kills them all when the test ends."""
    created: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox.create(**connection, **kwargs)
        created.append(box)
        return box

    yield make
    for box in created:
        _kill_quietly(box)


async def _kill_quietly_async(sandbox: AsyncSandbox) -> None:
    try:
        await sandbox.kill()
    except (NotFoundError, SandboxError):
        pass
    finally:
        await sandbox.close()


@pytest.fixture
async def async_sandboxes() -> AsyncIterator[list[AsyncSandbox]]:
    """A list to put the test's AsyncSandboxes in; each is killed when the test ends."""
    created: list[AsyncSandbox] = []
    yield created
    await asyncio.gather(*(_kill_quietly_async(box) for box in created))


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _marked_sleep() -> str:
    """A `sleep` whose argument is unique, so `ps` can tell whether this very process still runs."""
    return f"sleep {random.randint(100, 999)}.{random.randint(1000, 9999)}"


def _wait_until_gone(sandbox: Sandbox, process: str) -> None:
    """Waits until no process in the sandbox has `process` in its command line."""
    eventually_sync(
        lambda: process not in sandbox.commands.run("ps -eo args").stdout,
        message=f"{process!r} still runs in sandbox {sandbox.id}",
    )


# Commands


def test_create_and_echo(sandbox: Sandbox) -> None:
    info = sandbox.get_info()
    assert info.state == SandboxState.RUNNING
    assert info.id == sandbox.id and info.id.startswith("sb-")
    assert (info.template, info.cpu, info.memory_mb) == ("base", 1.0, 512)
    assert info.metadata == {"suite": "e2e-sdk"}
    result = sandbox.commands.run("echo hello")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hello\n", "", 0, None)
    both = sandbox.commands.run("echo hello; echo oops >&2")
    assert (both.stdout, both.stderr, both.exit_code, both.error) == ("hello\n", "oops\n", 0, None)


def test_non_zero_exit_raises_with_output(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as caught:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert isinstance(caught.value, SandboxError)
    assert (caught.value.exit_code, caught.value.stdout, caught.value.stderr) == (3, "partial\n", "broken\n")


def test_signal_death_reports_128_plus_the_signal(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as caught:
        sandbox.commands.run("echo before; kill -9 $$")
    assert (caught.value.exit_code, caught.value.error) == (128 + 9, "killed by signal 9")
    assert caught.value.stdout == "before\n"


def test_callbacks_stream_in_order_on_the_calling_thread(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str, str, float]] = []

    def record(kind: str) -> Callable[[str], None]:
        return lambda text: seen.append((kind, text, threading.current_thread().name, time.monotonic()))

    caller = threading.current_thread().name
    result = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done",
        on_stdout=record("out"),
        on_stderr=record("err"),
    )
    returned = time.monotonic()
    assert result.stdout == "".join(text for kind, text, _, _ in seen if kind == "out") == "out1\nout2\nout3\n"
    assert result.stderr == "".join(text for kind, text, _, _ in seen if kind == "err") == "err1\nerr2\nerr3\n"
    assert {thread for _, _, thread, _ in seen} == {caller}
    # Across both streams, callbacks come in the order the command wrote: all of round 1 before round 2.
    rounds = [int(digit) for _, text, _, _ in seen for digit in text if digit.isdigit()]
    assert rounds == sorted(rounds)
    # Streamed while the command ran, not handed over at the end: round 1 came 0.9 s before it ended.
    assert seen[0][3] < returned - 0.4


def test_large_output(sandbox: Sandbox) -> None:
    assert len(sandbox.commands.run("yes hutch | head -n 500000").stdout) == 500000 * len("hutch\n")


def test_environment_variables(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo $FROM_SANDBOX $FROM_RUN", envs={"FROM_RUN": "also"})
    assert result.stdout == "yes also\n"
    assert sandbox.commands.run("echo $FROM_SANDBOX", envs={"FROM_SANDBOX": "over"}).stdout == "over\n"


def test_working_directory(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("pwd").stdout == "/root\n"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_user(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("id -u").stdout == "0\n"
    nobody = sandbox.commands.run("id -un; id -u", user="nobody").stdout.split()
    assert nobody[0] == "nobody" and nobody[1] != "0"
    # uid 1000 is the base template's own unprivileged account.
    assert sandbox.commands.run("id -u", user="1000").stdout == "1000\n"


def test_argv_runs_without_a_shell(sandbox: Sandbox) -> None:
    assert sandbox.commands.run(["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"


def test_stdin(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", stdin="line one\nline two\n").stdout == "line one\nline two\n"
    data = os.urandom(3 * MiB + 5)
    digest = sandbox.commands.run("sha256sum", stdin=data).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert sandbox.commands.run("wc -c", stdin=io.BytesIO(b"12345")).stdout.strip() == "5"


@pytest.mark.parametrize(
    "make_stdin", [lambda: "text ✓", lambda: b"\x00\xffbinary", lambda: io.BytesIO(b"from a \x00 file")]
)
def test_stdin_arrives_byte_for_byte_then_closes(
    sandbox: Sandbox, make_stdin: Callable[[], str | bytes | io.BytesIO]
) -> None:
    stdin = make_stdin()  # a fresh file object for each sandbox: reading one consumes it
    expected = stdin.getvalue() if isinstance(stdin, io.BytesIO) else stdin
    expected_bytes = expected.encode() if isinstance(expected, str) else expected
    # od ends only once stdin is closed.
    dumped = sandbox.commands.run("od -An -tx1 -v", stdin=stdin, timeout=20).stdout.split()
    assert dumped == [f"{byte:02x}" for byte in expected_bytes]


def test_a_failing_stdin_source_surfaces_its_error_and_stops_the_command(sandbox: Sandbox) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("the pipe broke")
            return b"first chunk"

    sleep = _marked_sleep()
    started = time.monotonic()
    with pytest.raises(OSError, match="the pipe broke"):
        sandbox.commands.run(f"cat; {sleep}", stdin=Broken())
    assert time.monotonic() - started < 10
    _wait_until_gone(sandbox, sleep)
    assert sandbox.commands.run("echo fine").stdout == "fine\n"


def test_without_stdin_the_command_reads_end_of_file(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", timeout=10).stdout == ""


def test_timeout(sandbox: Sandbox) -> None:
    sleep = _marked_sleep()
    started = time.monotonic()
    with pytest.raises(hutch.TimeoutError, match="still running after 2 s, so it was killed"):
        sandbox.commands.run(sleep, timeout=2)
    assert time.monotonic() - started < 30
    _wait_until_gone(sandbox, sleep)
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


def test_multibyte_characters_split_across_chunks_decode_intact(sandbox: Sandbox) -> None:
    text = "✓" * 100_000
    assert sandbox.commands.run("cat", stdin=text).stdout == text
    # The three bytes of ✓ written apart, so they cannot arrive in one chunk.
    chunks: list[str] = []
    split = sandbox.commands.run(
        "printf '\\342'; sleep 0.3; printf '\\234'; sleep 0.3; printf '\\223\\n'", on_stdout=chunks.append
    )
    assert split.stdout == "".join(chunks) == "✓\n"


def test_invalid_utf8_is_replaced(sandbox: Sandbox) -> None:
    assert sandbox.commands.run(["printf", "a\\377b"]).stdout == "a\ufffdb"
    assert sandbox.commands.run(["printf", "a\\377b"], on_stdout=lambda _: None).stdout == "a\ufffdb"


def test_a_callback_exception_stops_the_command_and_propagates(sandbox: Sandbox) -> None:
    class Enough(Exception):
        pass

    def stop(_: str) -> None:
        raise Enough

    sleep = _marked_sleep()
    started = time.monotonic()
    with pytest.raises(Enough):
        sandbox.commands.run(f"echo first; {sleep}", on_stdout=stop)
    assert time.monotonic() - started < 10
    _wait_until_gone(sandbox, sleep)
    assert sandbox.commands.run("echo still usable").stdout == "still usable\n"


def test_a_callback_may_use_the_sync_api(sandbox: Sandbox) -> None:
    path = f"/tmp/{_unique('echoed')}"
    written: list[str] = []

    def save(text: str) -> None:
        sandbox.files.write(path, text)
        written.append(sandbox.files.read(path))

    sandbox.commands.run("echo nested", on_stdout=save)
    assert written == ["nested\n"]


async def test_sync_api_works_inside_a_running_event_loop(connection: dict[str, str]) -> None:
    assert asyncio.get_running_loop().is_running()
    with Sandbox.create(**connection) as box:
        assert box.commands.run("echo from a loop").stdout == "from a loop\n"
        box.files.write("/tmp/loop.txt", "written from a loop")
        assert box.files.read("/tmp/loop.txt") == "written from a loop"
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED


async def test_async_sandbox(connection: dict[str, str]) -> None:
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    async with await AsyncSandbox.create(metadata={"suite": "e2e-sdk-async"}, **connection) as box:
        result = await box.commands.run("echo one; echo two", on_stdout=collect)
        assert result.stdout == "".join(chunks) == "one\ntwo\n"
        await box.files.write("/tmp/async.bin", b"\x00\x01\x02")
        assert await box.files.read("/tmp/async.bin", format="bytes") == b"\x00\x01\x02"
        stream = await box.files.read("/tmp/async.bin", format="stream")
        assert [chunk async for chunk in stream] == [b"\x00\x01\x02"]
        assert (await box.get_info()).metadata == {"suite": "e2e-sdk-async"}
        assert (await AsyncSandbox.get_info(box.id, **connection)).id == box.id
        with pytest.raises(CommandExitError) as caught:
            await box.commands.run("exit 5")
        assert caught.value.exit_code == 5
        sandbox_id = box.id
    assert not await box.is_running()
    await box.close()
    info = await AsyncSandbox.get_info(sandbox_id, **connection)
    assert info.state == SandboxState.KILLED


async def test_cancelling_a_command_passes_cancellation_through(connection: dict[str, str]) -> None:
    async with await AsyncSandbox.create(**connection) as box:
        task = asyncio.create_task(box.commands.run("sleep 60"))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await box.commands.run("echo after")).stdout == "after\n"


# Files


def test_binary_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(6 * MiB + 123)
    info = sandbox.files.write("/tmp/blob.bin", data)
    assert (info.path, info.size, info.type) == ("/tmp/blob.bin", len(data), FileType.FILE)
    assert sandbox.files.read("/tmp/blob.bin", format="bytes") == data
    assert b"".join(sandbox.files.read("/tmp/blob.bin", format="stream")) == data
    inside = sandbox.commands.run("sha256sum /tmp/blob.bin").stdout.split()[0]
    assert inside == hashlib.sha256(data).hexdigest()


def test_text_and_file_object_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.files.write("/tmp/text.txt", "héllo ✓\n")
    assert sandbox.files.read("/tmp/text.txt") == "héllo ✓\n"
    assert sandbox.commands.run("cat /tmp/text.txt").stdout == "héllo ✓\n"
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(2 * MiB))
    with local.open("rb") as source:
        assert sandbox.files.write("/tmp/upload.bin", source, mode=0o600).mode == 0o600
    assert sandbox.files.read("/tmp/upload.bin", format="bytes") == local.read_bytes()
    assert sandbox.files.get_info("/tmp/upload.bin").mode == 0o600


def test_relative_paths_start_at_root_home(sandbox: Sandbox) -> None:
    info = sandbox.files.write("relative.txt", "r")
    assert info.path == "/root/relative.txt"
    assert sandbox.files.get_info("relative.txt").path == "/root/relative.txt"
    assert sandbox.files.read("relative.txt") == "r"
    assert sandbox.commands.run("cat /root/relative.txt").stdout == "r"


def test_directory_operations(sandbox: Sandbox) -> None:
    base = f"/tmp/{_unique('dir')}"
    assert sandbox.files.make_dir(f"{base}/sub") is True
    assert sandbox.files.make_dir(f"{base}/sub") is False
    sandbox.files.write(f"{base}/sub/a.txt", "a")
    sandbox.files.write(f"{base}/b.txt", "bb")

    assert {entry.name for entry in sandbox.files.list(base)} == {"sub", "b.txt"}
    with pytest.raises(InvalidArgumentError):
        sandbox.files.list(base, depth=0)
    deep = {entry.path: entry for entry in sandbox.files.list(base, depth=2)}
    assert set(deep) == {f"{base}/sub", f"{base}/sub/a.txt", f"{base}/b.txt"}
    assert deep[f"{base}/sub"].type == FileType.DIR
    assert deep[f"{base}/b.txt"].size == 2

    stat = sandbox.files.get_info(f"{base}/b.txt")
    assert isinstance(stat, EntryInfo) and stat.name == "b.txt" and stat.owner == "root"
    assert stat.modified_at is not None

    moved = sandbox.files.rename(f"{base}/b.txt", f"{base}/sub/c.txt")
    assert moved.path == f"{base}/sub/c.txt"
    assert not sandbox.files.exists(f"{base}/b.txt")
    assert sandbox.files.read(f"{base}/sub/c.txt") == "bb"

    with pytest.raises(SandboxError, match="not empty"):
        sandbox.files.remove(f"{base}/sub")
    sandbox.files.remove(f"{base}/sub/c.txt")
    assert not sandbox.files.exists(f"{base}/sub/c.txt")
    sandbox.files.remove(base, recursive=True)
    assert not sandbox.files.exists(base)
    with pytest.raises(NotFoundError):
        sandbox.files.get_info(base)
    with pytest.raises(NotFoundError):
        sandbox.files.read(f"{base}/sub/a.txt")


def _holders(sandbox: Sandbox, path: str) -> int:
    """How many open file descriptors in the sandbox refer to `path` (its supervisor's reads included)."""
    links = sandbox.commands.run("for fd in /proc/[0-9]*/fd/*; do readlink $fd; done 2>/dev/null; true").stdout
    return links.split().count(path)


def test_leaving_a_stream_early_releases_it(sandbox: Sandbox) -> None:
    path = f"/tmp/{_unique('held')}"
    # Sparse: far more than the transfer buffers on the way can hold, at no cost in disk space.
    sandbox.commands.run(f"truncate -s 1G {path}")
    stream = sandbox.files.read(path, format="stream")
    try:
        first = next(stream)
        assert first and first == bytes(len(first))
        eventually_sync(lambda: _holders(sandbox, path) >= 1, message="the open stream does not hold the file")
    finally:
        stream.close()
    eventually_sync(lambda: _holders(sandbox, path) == 0, message="the file is still open after the stream closed")
    sandbox.files.remove(path)
    assert not sandbox.files.exists(path)


def test_reading_a_missing_file_fails_before_streaming(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError, match="/tmp/missing"):
        sandbox.files.read("/tmp/missing", format="stream")


def test_symlinks_are_described_not_followed(sandbox: Sandbox) -> None:
    sandbox.commands.run("ln -sfn /etc/hostname /root/hostname-link")
    info = sandbox.files.get_info("/root/hostname-link")
    assert (info.type, info.symlink_target) == (FileType.SYMLINK, "/etc/hostname")


# Sandboxes


def test_connect_by_name(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    name = _unique("named")
    box = make_sandbox(name=name)
    assert box.name == name
    connected = Sandbox.connect(name, **connection)
    try:
        assert connected.id == box.id
        assert connected.commands.run("echo via name").stdout == "via name\n"
    finally:
        connected.close()


def test_list_filters_by_metadata(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    run = _unique("run")
    first = make_sandbox(metadata={"run": run, "n": "1"})
    second = make_sandbox(metadata={"run": run, "n": "2"})
    assert {info.id for info in Sandbox.list(metadata={"run": run}, **connection)} == {first.id, second.id}
    assert [info.id for info in Sandbox.list(metadata={"run": run, "n": "1"}, **connection)] == [first.id]
    assert Sandbox.list(metadata={"run": _unique("nothing")}, **connection) == []
    running = Sandbox.list(metadata={"run": run}, states=["running"], **connection)
    assert all(isinstance(info, SandboxInfo) and info.state == "running" for info in running)


def test_kill(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    box = make_sandbox(metadata={"suite": "e2e-kill"})
    assert box.is_running()
    assert Sandbox.get_info(box.id, **connection).state == "running"
    final = box.kill()
    assert final.state == SandboxState.KILLED
    assert final.ended_at is not None
    assert not box.is_running()
    with pytest.raises(SandboxError, match="already killed"):
        box.kill()
    with pytest.raises(SandboxError, match="already killed"):
        Sandbox.kill(box.id, **connection)
    with pytest.raises(NotFoundError):
        Sandbox.kill("sb-doesnotexist", **connection)
    with pytest.raises(SandboxError):
        box.commands.run("echo too late")
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED
    assert box.id not in {info.id for info in Sandbox.list(**connection)}
    assert box.id in {info.id for info in Sandbox.list(states=["killed"], **connection)}


def test_kill_by_id(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    box = make_sandbox()
    assert Sandbox.kill(box.id, **connection).state == SandboxState.KILLED
    assert not box.is_running()


def test_context_manager_kills(connection: dict[str, str]) -> None:
    with Sandbox.create(**connection) as box:
        assert box.commands.run("echo inside").stdout == "inside\n"
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED


def test_context_manager_tolerates_an_earlier_kill(connection: dict[str, str]) -> None:
    with Sandbox.create(**connection) as box:
        box.kill()
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED


async def test_list_follows_every_page(connection: dict[str, str], async_sandboxes: list[AsyncSandbox]) -> None:
    # The gateway answers 100 sandboxes a page unless asked otherwise; the SDK must follow the rest.
    count = 101
    run = _unique("pages")
    made = await asyncio.gather(
        *(AsyncSandbox.create(metadata={"run": run}, cpu=0.1, memory_mb=64, **connection) for _ in range(count)),
        return_exceptions=True,
    )
    async_sandboxes.extend(box for box in made if isinstance(box, AsyncSandbox))
    assert len(async_sandboxes) == count, [error for error in made if not isinstance(error, AsyncSandbox)][:3]
    ids = sorted(box.id for box in async_sandboxes)
    listed = await AsyncSandbox.list(metadata={"run": run}, **connection)
    assert sorted(info.id for info in listed) == ids
    await asyncio.gather(*(box.kill() for box in async_sandboxes))
    assert await AsyncSandbox.list(metadata={"run": run}, **connection) == []
    killed = Sandbox.list(metadata={"run": run}, states=["killed"], **connection)
    assert sorted(info.id for info in killed) == ids
    assert {info.state for info in killed} == {SandboxState.KILLED}


def test_lifetime_timeout_is_recorded(make_sandbox: Callable[..., Sandbox]) -> None:
    assert make_sandbox(timeout=600, cpu=0.5, memory_mb=256).get_info().timeout == 600


# Bad input


def test_unknown_template(connection: dict[str, str]) -> None:
    with pytest.raises(NotFoundError, match="no-such-template"):
        Sandbox.create(template="no-such-template", **connection)


@pytest.mark.parametrize("arguments", [{"cpu": -1}, {"memory_mb": 10**9}, {"name": "Bad Name!"}])
def test_invalid_arguments(connection: dict[str, str], arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(**arguments, **connection)


def test_duplicate_name(make_sandbox: Callable[..., Sandbox]) -> None:
    name = _unique("dup")
    make_sandbox(name=name)
    with pytest.raises(AlreadyExistsError):
        make_sandbox(name=name)


def test_wrong_api_key(local_stack: Any) -> None:
    with pytest.raises(AuthenticationError, match="not valid"):
        Sandbox.list(api_key="hk_" + "x" * 32, endpoint=local_stack.endpoint)
    with pytest.raises(AuthenticationError, match="malformed"):
        Sandbox.create(api_key="not-a-hutch-key", endpoint=local_stack.endpoint)


def test_missing_api_key(local_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUTCH_API_KEY", raising=False)
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path))
    with pytest.raises(AuthenticationError, match="hutch local up"):
        Sandbox.create(endpoint=local_stack.endpoint)


def test_a_service_behind_the_gateway_being_down_is_reported_as_such(
    local_stack: Any, make_sandbox: Callable[..., Sandbox], connection: dict[str, str]
) -> None:
    box = make_sandbox()
    # A handle with a channel of its own, so the failing call is the first this channel makes.
    fresh = Sandbox(AsyncSandbox(box.get_info(), Connection(resolve(**connection))))
    local_stack.kill("node-agent")
    try:
        failures: list[str] = []
        for call in (
            lambda: fresh.commands.run("true"),
            lambda: box.files.list("/"),
            lambda: box.files.read("/etc/hostname"),
        ):
            with pytest.raises(UnavailableError) as caught:
                call()
            failures.append(caught.value.message)
    finally:
        fresh.close()
        # The rest of the session uses this stack: bring the node-agent back before anything else.
        local_stack.restart("node-agent")
    for message in failures:
        # The gateway's own answer, naming what is down, and not a failure to reach the gateway.
        assert "is unreachable" in message and "node" in message, message
        assert "cannot reach the Hutch gateway" not in message, message
        assert "hutch local status" in message, message
    eventually_sync(
        lambda: box.commands.run("echo back").stdout == "back\n",
        timeout=30,
        retry_on=(AssertionError, UnavailableError),
    )


# Paths never lead out of the sandbox


def test_dot_dot_and_symlinks_stay_inside_the_sandbox(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox()
    # A fresh token in the sandbox's own /etc/shadow: reading it back proves which file was read,
    # since the host's /etc/shadow cannot contain it.
    token = uuid.uuid4().hex
    box.commands.run(f"echo {token} > /etc/shadow")
    for path in ("../../etc/shadow", "/root/../../../../etc/shadow", "../../../../../../../etc/shadow"):
        assert box.files.read(path) == f"{token}\n", path

    box.commands.run("ln -s /etc/shadow /root/shadow-link && ln -s / /root/root-link")
    assert box.files.read("/root/shadow-link") == f"{token}\n"
    assert box.files.read("/root/root-link/etc/shadow") == f"{token}\n"
    box.files.write("/root/root-link/tmp/through-link", "landed inside")
    assert box.commands.run("cat /tmp/through-link").stdout == "landed inside"

    inside = set(box.commands.run("ls -A /").stdout.split())
    assert {entry.name for entry in box.files.list("../../..")} == inside


# Tenants


def test_tenant_isolation(make_sandbox: Callable[..., Sandbox], local_stack: Any) -> None:
    name = _unique("tenant-a")
    victim = make_sandbox(name=name)
    victim.files.write("/root/secret.txt", "tenant A's secret")
    other = {"api_key": local_stack.create_tenant(_unique("tenant-b")), "endpoint": local_stack.endpoint}

    for ref in (victim.id, name):
        with pytest.raises(NotFoundError):
            Sandbox.get_info(ref, **other)
        with pytest.raises(NotFoundError):
            Sandbox.connect(ref, **other)
        with pytest.raises(NotFoundError):
            Sandbox.kill(ref, **other)
    every_state = [state for state in SandboxState if state is not SandboxState.UNSPECIFIED]
    assert victim.id not in {info.id for info in Sandbox.list(states=every_state, **other)}

    # A handle forged from tenant A's id, as tenant B would hold after learning the id.
    forged_info = SandboxInfo(
        id=victim.id, name=None, template="base", state=SandboxState.RUNNING, cpu=1, memory_mb=512
    )
    forged = Sandbox(AsyncSandbox(forged_info, Connection(resolve(**other))))
    try:
        with pytest.raises(NotFoundError):
            forged.commands.run("cat /root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.read("/root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.write("/root/secret.txt", "overwritten by B")
        with pytest.raises(NotFoundError):
            forged.files.remove("/root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.list("/root")
        with pytest.raises(NotFoundError):
            forged.kill()
    finally:
        forged.close()

    assert victim.is_running()
    assert victim.files.read("/root/secret.txt") == "tenant A's secret"
    assert victim.commands.run("echo unaffected").stdout == "unaffected\n"


def test_the_usual_tools_work(sandbox: Sandbox) -> None:
    # GNU coreutils' stat and ls -l use statx with flags an older gVisor refused; both classes must
    # give an agent the tools it expects.
    assert sandbox.commands.run("ls -l /etc/hostname").stdout.startswith("-rw-r--r--")
    assert sandbox.commands.run("stat -c %s /etc/hostname").stdout.strip().isdigit()
    assert sandbox.commands.run("python3 -c 'import sys; print(sys.version_info[0])'").stdout == "3\n"
    assert sandbox.commands.run("git --version").stdout.startswith("git version")
