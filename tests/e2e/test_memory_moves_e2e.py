"""A gVisor sandbox with automatic memory whose node runs out of room is moved to a node that has
it, with its memory and processes, instead of being capped where it is.

A second node-agent (an `ExtraNode`) offers only 1200 MB; the scheduler packs (fullest node that fits
first), so a fresh tenant's sandbox lands there. A process in it grows to 1400 MiB in steps: once
the second node cannot give the next step, the sandbox is paused and resumed at the size it needs on
`local-1`, and the process carries on where it was.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import Sandbox, SandboxState
from hutch.testing import eventually_sync
from hutch.testing.extra_node import ExtraNode

pytestmark = pytest.mark.e2e

# Grows by 64 MiB every half second to 1400 MiB, writing how far it got; then holds it.
GROWER = (
    "python3 -c 'import time\n"
    "held = []\n"
    "for step in range(1, 23):\n"
    "    held.append(bytearray(64 * 2**20))\n"
    '    open("/tmp/grown", "w").write(str(step * 64))\n'
    "    time.sleep(0.5)\n"
    "time.sleep(3600)\n' >/dev/null 2>&1"
)


@pytest.fixture
def small_node(local_stack: Any, server_tmp_root: Path) -> Iterator[ExtraNode]:
    # The scheduler packs by default: the fullest node that fits comes first.
    node = ExtraNode(local_stack, Path(tempfile.mkdtemp(prefix="n2-", dir=server_tmp_root)) / "root", memory_mb="1200")
    node.root.mkdir()
    node.start()
    time.sleep(3)  # its first heartbeats reach the scheduler and the gateway
    try:
        yield node
    finally:
        node.retire()


def test_a_gvisor_sandbox_that_outgrows_its_node_moves_with_its_processes(
    local_stack: Any, small_node: ExtraNode
) -> None:
    key = local_stack.create_tenant(f"moves-{uuid.uuid4().hex[:8]}")
    box = Sandbox.create(
        isolation="gvisor", memory_mb=256, memory_ceiling_mb=2048, api_key=key, endpoint=local_stack.endpoint
    )
    try:
        assert small_node.holds(box.id)
        grower = box.commands.run(GROWER, background=True)
        on_local_1 = local_stack.home / "local" / "node-1" / "sandboxes" / box.id
        eventually_sync(lambda: on_local_1.exists() and not small_node.holds(box.id), timeout=180, interval=0.5)

        # It runs on local-1 at the size it needed, and the same process finishes growing there.
        eventually_sync(lambda: box.commands.run("cat /tmp/grown").stdout.strip() == "1408", timeout=120)
        info = box.get_info()
        assert info.state is SandboxState.RUNNING and info.memory_mb > 1200
        assert info.memory_mb <= 2048
        processes = {p.pid: p for p in box.commands.list()}
        assert processes[grower.pid].running
    finally:
        box.kill()
        box.close()
