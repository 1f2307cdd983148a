"""A resume that found no room can be tried again, and succeeds once there is room.

A second node-agent (an `ExtraNode`) is the only node with the `busybox` template and offers 1200 MB. A
paused sandbox's room is taken by another; its resume is refused (RESOURCE_EXHAUSTED) and it stays
paused. Once the other is killed, the next resume starts it, as its pause left it. Each try is a
start of its own: were it not, the second try's events would be dropped as repeats of the first's
and the sandbox would hang in PENDING.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import ResourceExhaustedError, Sandbox, SandboxState
from hutch.testing import eventually_sync
from hutch.testing.extra_node import ExtraNode
from hutch.testing.templates import make_busybox_template

pytestmark = pytest.mark.e2e


@pytest.fixture
def only_node_with_busybox(local_stack: Any, server_tmp_root: Path) -> Iterator[ExtraNode]:
    base = Path(tempfile.mkdtemp(prefix="n2-", dir=server_tmp_root))
    make_busybox_template(base / "templates" / "busybox")
    (base / "root").mkdir()
    node = ExtraNode(local_stack, base / "root", memory_mb="1200", templates_dir=str(base / "templates"))
    node.start()
    time.sleep(3)  # its first heartbeats reach the scheduler and the gateway
    try:
        yield node
    finally:
        node.retire()


def test_a_resume_refused_for_lack_of_room_succeeds_when_tried_again_later(
    local_stack: Any, only_node_with_busybox: ExtraNode
) -> None:
    connection = {
        "api_key": local_stack.create_tenant(f"retry-{uuid.uuid4().hex[:8]}"),
        "endpoint": local_stack.endpoint,
    }
    paused = Sandbox.create(template="busybox", isolation="container", memory_mb=512, **connection)
    made = [paused]
    try:
        assert only_node_with_busybox.holds(paused.id)
        paused.files.write("/root/kept.txt", "before the pause")
        paused.pause()
        # Fits once the node's next heartbeat no longer counts the paused one.
        made.append(
            eventually_sync(
                lambda: Sandbox.create(template="busybox", isolation="container", memory_mb=1024, **connection),
                timeout=60,
                interval=1.0,
                retry_on=(ResourceExhaustedError,),
            )
        )

        with pytest.raises(ResourceExhaustedError):
            paused.resume()
        info = paused.get_info()
        assert info.state is SandboxState.PAUSED and "could not be resumed" in (info.state_reason or "")
        with pytest.raises(ResourceExhaustedError):  # and again, answered as promptly
            paused.resume()

        made.pop().kill()
        paused.resume()
        assert paused.get_info().state is SandboxState.RUNNING
        assert paused.files.read("/root/kept.txt") == "before the pause"
    finally:
        for box in made:
            box.kill()
            box.close()
