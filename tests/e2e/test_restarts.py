"""Killing and restarting services loses nothing: records survive, running sandboxes are found again.

These tests SIGKILL the node-agent and the gateway of the shared local stack and start them again,
then check through the SDK what a user would check.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hutch import Sandbox, SandboxState

pytestmark = pytest.mark.e2e


@pytest.fixture
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture
def sandbox(connection: dict[str, str]) -> Iterator[Sandbox]:
    created = Sandbox.create(memory_mb=256, **connection)
    yield created
    if created.is_running():
        created.kill()
    created.close()


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def init_pid(local_stack: Any, sandbox_id: str) -> int:
    record = local_stack.home / "local" / "node-1" / "sandboxes" / sandbox_id / "sandbox.json"
    pid = json.loads(record.read_text())["init_pid"]
    assert isinstance(pid, int) and pid > 0
    return pid


def test_a_node_agent_killed_and_restarted_finds_its_sandboxes_again(local_stack: Any, sandbox: Sandbox) -> None:
    sandbox.files.write("/root/before.txt", "written before the crash")
    background = sandbox.commands.run("sleep 600 >/dev/null 2>&1 & echo $!").stdout.strip()

    local_stack.kill("node-agent")
    local_stack.restart("node-agent")

    wait_until(lambda: sandbox.commands.run("true").exit_code == 0)
    assert sandbox.files.read("/root/before.txt") == "written before the crash"
    assert sandbox.commands.run(f"kill -0 {background} && echo alive").stdout == "alive\n"
    assert sandbox.get_info().state == SandboxState.RUNNING


def test_a_sandbox_that_ends_while_its_node_agent_is_down_is_reported(local_stack: Any, sandbox: Sandbox) -> None:
    pid = init_pid(local_stack, sandbox.id)
    local_stack.kill("node-agent")
    os.kill(pid, signal.SIGKILL)
    local_stack.restart("node-agent")

    wait_until(lambda: sandbox.get_info().state == SandboxState.KILLED)
    assert "exited" in (sandbox.get_info().state_reason or "")


def test_a_gateway_killed_and_restarted_keeps_every_record(
    local_stack: Any, connection: dict[str, str], sandbox: Sandbox
) -> None:
    name = f"survivor-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    named = Sandbox.create(name=name, memory_mb=256, metadata={"suite": "restarts"}, **connection)
    try:
        local_stack.kill("gateway")
        local_stack.restart("gateway")

        wait_until(lambda: Sandbox.connect(name, **connection).id == named.id)
        again = Sandbox.connect(name, **connection)
        assert again.commands.run("echo hi").stdout == "hi\n"
        listed = {info.id for info in Sandbox.list(metadata={"suite": "restarts"}, **connection)}
        assert named.id in listed
        assert sandbox.commands.run("echo still").stdout == "still\n"
        again.close()
    finally:
        named.kill()
        named.close()
