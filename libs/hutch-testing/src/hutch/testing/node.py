"""A real node, in-process, for tests and benchmarks: crun and runsc, the quota volume, sandbox
networks and user namespaces, all on a private root under the caller's folder."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hutch.testing.templates import BUSYBOX, make_busybox_template
from hutch_node_agent import host
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.node import Node, assemble
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.snapshots import SnapshotStoreLink
from hutch_node_agent.supervisor.client import Exited, Output

# Each test node gets its own /24 out of this /16, apart from the default pool a local stack uses,
# so test nodes never share addresses with each other or with a stack running beside them.
_POOLS = (f"100.97.{n}.0/24" for n in itertools.count(1))


def require_node_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("running sandboxes needs root")
    if shutil.which("crun") is None or not BUSYBOX.exists():
        pytest.skip("needs crun and busybox-static")


def node_options(base: Path, **overrides: Any) -> NodeOptions:
    """Options for a test node under `base`, with the busybox template installed."""
    make_busybox_template(base / "templates" / "busybox")
    values: dict[str, Any] = {
        "id": f"t-{uuid.uuid4().hex[:8]}",
        "root_dir": base / "root",
        "templates_dir": base / "templates",
        "build_base_template": False,
        "cgroup_parent": f"hutch-test-{uuid.uuid4().hex[:8]}",
        "sandbox_network": next(_POOLS),
        "volume_size_gb": 2,
        "disk_quota_mb": 256,
    }
    values.update(overrides)
    return NodeOptions(**values)


@asynccontextmanager
async def running_node(
    options: NodeOptions,
    on_stopped: Callable[[LocalSandbox, str], Any] | None = None,
    snapshot_store: SnapshotStoreLink | None = None,
) -> AsyncIterator[Node]:
    """Assembles a node and dismantles it afterwards (sandboxes, networks, firewall, volume)."""
    require_node_tools()
    host.release_hybrid_cgroup_controllers()

    async def ignore(sandbox: LocalSandbox, reason: str) -> None:
        return None

    node = await assemble(options, on_stopped or ignore, snapshot_store=snapshot_store)
    try:
        yield node
    finally:
        await node.dismantle()


async def run_command(node: Node, sandbox_id: str, cmd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs `cmd` in a sandbox of `node` through its supervisor; returns (exit code, output)."""
    out: list[str] = []
    code = -1
    async with await node.manager.supervisor(sandbox_id).exec({"cmd": cmd, "env": env or {}}) as session:
        async for event in session:
            if isinstance(event, Output):
                out.append(event.data.decode(errors="replace"))
            elif isinstance(event, Exited):
                code = event.exit_code
    return code, "".join(out)
