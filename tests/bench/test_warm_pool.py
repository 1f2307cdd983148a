"""Create → first command with a warm pool, against a cold create of the same kind in the same run.

The cold creates run first, with no pool; then a pool of the kind is set up and each create takes a
member (the pool is waited for before each run, so every create is served warm). The figure a
user feels is the create call plus the first command; the target is 80 ms for a container and
300 ms for gVisor, and E2B resumes a paused sandbox in about 150 ms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from figures import percentile, report, summary

from hutch import Sandbox
from hutch.testing import eventually_sync

pytestmark = pytest.mark.bench

RUNS = 12
POOL_SIZE = 3
CPU, MEMORY_MB = 0.5, 256


def create_then_echo(connection: dict[str, str], isolation: str) -> tuple[float, str]:
    start = time.perf_counter()
    box = Sandbox.create(cpu=CPU, memory_mb=MEMORY_MB, isolation=isolation, **connection)
    assert box.commands.run("echo ready").stdout == "ready\n"
    elapsed = time.perf_counter() - start
    box.kill()
    box.close()
    return elapsed, box.id


def running_members(local_stack: Any, isolation: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(local_stack.service_env("gateway")["HUTCH_POSTGRES__DSN"])
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM gateway.sandboxes WHERE tenant_id = 'warm-pool' AND state = 'running' "
                    "AND isolation = $1 AND cpu_millis = $2 AND memory_mb = $3",
                    isolation,
                    round(CPU * 1000),
                    MEMORY_MB,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_create_from_a_warm_pool(local_stack: Any, isolation: str) -> None:
    connection = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    kind = ("--isolation", isolation, "--cpu", str(CPU), "--memory-mb", str(MEMORY_MB))
    cold = [create_then_echo(connection, isolation)[0] for _ in range(RUNS)]
    local_stack.admin("set-warm-pool", *kind, "--size", str(POOL_SIZE))
    warm: list[float] = []
    try:
        for _ in range(RUNS):
            eventually_sync(lambda: running_members(local_stack, isolation) == POOL_SIZE, timeout=120, interval=0.1)
            warm.append(create_then_echo(connection, isolation)[0])
    finally:
        local_stack.admin("set-warm-pool", *kind, "--size", "0")
        eventually_sync(lambda: running_members(local_stack, isolation) == 0, timeout=120)
    report(
        f"create → first command from a warm pool ({isolation})",
        [
            summary("warm pool member", warm),
            summary("cold start (no pool), same run", cold),
            f"{'speed-up (p50)':<48} {percentile(cold, 50) / percentile(warm, 50):8.1f}x",
        ],
    )
