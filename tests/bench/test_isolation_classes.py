"""gVisor beside containers: create → first exec, idle memory per class, and how many fit on a node.

Baseline for the gVisor create: a raw `runsc run` of /bin/echo on the same rootfs, same run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from figures import percentile, report, summary, timed

from hutch import ResourceExhaustedError, Sandbox
from hutch_node_agent import oci, rootfs

pytestmark = pytest.mark.bench

RUNS = 20
IDLE_SAMPLE = 5
SANDBOX_MEMORY_MB = 256


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


def create_then_echo(connection: dict[str, str], isolation: str) -> float:
    start = time.perf_counter()
    sandbox = Sandbox.create(memory_mb=SANDBOX_MEMORY_MB, isolation=isolation, **connection)
    assert sandbox.commands.run("echo ready").stdout == "ready\n"
    elapsed = time.perf_counter() - start
    sandbox.kill()
    sandbox.close()
    return elapsed


def raw_runsc_runs(templates: Path, runs: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="runsc-baseline-"))
    bundle = work / "bundle"
    rootfs.mount_overlay([templates / "base" / "rootfs"], work / "upper", work / "work", bundle / "rootfs")
    try:
        config = oci.container_config(
            oci.ContainerSpec(
                sandbox_id="baseline",
                rootfs=str(bundle / "rootfs"),
                supervisor_argv=["/bin/echo", "ready"],
                supervisor_env=["PATH=/usr/bin:/bin"],
                supervisor_dir=str(work),
                supervisor_mount="/.hutch/rt",
                run_dir=str(work),
                cpu_millis=1000,
                memory_mb=SANDBOX_MEMORY_MB,
                pids_limit=1024,
                open_files_limit=4096,
                cgroup_path=f"/hutch-bench/{uuid.uuid4().hex[:8]}",
            )
        )
        (bundle / "config.json").write_text(json.dumps(config))
        samples: list[float] = []
        for _ in range(runs):
            out = work / "out"
            with timed(samples), out.open("wb") as sink:
                subprocess.run(
                    [
                        "runsc",
                        f"--root={work / 'state'}",
                        "--network=none",
                        "run",
                        f"--bundle={bundle}",
                        f"b{uuid.uuid4().hex[:12]}",
                    ],
                    stdout=sink,
                    stderr=subprocess.DEVNULL,
                    check=True,
                )
            assert out.read_bytes() == b"ready\n"
        return samples
    finally:
        rootfs.unmount(bundle / "rootfs")
        shutil.rmtree(work, ignore_errors=True)


def test_gvisor_create_to_first_command(connection: dict[str, str], local_stack: Any) -> None:
    create_then_echo(connection, "gvisor")
    gvisor = [create_then_echo(connection, "gvisor") for _ in range(RUNS)]
    container = [create_then_echo(connection, "container") for _ in range(RUNS)]
    templates = Path(local_stack.service_env("node-agent").get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
    baseline = raw_runsc_runs(templates, RUNS)
    report(
        "create -> first `echo`, per isolation class (gVisor target p50 <= 300 ms)",
        [
            summary("hutch, gvisor", gvisor),
            summary("hutch, container", container),
            summary("raw `runsc run /bin/echo` (same rootfs)", baseline),
            f"ratio hutch gvisor p50 / runsc p50: {percentile(gvisor, 50) / percentile(baseline, 50):.2f}x",
        ],
    )


def cgroup_memory_mib(sandbox_id: str) -> float:
    return int(Path(f"/sys/fs/cgroup/memory/hutch/{sandbox_id}/memory.usage_in_bytes").read_text()) / 2**20


def test_idle_memory_and_capacity_per_class(connection: dict[str, str], local_stack: Any) -> None:
    lines = []
    for isolation in ("container", "gvisor"):
        idle = [
            Sandbox.create(memory_mb=SANDBOX_MEMORY_MB, isolation=isolation, **connection) for _ in range(IDLE_SAMPLE)
        ]
        try:
            time.sleep(2)
            usage = [cgroup_memory_mib(s.id) for s in idle]
            lines.append(
                f"idle {isolation:<9} sandbox: {sum(usage) / len(usage):6.1f} MiB (cgroup: processes + page cache)"
            )
        finally:
            for sandbox in idle:
                sandbox.kill()
                sandbox.close()
    for isolation in ("container", "gvisor"):
        held: list[Sandbox] = []
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(4) as pool:
                while True:
                    batch = list(pool.map(_try_create, [connection] * 8, [isolation] * 8))
                    held += [s for s in batch if s is not None]
                    if any(s is None for s in batch):
                        break
            usage = sum(cgroup_memory_mib(s.id) for s in held)
            lines.append(
                f"{isolation:<9}: the scheduler placed {len(held)} sandboxes of {SANDBOX_MEMORY_MB} MB on this "
                f"{_node_memory_gib():.0f} GiB node before refusing ({time.perf_counter() - started:.1f} s); "
                f"they use {usage / 1024:.2f} GiB while idle"
            )
        finally:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(_kill, held))
    report("idle memory and node capacity per isolation class", lines)


def _try_create(connection: dict[str, str], isolation: str) -> Sandbox | None:
    # A tenth of a vCPU each, so that memory, not the CPU quota on offer, is what runs out.
    try:
        return Sandbox.create(memory_mb=SANDBOX_MEMORY_MB, cpu=0.1, isolation=isolation, **connection)
    except ResourceExhaustedError:
        return None


def _kill(sandbox: Sandbox) -> None:
    sandbox.kill()
    sandbox.close()


def _node_memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0
