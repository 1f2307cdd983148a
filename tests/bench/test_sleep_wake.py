"""Wake latency: the first command to a sleeping sandbox, from the call to its answer.

A sandbox created with an idle policy is left alone until it sleeps; a command then wakes it
(resume from its pause snapshot). Warm: the node it slept on still holds the snapshot, as when it
wakes where it slept. Cold: the node's copy is dropped first (NodeAgent.DropSnapshot), so the wake
fetches the snapshot from the snapshot-store, as on a node that never held it. The baseline,
measured in the same run, is the same command to the same sandbox once it runs. E2B resumes a
paused sandbox in about a second. Each sandbox holds 64 MiB of random data on disk, and under
gVisor as much in memory.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from figures import report, summary

from hutch import NotFoundError, Sandbox, SandboxState, Snapshot
from hutch.core.grpc_runtime import internal_metadata
from hutch.internal.v1 import node_agent_pb2, node_agent_pb2_grpc
from hutch.testing import eventually_sync

pytestmark = pytest.mark.bench

ROUNDS = 8
SLEEP_AFTER = 2
# What each sandbox holds while it sleeps: 64 MiB of incompressible data on disk and, under gVisor,
# as much in a sleeping process's memory, so that a cold wake has something to fetch.
STATE_ON_DISK = "head -c 64M /dev/urandom > /root/state.bin"
STATE_IN_MEMORY = "python3 -c 'import os, time; b = os.urandom(64 << 20); time.sleep(10**6)' >/dev/null 2>&1 &"


def drop_node_copy(local_stack: Any, snapshot_id: str) -> None:
    address = next(c.address for c in local_stack.status() if c.name == "node-agent")
    port = int(address.rsplit(":", 1)[1].split("/")[0])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        node_agent_pb2_grpc.NodeAgentStub(channel).DropSnapshot(
            node_agent_pb2.DropSnapshotRequest(snapshot_id=snapshot_id),
            metadata=internal_metadata(local_stack.internal_token),
        )


@pytest.mark.parametrize("cache", ["warm", "cold"])
@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_wake_on_request(local_stack: Any, isolation: str, cache: str) -> None:
    connection = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    box = Sandbox.create(isolation=isolation, memory_mb=256, auto_sleep_after=SLEEP_AFTER, **connection)
    wakes: list[float] = []
    awake: list[float] = []
    try:
        box.commands.run(STATE_ON_DISK)
        if isolation == "gvisor":
            box.commands.run(STATE_IN_MEMORY)
        for _ in range(ROUNDS):
            asleep = eventually_sync(
                lambda: (info := box.get_info()).state is SandboxState.PAUSED and info.asleep and info,
                timeout=90,
                interval=0.1,
            )
            if cache == "cold":
                assert asleep and asleep.paused_snapshot
                held = asleep.paused_snapshot
                # Once the store holds it: dropping the node's copy mid-upload would cancel the upload.
                eventually_sync(
                    lambda: Snapshot.get(held, **connection),  # noqa: B023 (called before the loop moves on)
                    timeout=60,
                    retry_on=(NotFoundError, AssertionError),
                )
                drop_node_copy(local_stack, held)
            start = time.perf_counter()
            assert box.commands.run("echo awake").stdout == "awake\n"
            wakes.append(time.perf_counter() - start)
            start = time.perf_counter()
            box.commands.run("echo awake")
            awake.append(time.perf_counter() - start)
    finally:
        box.kill()
        box.close()
    p50 = sorted(wakes)[len(wakes) // 2]
    base = sorted(awake)[len(awake) // 2]
    report(
        f"wake on request ({isolation}, {cache} node cache)",
        [
            summary("first command to a sleeping sandbox", wakes),
            summary("the same command once it runs", awake),
            f"{'ratio (p50)':<48} {p50 / base:8.1f}x   E2B resume: ~1000 ms",
        ],
    )
