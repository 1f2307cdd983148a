"""Sleep on idle and wake on request, through the SDK and the CLI against the whole local stack.

A sandbox created with `auto_sleep_after` is paused by the platform once it has gone that long
without a call, an open stream or more than a trickle of CPU; the next request to it (by id or by
name) resumes it and then completes. A gVisor sandbox comes back with its processes; a container
with its files.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DeliverPolicy

from hutch import InvalidArgumentError, NotFoundError, Sandbox, SandboxError, SandboxInfo, SandboxState
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e

SLEEP_AFTER = 3
# Keeps a count in its own memory, writing it out each second; almost no CPU.
COUNTER = (
    "python3 -c 'import time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    '    open("/tmp/count", "w").write(str(i))\n'
    "    time.sleep(1)\n' >/dev/null 2>&1"
)


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture
def make_sandbox(connection: dict[str, str]) -> Iterator[Callable[..., Sandbox]]:
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox.create(memory_mb=256, **kwargs, **connection)
        made.append(box)
        return box

    yield make
    for box in made:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


def count(box: Sandbox) -> int:
    return int(box.commands.run("cat /tmp/count 2>/dev/null || echo 0").stdout.strip() or 0)


def asleep(box: Sandbox, timeout: float = 90) -> Any:
    def check() -> Any:
        info = box.get_info()
        return info.state is SandboxState.PAUSED and info.asleep and info

    return eventually_sync(check, timeout=timeout, interval=0.5, message=f"sandbox {box.id} never went to sleep")


def starts_of(local_stack: Any, sandbox_id: str) -> int:
    """How many times the sandbox has started (its first start and every wake), from the event stream."""

    async def count() -> int:
        client = await nats.connect(local_stack.nats_url)
        try:
            seen: set[str] = set()
            sub = await client.jetstream().subscribe(
                "hutch.local.sandbox.started", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            while True:
                try:
                    message = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    return len(seen)
                event_id = (message.headers or {}).get("Nats-Msg-Id", "")
                if event_id.startswith(f"{sandbox_id}.started"):
                    seen.add(event_id)
        finally:
            await client.close()

    return asyncio.run(count())


def hutch(local_stack: Any, *args: str) -> str:
    executable = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert executable, "the hutch console script is not installed"
    result = subprocess.run(
        [executable, *args], env=local_stack.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_an_idle_sandbox_sleeps_and_a_request_by_name_wakes_it_as_it_was(
    make_sandbox: Callable[..., Sandbox], local_stack: Any, isolation: str
) -> None:
    name = f"sleepy-{uuid.uuid4().hex[:8]}"
    box = make_sandbox(isolation=isolation, name=name, auto_sleep_after=SLEEP_AFTER)
    assert box.get_info().auto_sleep_after == SLEEP_AFTER
    box.files.write("/root/kept.txt", "still here\n")
    if isolation == "gvisor":
        # Detached: a handle that follows the process's output would keep the sandbox awake.
        box.commands.run(COUNTER, background=True).disconnect()
        eventually_sync(lambda: count(box) > 0, timeout=30)

    slept = asleep(box)
    assert slept.paused_snapshot and slept.state is SandboxState.PAUSED

    # A command by name through the CLI: the sandbox wakes, the command runs, nothing was lost.
    assert hutch(local_stack, "exec", name, "--", "cat", "/root/kept.txt") == "still here\n"
    info = box.get_info()
    assert info.state is SandboxState.RUNNING and not info.asleep
    if isolation == "gvisor":
        # Its counter ran on from where it stopped: a fresh start would begin at 1 again.
        first = count(box)
        eventually_sync(lambda: count(box) > first, timeout=30)
        assert first > 1
    assert starts_of(local_stack, box.id) == 2


def test_twenty_requests_to_a_sleeping_sandbox_cause_one_wake(
    make_sandbox: Callable[..., Sandbox], local_stack: Any
) -> None:
    box = make_sandbox(isolation="container", auto_sleep_after=SLEEP_AFTER)
    box.files.write("/root/kept.txt", "kept")
    asleep(box)
    assert starts_of(local_stack, box.id) == 1

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: box.commands.run("cat /root/kept.txt").stdout, range(20)))
    assert results == ["kept"] * 20
    assert starts_of(local_stack, box.id) == 2
    assert box.get_info().state is SandboxState.RUNNING


def test_a_busy_or_attached_sandbox_stays_awake(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox(isolation="container", auto_sleep_after=2)
    # Busy: a loop using a whole vCPU for eight seconds.
    box.commands.run("timeout 8 sh -c 'while :; do :; done' >/dev/null 2>&1 &")
    started = time.monotonic()
    while time.monotonic() - started < 6:
        assert box.get_info().state is SandboxState.RUNNING
        time.sleep(0.5)
    # Attached: a command streaming its output keeps it awake though it uses no CPU.
    handle = box.commands.run("sleep 6; echo done", background=True)
    assert handle.wait().stdout == "done\n"
    assert box.get_info().state is SandboxState.RUNNING
    asleep(box)  # and once both are over, it sleeps


def test_the_fleet_view_shows_how_long_each_running_sandbox_has_been_idle(
    make_sandbox: Callable[..., Sandbox], connection: dict[str, str]
) -> None:
    box = make_sandbox(isolation="container")  # no idle policy: the idle time is shown all the same

    def idle_at_least(seconds: float) -> SandboxInfo | None:
        info = box.get_info()
        assert info.idle_since is not None
        return info if (datetime.now(UTC) - info.idle_since).total_seconds() >= seconds else None

    box.commands.run("true")
    eventually_sync(lambda: idle_at_least(3), timeout=20)
    # Busy on its own, with no call to it: CPU counts as use.
    busy_from = datetime.now(UTC)
    box.commands.run("timeout 12 sh -c 'while :; do :; done' >/dev/null 2>&1 &")
    time.sleep(6)
    listed = {info.id: info for info in Sandbox.list(**connection)}
    since = listed[box.id].idle_since
    assert since is not None and since > busy_from + timedelta(seconds=2), (busy_from, since)
    # Once the loop ends it is idle again, counting from then.
    again = eventually_sync(lambda: idle_at_least(3), timeout=30)
    assert again is not None and again.idle_since is not None and again.idle_since > since


def test_bad_idle_policies_are_refused(connection: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match="auto_sleep_after"):
        Sandbox.create(isolation="container", auto_sleep_after=-1, **connection)
    with pytest.raises(InvalidArgumentError, match="between 2 and 604800 seconds"):
        Sandbox.create(isolation="container", auto_sleep_after=1, **connection)
    with pytest.raises(InvalidArgumentError, match="between 2 and 604800 seconds"):
        Sandbox.create(isolation="container", auto_sleep_after=8 * 24 * 3600, **connection)
