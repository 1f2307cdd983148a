"""Node loss with two node-agents on one machine: the shared local stack's `local-1` and a second one (an
`ExtraNode`, called local-2 below) that this module starts against the same NATS and PostgreSQL.

`local-2` is SIGKILLed while it runs a sandbox, which keeps running as an orphan (what a network
partition looks like from the platform). The scheduler, restarted with short grace periods, declares
the node lost: it fences it and reports the sandbox lost. When `local-2` comes back it finds itself
fenced, stops the stale sandbox, heartbeats as a new run and takes sandboxes again.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import HutchError, Sandbox, SandboxState
from hutch.testing.extra_node import ExtraNode

pytestmark = pytest.mark.e2e

NODE_GRACE_S = 4
NODE_LOST_AFTER_S = 8


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout:.0f}s: {what}")
        time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def short_grace(local_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The scheduler, restarted to give up on a silent node within seconds (then back to defaults)."""
    monkeypatch.setenv("HUTCH_SCHEDULER__NODE_GRACE_S", str(NODE_GRACE_S))
    monkeypatch.setenv("HUTCH_SCHEDULER__NODE_LOST_AFTER_S", str(NODE_LOST_AFTER_S))
    monkeypatch.setenv("HUTCH_SCHEDULER__NODE_LOSS_CHECK_S", "0.5")
    local_stack.restart("scheduler")
    yield
    monkeypatch.undo()
    local_stack.restart("scheduler")


@pytest.fixture
def second_node(local_stack: Any, short_grace: None, server_tmp_root: Path) -> Iterator[ExtraNode]:
    node = ExtraNode(local_stack, Path(tempfile.mkdtemp(prefix="n2-", dir=server_tmp_root)) / "root")
    node.root.mkdir()
    node.start()
    time.sleep(3)  # its first heartbeats reach the scheduler
    try:
        yield node
    finally:
        node.retire()


def test_a_lost_node_is_fenced_and_its_stale_sandboxes_stopped_when_it_returns(
    local_stack: Any, second_node: ExtraNode
) -> None:
    key = local_stack.create_tenant(f"nodeloss-{uuid.uuid4().hex[:8]}")
    connection = {"api_key": key, "endpoint": local_stack.endpoint}
    created: list[Sandbox] = []
    try:
        # Placement spreads a tenant's sandboxes over the nodes: two land on local-2 within a few.
        for _ in range(8):
            created.append(Sandbox.create(memory_mb=256, **connection))
            on_2 = [s for s in created if second_node.holds(s.id)]
            if len(on_2) >= 2 and len(on_2) < len(created):
                break
        lost, saved = [s for s in created if second_node.holds(s.id)][:2]
        survivor = next(s for s in created if not second_node.holds(s.id))
        others = [s.id for s in created if s not in (lost, saved, survivor)]  # all on local-1
        lost.files.write("/root/state.txt", "only on local-2")
        orphan = second_node.init_pid(lost.id)
        # One of them has a snapshot: it is started again elsewhere from it, not reported lost.
        saved.files.write("/root/state.txt", "kept in a snapshot")
        saved.snapshot(name=f"before-loss-{uuid.uuid4().hex[:6]}")
        saved_orphan = second_node.init_pid(saved.id)

        killed_at = time.monotonic()
        second_node.kill()
        assert pid_alive(orphan), "a SIGKILLed node-agent leaves its sandboxes running"

        wait_until(lambda: lost.get_info().state == SandboxState.KILLED, NODE_LOST_AFTER_S + 30, "reported lost")
        detected_s = time.monotonic() - killed_at
        info = lost.get_info()
        assert "its node was lost" in (info.state_reason or ""), info.state_reason
        with pytest.raises(HutchError):
            lost.commands.run("true")
        # The other node's sandbox is untouched, and the stale one still runs (nobody could stop it).
        assert survivor.commands.run("echo ok").stdout == "ok\n"
        assert pid_alive(orphan)
        # The snapshotted one runs again, on local-1, as its snapshot left it.
        on_local_1 = local_stack.home / "local" / "node-1" / "sandboxes" / saved.id
        wait_until(
            lambda: saved.get_info().state == SandboxState.RUNNING and on_local_1.exists() or None,
            60,
            f"restarted from its snapshot ({saved.get_info()}; scheduler: "
            f"{local_stack.log('scheduler').read_text()[-2500:]}; node-agent: "
            f"{local_stack.log('node-agent').read_text()[-2500:]})",
        )
        assert saved.files.read("/root/state.txt") == "kept in a snapshot"

        second_node.start()
        wait_until(lambda: not pid_alive(orphan) and not pid_alive(saved_orphan), 60, "the stale sandboxes stop")
        wait_until(lambda: second_node.sandboxes() == [], 30, "local-2 holds nothing")
        # Not resurrected: the record stays KILLED, whatever the returning node did.
        time.sleep(2)
        assert lost.get_info().state == SandboxState.KILLED
        assert survivor.get_info().state == SandboxState.RUNNING
        assert saved.get_info().state == SandboxState.RUNNING
        assert saved.files.read("/root/state.txt") == "kept in a snapshot"

        # Back as a new run: local-2 takes sandboxes again (the tenant's next goes where it has fewest).
        fresh = Sandbox.create(memory_mb=256, **connection)
        created.append(fresh)
        assert second_node.holds(fresh.id)
        assert fresh.commands.run("echo back").stdout == "back\n"
        running = [s.id for s in Sandbox.list(**connection) if s.state == SandboxState.RUNNING]
        assert sorted(running) == sorted([survivor.id, saved.id, fresh.id, *others])
        print(f"node loss detected and reported {detected_s:.1f}s after the SIGKILL")
    finally:
        for sandbox in created:
            try:
                if sandbox.is_running():
                    sandbox.kill()
            except Exception:
                pass
            sandbox.close()
