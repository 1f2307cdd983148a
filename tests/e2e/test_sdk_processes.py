"""Background commands through the Python SDK against the whole local stack: they outlive the program
that started them, can be listed, followed again with their buffered output, fed stdin and killed.

Every sandbox a test creates is killed by a fixture finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hutch import (
    AsyncSandbox,
    CommandExitError,
    CommandOutput,
    ConnectionLostError,
    NotFoundError,
    ProcessInfo,
    Sandbox,
    SandboxError,
)
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the local stack."""
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module", params=["container", "gvisor"])
def sandbox(request: pytest.FixtureRequest, connection: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox per isolation class: background commands must behave the same under both."""
    box = Sandbox.create(metadata={"suite": "e2e-processes"}, isolation=request.param, **connection)
    try:
        yield box
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


def _marker() -> str:
    return uuid.uuid4().hex[:12]


def _process(sandbox: Sandbox, pid: int) -> ProcessInfo:
    found = [info for info in sandbox.commands.list() if info.pid == pid]
    assert found, f"process {pid} is not listed"
    return found[0]


def _ended(sandbox: Sandbox, pid: int) -> ProcessInfo:
    info = _process(sandbox, pid)
    assert not info.running, f"process {pid} still runs"
    return info


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs `script` in a new Python interpreter, as another program using the SDK would; returns its stdout."""
    ran = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


_START = """
import sys
from hutch import Sandbox

box = Sandbox.connect(sys.argv[1], api_key=sys.argv[2], endpoint=sys.argv[3])
handle = box.commands.run(sys.argv[4], background=True)
# Leaves only once the command has visibly started, and without waiting for it to end.
for output in handle:
    if "first" in handle.stdout:
        break
handle.disconnect()
print(handle.pid)
"""

_FOLLOW = """
import json, sys
from hutch import CommandExitError, Sandbox

box = Sandbox.connect(sys.argv[1], api_key=sys.argv[2], endpoint=sys.argv[3])
seen = []
handle = box.commands.connect(int(sys.argv[4]), on_stdout=seen.append)
box.files.write(sys.argv[5], "go")
try:
    handle.wait()
    code = 0
except CommandExitError as exc:
    code = exc.exit_code
print(json.dumps({"stdout": handle.stdout, "seen": "".join(seen), "code": code, "dropped": handle.dropped_bytes}))
"""


def test_a_background_command_outlives_the_program_that_started_it(
    sandbox: Sandbox, connection: dict[str, str]
) -> None:
    go = f"/tmp/go-{_marker()}"
    command = f"echo first; sleep 0.5; echo second; while [ ! -e {go} ]; do sleep 0.05; done; echo third; exit 3"
    where = (sandbox.id, connection["api_key"], connection["endpoint"])

    pid = int(_python(_START, *where, command))
    assert _process(sandbox, pid).running
    # A second program, which never saw the command start, follows it: the output from before it
    # connected is replayed, then the output it causes arrives live.
    followed = json.loads(_python(_FOLLOW, *where, str(pid), go))
    assert followed == {"stdout": "first\nsecond\nthird\n", "seen": "first\nsecond\nthird\n", "code": 3, "dropped": 0}
    info = eventually_sync(lambda: _ended(sandbox, pid))
    assert (info.exit_code, info.signal, info.cmd) == (3, 0, command)


def test_list_shows_background_commands_with_their_state(sandbox: Sandbox) -> None:
    mark = _marker()
    handle = sandbox.commands.run(f"sleep 300 # {mark}", background=True, cwd="/tmp")
    try:
        info = _process(sandbox, handle.pid)
        assert info.running and info.exit_code is None and not info.pty
        assert info.cmd == f"sleep 300 # {mark}" and info.user == "root" and info.cwd == "/tmp"
        assert info.started_at is not None and abs(time.time() - info.started_at.timestamp()) < 120
        assert sandbox.commands.kill(handle.pid)
        with pytest.raises(CommandExitError) as caught:
            handle.wait()
        assert (caught.value.exit_code, caught.value.error) == (128 + 9, "killed by signal 9")
        ended = eventually_sync(lambda: _ended(sandbox, handle.pid))
        assert (ended.exit_code, ended.signal) == (128 + 9, 9)
    finally:
        sandbox.commands.kill(handle.pid)


def test_kill_with_a_chosen_signal_and_a_missing_pid(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("trap 'echo got TERM; exit 4' TERM; while true; do sleep 0.05; done", background=True)
    eventually_sync(lambda: _process(sandbox, handle.pid).running)
    time.sleep(0.3)  # lets bash install its trap before the signal comes
    assert handle.kill("TERM")
    with pytest.raises(CommandExitError) as caught:
        handle.wait()
    assert caught.value.exit_code == 4 and "got TERM" in caught.value.stdout
    assert handle.exit_code == 4
    assert sandbox.commands.kill(999_999) is False


def test_stdin_reaches_a_background_command(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    handle.send_stdin("hello\n")
    eventually_sync(lambda: handle.stdout == "hello\n")
    sandbox.commands.send_stdin(handle.pid, b"world\n")
    eventually_sync(lambda: handle.stdout == "hello\nworld\n")
    handle.close_stdin()
    assert handle.wait().stdout == "hello\nworld\n"


def test_stdin_data_is_sent_then_closed(sandbox: Sandbox) -> None:
    data = os.urandom(3 * 1024 * 1024).hex()
    handle = sandbox.commands.run("wc -c", background=True, stdin=data)
    assert handle.wait().stdout.strip() == str(len(data))


def test_send_stdin_to_a_command_without_stdin_is_refused(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 300", background=True)
    try:
        with pytest.raises(SandboxError):
            sandbox.commands.send_stdin(handle.pid, "nobody reads this")
    finally:
        handle.kill()


def test_handlers_iteration_and_collected_output_agree(sandbox: Sandbox) -> None:
    threads: set[str] = set()
    received: list[str] = []

    def on_stdout(text: str) -> None:
        threads.add(threading.current_thread().name)
        received.append(text)

    handle = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done", background=True, on_stdout=on_stdout
    )
    outputs = list(handle)
    assert "".join(o.text for o in outputs if o.stream == "stdout") == "out1\nout2\nout3\n"
    assert "".join(o.text for o in outputs if o.stream == "stderr") == "err1\nerr2\nerr3\n"
    assert all(isinstance(o, CommandOutput) for o in outputs)
    result = handle.wait()
    assert (result.stdout, result.stderr, result.exit_code) == ("out1\nout2\nout3\n", "err1\nerr2\nerr3\n", 0)
    assert "".join(received) == result.stdout
    # Handlers run in the handle's own thread, not the caller's and not the SDK's event loop.
    assert threads == {"hutch-command-callbacks"}


def test_connect_replays_what_the_buffer_kept(sandbox: Sandbox) -> None:
    # 400 KB of output: more than the 256 KiB the sandbox keeps by default.
    handle = sandbox.commands.run("head -c 400000 /dev/zero | tr '\\0' a; echo; echo tail; sleep 300", background=True)
    try:
        eventually_sync(lambda: handle.stdout.endswith("tail\n"), timeout=30)
        handle.disconnect()
        again = sandbox.commands.connect(handle.pid)
        eventually_sync(lambda: again.stdout.endswith("tail\n"), timeout=30)
        assert again.dropped_bytes > 0
        # Both account for every byte the process wrote: kept, or counted as dropped (a live reader
        # that falls behind on a loaded machine drops some too, and says so).
        assert again.dropped_bytes + len(again.stdout) == handle.dropped_bytes + len(handle.stdout) == 400006
        assert handle.stdout.endswith(again.stdout)
        assert again.exit_code is None
        again.disconnect()
    finally:
        sandbox.commands.kill(handle.pid)


def test_a_disconnected_handle_says_how_to_follow_again(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 300", background=True)
    try:
        handle.disconnect()
        with pytest.raises(ConnectionLostError, match=rf"commands\.connect\({handle.pid}\)"):
            handle.wait()
        assert _process(sandbox, handle.pid).running
    finally:
        sandbox.commands.kill(handle.pid)


def test_connecting_to_a_missing_pid(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError):
        sandbox.commands.connect(999_999)


async def test_the_async_api(connection: dict[str, str]) -> None:
    box = await AsyncSandbox.create(**connection)
    try:
        chunks: list[str] = []

        async def collect(text: str) -> None:
            chunks.append(text)

        handle = await box.commands.run("echo one; sleep 0.2; echo two", background=True, on_stdout=collect)
        assert [output.text async for output in handle] == ["one\n", "two\n"]
        assert (await handle.wait()).stdout == "one\ntwo\n" == "".join(chunks)
        listed = await box.commands.list()
        assert handle.pid in [info.pid for info in listed]
        cat = await box.commands.run("cat", background=True, stdin=True)
        await cat.send_stdin(b"bytes")
        await cat.close_stdin()
        assert (await cat.wait()).stdout == "bytes"
    finally:
        await box.kill()


def test_a_lost_gateway_fails_the_handle_clearly_and_the_command_survives(
    local_stack: Any, connection: dict[str, str]
) -> None:
    box = Sandbox.create(**connection)
    try:
        handle = box.commands.run("while true; do echo tick; sleep 0.2; done", background=True)
        eventually_sync(lambda: "tick" in handle.stdout)
        local_stack.kill("gateway")
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionLostError) as caught:
                handle.wait()
            assert time.monotonic() - started < 30
            assert f"commands.connect({handle.pid})" in caught.value.message
            assert caught.value.pid == handle.pid
        finally:
            local_stack.restart("gateway")
        again = eventually_sync(lambda: Sandbox.connect(box.id, **connection), retry_on=(Exception,), timeout=60)
        followed = again.commands.connect(handle.pid)
        eventually_sync(lambda: followed.stdout.count("tick") >= 3, timeout=30)
        assert followed.kill(signal.SIGKILL)
        again.close()
    finally:
        box.kill()
        box.close()
