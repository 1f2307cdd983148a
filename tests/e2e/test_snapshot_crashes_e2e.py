"""The node-agent SIGKILLed in the middle of a snapshot and of a restore, on the whole local stack.

Whatever moment the kill lands on, no snapshot is ever half visible: a name either names a snapshot
that restores byte for byte, or nothing. The sandbox survives its node-agent (sandboxes are not the
agent's children), and the next attempt succeeds.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from typing import Any

import pytest

from hutch import HutchError, NotFoundError, Sandbox, SandboxError, Snapshot
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e

BLOB_MB = 160


def digest_in(box: Sandbox) -> str:
    return box.commands.run("sha256sum /root/blob.bin | cut -d' ' -f1", timeout=120).stdout.strip()


def kill_node_agent_during(local_stack: Any, action: Any, after_s: float) -> tuple[object | None, BaseException | None]:
    """Runs `action` in a thread, SIGKILLs the node-agent `after_s` into it, starts it again, and
    returns what the action returned or raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # handed to the test, whatever it is
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(after_s)
    local_stack.kill("node-agent")
    time.sleep(1)
    local_stack.restart("node-agent")
    thread.join(timeout=240)
    assert not thread.is_alive(), "the call never returned after the node-agent came back"
    return outcome.get("value"), outcome.get("error")


def test_a_node_agent_killed_mid_snapshot_leaves_no_half_snapshot(local_stack: Any) -> None:
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    box = Sandbox.create(isolation="container", memory_mb=256, **auth)
    restored: list[Sandbox] = []
    try:
        box.commands.run(f"head -c {BLOB_MB}M /dev/urandom > /root/blob.bin", timeout=120)
        expected = digest_in(box)
        name = f"crash-{uuid.uuid4().hex[:8]}"

        _, error = kill_node_agent_during(local_stack, lambda: box.snapshot(name=name), after_s=1.0)
        if error is not None:
            assert isinstance(error, HutchError), repr(error)

        # The sandbox outlived its node-agent.
        eventually_sync(lambda: box.commands.run("true").exit_code == 0, timeout=60, retry_on=(HutchError,))
        assert digest_in(box) == expected

        # The name names a whole snapshot, or nothing (an upload the agent finished after its restart
        # counts as whole): never one that fails to restore.
        try:
            found = Snapshot.get(name, **auth)
        except NotFoundError:
            found = None
        if found is not None:
            copy = Sandbox.create(snapshot=found.id, **auth)
            restored.append(copy)
            assert digest_in(copy) == expected

        again = box.snapshot(name=f"{name}-again")
        copy = Sandbox.create(snapshot=again.id, **auth)
        restored.append(copy)
        assert digest_in(copy) == expected
    finally:
        for sandbox in [box, *restored]:
            try:
                sandbox.kill()
            except (NotFoundError, SandboxError):
                pass
            sandbox.close()


def test_a_node_agent_killed_mid_restore_starts_it_or_fails_it_cleanly(local_stack: Any) -> None:
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    source = Sandbox.create(isolation="container", memory_mb=256, **auth)
    made: list[Sandbox] = [source]
    try:
        source.files.write("/root/blob.bin", os.urandom(8 * 2**20))
        expected = hashlib.sha256(source.files.read("/root/blob.bin", format="bytes")).hexdigest()
        snap = source.snapshot(name=f"restore-crash-{uuid.uuid4().hex[:8]}")

        value, error = kill_node_agent_during(local_stack, lambda: Sandbox.create(snapshot=snap.id, **auth), 0.05)
        if error is None:
            assert isinstance(value, Sandbox)
            made.append(value)
            assert digest_in(value) == expected
        else:
            assert isinstance(error, HutchError), repr(error)

        again = Sandbox.create(snapshot=snap.id, **auth)
        made.append(again)
        assert digest_in(again) == expected
    finally:
        for sandbox in made:
            try:
                sandbox.kill()
            except (NotFoundError, SandboxError):
                pass
            sandbox.close()
