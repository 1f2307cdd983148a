"""Create → first command, exec round trip, and memory: the figures of the foundation.

Run with `make bench`. Every figure is printed with a baseline measured in the same run:
- create → first `echo` through the whole platform vs a raw `crun run` of the same rootfs;
- exec round trip through the gateway vs the same call straight to the sandbox's supervisor.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from figures import percentile, repeat, report, summary, timed

from hutch import Sandbox
from hutch_node_agent import oci
from hutch_node_agent.supervisor.client import SupervisorClient

pytestmark = pytest.mark.bench

SEQUENTIAL = 30
CONCURRENT = 10
CONCURRENT_ROUNDS = 3
EXEC_CALLS = 200


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


def create_then_echo(connection: dict[str, str]) -> float:
    start = time.perf_counter()
    sandbox = Sandbox.create(memory_mb=256, **connection)
    result = sandbox.commands.run("echo ready")
    elapsed = time.perf_counter() - start
    assert result.stdout == "ready\n"
    sandbox.kill()
    sandbox.close()
    return elapsed


def raw_crun_runs(templates_dir: Path, runs: int) -> list[float]:
    """`crun run` of /bin/echo on an overlay of the same base rootfs, with the same limits."""
    work = Path(tempfile.mkdtemp(prefix="crun-baseline-"))
    bundle, state = work / "bundle", work / "state"
    rootfs = bundle / "rootfs"
    for folder in (work / "upper", work / "work", rootfs, state):
        folder.mkdir(parents=True)
    lower = templates_dir / "base" / "rootfs"
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}",
            str(rootfs),
        ],
        check=True,
    )
    try:
        config = oci.container_config(
            oci.ContainerSpec(
                sandbox_id="baseline",
                rootfs=str(rootfs),
                supervisor_argv=["/bin/echo", "ready"],
                supervisor_env=["PATH=/usr/bin:/bin"],
                supervisor_dir=str(work),
                supervisor_mount="/.hutch/rt",
                run_dir=str(work / "state"),
                cpu_millis=1000,
                memory_mb=256,
                pids_limit=1024,
                open_files_limit=4096,
                cgroup_path=f"/hutch-bench/{uuid.uuid4().hex[:8]}",
            )
        )
        (bundle / "config.json").write_text(json.dumps(config))
        samples = []
        for _ in range(runs):
            with timed(samples):
                out = subprocess.run(
                    ["crun", f"--root={state}", "run", f"--bundle={bundle}", f"b{uuid.uuid4().hex[:12]}"],
                    capture_output=True,
                    check=True,
                )
            assert out.stdout == b"ready\n"
        return samples
    finally:
        subprocess.run(["umount", "--lazy", str(rootfs)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_create_to_first_command(connection: dict[str, str], local_stack: Any) -> None:
    create_then_echo(connection)  # warm up caches and channels
    sequential = [create_then_echo(connection) for _ in range(SEQUENTIAL)]
    concurrent: list[float] = []
    with ThreadPoolExecutor(CONCURRENT) as pool:
        for _ in range(CONCURRENT_ROUNDS):
            concurrent += list(pool.map(lambda _: create_then_echo(connection), range(CONCURRENT)))
    templates = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
    baseline = raw_crun_runs(templates, SEQUENTIAL)
    ratio = percentile(sequential, 50) / percentile(baseline, 50)
    report(
        "create -> first `echo` completes (target p50 <= 80 ms, p99 <= 200 ms)",
        [
            summary("hutch, sequential", sequential),
            summary(f"hutch, {CONCURRENT} concurrent", concurrent),
            summary("raw `crun run /bin/echo` (same rootfs, limits)", baseline),
            f"ratio hutch p50 / crun p50: {ratio:.2f}x",
        ],
    )


def test_exec_round_trip(connection: dict[str, str], local_stack: Any) -> None:
    sandbox = Sandbox.create(memory_mb=256, **connection)
    try:
        sandbox.commands.run("true")
        through_gateway = repeat(EXEC_CALLS, lambda: sandbox.commands.run("true"))
        socket = local_stack.home / "local" / "node-1" / "sandboxes" / sandbox.id / "run" / "supervisor.sock"
        direct = asyncio.run(_direct_exec(socket))
        report(
            "exec round trip of `true` (target p50 <= 10 ms through the gateway)",
            [
                summary("SDK -> gateway -> node-agent -> supervisor", through_gateway),
                summary("straight to the supervisor's socket", direct),
                f"ratio gateway p50 / direct p50: {percentile(through_gateway, 50) / percentile(direct, 50):.2f}x",
            ],
        )
    finally:
        sandbox.kill()
        sandbox.close()


async def _direct_exec(socket: Path) -> list[float]:
    client = SupervisorClient(socket)
    samples: list[float] = []
    for _ in range(EXEC_CALLS):
        with timed(samples):
            async with await client.exec({"cmd": "true", "env": {"PATH": "/usr/bin:/bin"}}) as session:
                async for _event in session:
                    pass
    return samples


def test_memory_per_service_and_per_idle_sandbox(connection: dict[str, str], local_stack: Any) -> None:
    lines = []
    for component in local_stack.status():
        if component.pid:
            lines.append(f"{component.name:<16} RSS {rss_kb(component.pid) / 1024:8.1f} MiB")
    idle = [Sandbox.create(memory_mb=256, **connection) for _ in range(5)]
    try:
        time.sleep(1)
        usages = []
        for sandbox in idle:
            usage = Path(f"/sys/fs/cgroup/memory/hutch/{sandbox.id}/memory.usage_in_bytes")
            usages.append(int(usage.read_text()) / 1024 / 1024)
        lines.append(f"idle sandbox (cgroup memory, supervisor + page cache): mean {sum(usages) / len(usages):.1f} MiB")
    finally:
        for sandbox in idle:
            sandbox.kill()
            sandbox.close()
    report("memory", lines)
