"""Snapshots end to end on real nodes and the real snapshot-store (PostgreSQL + SeaweedFS):

- snapshot and restore of 100 MiB and 1 GiB workspaces of mixed file sizes: cold (a node that never
  saw the snapshot downloads it) and warm (the node that took it clones its frozen copy);
- an incremental snapshot after changing 1% of the 1 GiB workspace: bytes uploaded;
- forks of the 1 GiB sandbox on its node: time per child;
- pause and resume of a gVisor sandbox holding 256 MiB of memory;
- restic backing up and restoring the same workspace to the same S3 server, as the baseline.

Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from figures import report, summary

from hutch.testing.node import node_options, running_node
from hutch.testing.snapshot_store import TOKEN, ServiceProcess, store_settings
from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.node import Node
from hutch_node_agent.snapshot_store_link import StoreLink
from hutch_node_agent.supervisor.client import Exited, Output

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
TEMPLATES = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
FORKS = 5
# A workspace of mixed sizes, written by Python inside the sandbox: a quarter in a few large files,
# half in 1 MiB files, a quarter in 16 KiB files. Random bytes, so compression cannot flatter anything.
WORKSPACE = """
import os, sys
total = int(sys.argv[1]) * 1024 * 1024
os.makedirs('/root/ws/big', exist_ok=True); os.makedirs('/root/ws/mid', exist_ok=True)
os.makedirs('/root/ws/small', exist_ok=True)
for i in range(4):
    with open(f'/root/ws/big/{i}.bin', 'wb') as f: f.write(os.urandom(total // 16))
for i in range(total // 2 // (1 << 20)):
    with open(f'/root/ws/mid/{i}.bin', 'wb') as f: f.write(os.urandom(1 << 20))
for i in range(total // 4 // (16 << 10)):
    with open(f'/root/ws/small/{i}.bin', 'wb') as f: f.write(os.urandom(16 << 10))
"""
# Changes `percent` of the workspace's bytes, spread over its files: "rewrite" replaces whole files
# (what editors, compilers and package managers do), "patch" overwrites 64 KiB pieces in place
# (databases, images): the worst case for chunk-level deduplication.
CHANGE = """
import os, sys, random
percent, mode, seed = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]); rng = random.Random(seed)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk('/root/ws') for f in fs)
total = sum(os.path.getsize(f) for f in files); todo = int(total * percent / 100)
while todo > 0:
    path = rng.choice(files); size = os.path.getsize(path)
    if mode == 'rewrite':
        with open(path, 'wb') as f: f.write(os.urandom(size))
        todo -= size
    else:
        n = min(todo, 64 << 10, size)
        with open(path, 'r+b') as f: f.seek(rng.randrange(0, size - n + 1)); f.write(os.urandom(n))
        todo -= n
"""
HOLD_MEMORY = "import os, time\nblock = bytearray(os.urandom(256 << 20))\nwhile True: time.sleep(1)\n"


@pytest.fixture(scope="module")
def templates() -> Path:
    if not (TEMPLATES / "base" / "rootfs" / "usr" / "bin" / "python3").exists():
        pytest.skip(f"needs the base template in {TEMPLATES} (make base-template)")
    return TEMPLATES


@pytest.fixture
async def store(postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> AsyncIterator[str]:
    """The snapshot-store as its own process (as deployed), not sharing this process's interpreter."""
    settings = store_settings(postgres_dsn, s3_server, s3_bucket, tmp_path / "regional", cache_bytes=4 << 30)
    process = ServiceProcess(settings, tmp_path / "snapshot-store.log")
    client = await process.start()
    await client.close()
    try:
        yield process.address
    finally:
        process.kill()


@pytest.fixture
async def nodes(store: str, templates: Path, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    links = [await StoreLink.open(store, TOKEN, tmp_path / f"chunks-{n}", 4 << 30) for n in "ab"]
    options = {"templates_dir": templates, "disk_quota_mb": 4096, "volume_size_gb": 24}
    try:
        async with (
            running_node(node_options(tmp_path / "a", **options), snapshot_store=links[0]) as a,
            running_node(node_options(tmp_path / "b", **options), snapshot_store=links[1]) as b,
        ):
            yield a, b
    finally:
        for link in links:
            await link.close()


def request(sandbox_id: str, isolation: str = "container", memory_mb: int = 1024) -> SandboxRequest:
    return SandboxRequest(
        sandbox_id=sandbox_id, tenant_id="bench", template="base", cpu_millis=1000, memory_mb=memory_mb,
        isolation=isolation,
    )  # fmt: skip


def new_id() -> str:
    return f"sb-{uuid.uuid4().hex[:20]}"


async def run(node: Node, sandbox_id: str, args: list[str], background: bool = False) -> str:
    out: list[str] = []
    code = -1
    session = await node.manager.supervisor(sandbox_id).exec({"args": args, "env": {}, "background": background})
    if background:
        await session.close()
        return ""
    async with session:
        async for event in session:
            if isinstance(event, Output):
                out.append(event.data.decode(errors="replace"))
            elif isinstance(event, Exited):
                code = event.exit_code
    assert code == 0, "".join(out)
    return "".join(out)


def rate(size: int, seconds: float) -> str:
    return f"{seconds:7.2f} s  {size / MiB / seconds:8.1f} MB/s"


async def checksum(node: Node, sandbox_id: str) -> str:
    return await run(node, sandbox_id, ["sh", "-c", "cd /root/ws && find . -type f | sort | xargs md5sum | md5sum"])


async def workspace_round(a: Node, b: Node, size_mib: int, lines: list[str]) -> tuple[str, float, float]:
    """Snapshot, warm and cold restore of a fresh workspace; returns the parent sandbox (still
    running) and the seconds the cold snapshot and the cold restore took."""
    parent = new_id()
    await a.manager.create(request(parent))
    await run(a, parent, ["python3", "-c", WORKSPACE, str(size_mib)])
    expected = await checksum(a, parent)

    start = time.perf_counter()
    record = await a.snapshots.take(parent)
    snapshot_s = time.perf_counter() - start
    size = record.logical_bytes
    lines.append(f"{size_mib:>5} MiB snapshot (freeze + upload, cold) {rate(size, snapshot_s)}")

    fresh, child = new_id(), new_id()
    start = time.perf_counter()
    await a.manager.create(request(fresh))
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    await a.manager.create(request(child), await a.snapshots.source("bench", record.id, "container"))
    warm_s = time.perf_counter() - start
    lines.append(
        f"{size_mib:>5} MiB restore, warm (same node)      {warm_s * 1000:7.1f} ms to running "
        f"(a fresh sandbox: {plain_s * 1000:.1f} ms)"
    )

    cold_child = new_id()
    start = time.perf_counter()
    source = await b.snapshots.source("bench", record.id, "container")
    fetched_s = time.perf_counter() - start
    await b.manager.create(request(cold_child), source)
    cold_s = time.perf_counter() - start
    lines.append(
        f"{size_mib:>5} MiB restore, cold (other node)     {rate(size, cold_s)}  (download+unpack {fetched_s:.2f} s)"
    )
    assert await checksum(b, cold_child) == expected
    for node, sandbox in ((a, child), (a, fresh), (b, cold_child)):
        await node.manager.kill(sandbox, "killed")
    return parent, snapshot_s, cold_s


class Restic:
    """restic with a repository of its own on the same S3 server: the baseline."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self._bucket = f"restic-{uuid.uuid4().hex[:8]}"
        self._env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "RESTIC_PASSWORD": "bench",
            "RESTIC_REPOSITORY": f"s3:http://{s3.endpoint}/{self._bucket}",
            "RESTIC_CACHE_DIR": tempfile.mkdtemp(prefix="restic-cache-"),
        }

    async def run(self, *args: str, cwd: Path | None = None) -> float:
        def call() -> float:
            start = time.perf_counter()
            done = subprocess.run(["restic", *args], cwd=cwd, env=self._env, capture_output=True, text=True)
            assert done.returncode == 0, f"restic {args[0]} failed: {done.stderr.strip()}"
            return time.perf_counter() - start

        return await asyncio.to_thread(call)

    def stored_bytes(self) -> int:
        objects = self._s3.client().list_objects(self._bucket, recursive=True)
        return sum(o.size or 0 for o in objects)


async def incremental(a: Node, parent: str, restic: Restic | None, lines: list[str]) -> None:
    """1% changed, both ways, each followed by a snapshot (and a restic backup of the same tree)."""
    for seed, mode in enumerate(("rewrite", "patch")):
        await run(a, parent, ["python3", "-c", CHANGE, "1", mode, str(seed)])
        start = time.perf_counter()
        record = await a.snapshots.take(parent)
        took = time.perf_counter() - start
        share = record.uploaded_bytes / record.logical_bytes * 100
        baseline = ""
        if restic is not None:
            before = restic.stored_bytes()
            await restic.run("backup", "--quiet", ".", cwd=a.layout.frozen_layers / record.id / "upper")
            added = restic.stored_bytes() - before
            baseline = f"  (restic: {added / MiB:.1f} MiB = {added / record.logical_bytes * 100:.2f}%)"
        lines.append(
            f" 1024 MiB incremental, 1% {mode:<8}       {took:7.2f} s  uploaded {record.uploaded_bytes / MiB:6.1f} MiB "
            f"= {share:5.2f}%{baseline}"
        )


async def forks(a: Node, parent: str, lines: list[str]) -> None:
    start = time.perf_counter()
    fork = await a.snapshots.take(parent, purpose="fork", wait=False)
    captured = time.perf_counter() - start
    per_child: list[float] = []
    children = []
    for _ in range(FORKS):
        child = new_id()
        start = time.perf_counter()
        await a.manager.create(request(child), await a.snapshots.source("bench", fork.id, "container"))
        per_child.append(time.perf_counter() - start)
        children.append(child)
    lines.append(f" 1024 MiB fork: capture {captured * 1000:.1f} ms, then per child:")
    lines.append("   " + summary("fork child to running (same node)", per_child))
    await a.snapshots.wait_uploaded(fork.id)
    for child in children:
        await a.manager.kill(child, "killed")


async def restic_first(
    a: Node, parent: str, restic: Restic, snapshot_s: float, cold_s: float, lines: list[str]
) -> None:
    """restic backing up and restoring the same tree as the first 1 GiB snapshot, first time for both."""
    record = await a.snapshots.take(parent)
    await restic.run("init")
    backup_s = await restic.run("backup", "--quiet", ".", cwd=a.layout.frozen_layers / record.id / "upper")
    target = Path(tempfile.mkdtemp(prefix="restic-restore-"))
    restore_s = await restic.run("restore", "latest", "--target", str(target))
    shutil.rmtree(target, ignore_errors=True)
    lines.append(f"restic backup of the same 1 GiB          {backup_s:7.2f} s")
    lines.append(f"restic restore of the same 1 GiB         {restore_s:7.2f} s")
    lines.append(
        f"  Hutch / restic: snapshot {snapshot_s / backup_s:.2f}x the time, "
        f"cold restore {cold_s / restore_s:.2f}x the time (below 1: Hutch is faster)"
    )


async def pause_resume(a: Node, b: Node, lines: list[str]) -> None:
    sandbox_id = new_id()
    await a.manager.create(request(sandbox_id, "gvisor", memory_mb=768))
    await run(a, sandbox_id, ["python3", "-c", HOLD_MEMORY], background=True)
    await asyncio.sleep(3)  # the 256 MiB are allocated and filled
    start = time.perf_counter()
    local = await a.snapshots.take(sandbox_id, purpose="pause", stop=True, wait=False)
    paused = time.perf_counter() - start
    await a.snapshots.wait_uploaded(local.id)
    stored = time.perf_counter() - start
    start = time.perf_counter()
    await a.manager.create(request(sandbox_id, "gvisor", 768), await a.snapshots.source("bench", local.id, "gvisor"))
    resumed = time.perf_counter() - start
    await a.manager.kill(sandbox_id, "killed")
    start = time.perf_counter()
    await b.manager.create(request(sandbox_id, "gvisor", 768), await b.snapshots.source("bench", local.id, "gvisor"))
    resumed_cold = time.perf_counter() - start
    processes = await b.manager.supervisor(sandbox_id).processes()
    assert any(p.running and "bytearray" in (p.args[-1] if p.args else "") for p in processes)
    await b.manager.kill(sandbox_id, "killed")
    size = local.logical_bytes
    lines.append(
        f"gVisor 256 MiB pause (checkpoint, released)  {paused:6.2f} s   stored in S3 after {stored:.2f} s "
        f"({size / MiB:.0f} MiB image+layer)"
    )
    lines.append(f"gVisor 256 MiB resume, same node             {resumed:6.2f} s")
    lines.append(f"gVisor 256 MiB resume, other node (download) {resumed_cold:6.2f} s")
    lines.append("  (E2B publishes ~4 s per GiB to pause, ~1 s to resume)")


async def test_snapshot_figures(nodes: tuple[Node, Node], s3_server: Any) -> None:
    a, b = nodes
    lines: list[str] = []
    small, _, _ = await workspace_round(a, b, 100, lines)
    await a.manager.kill(small, "killed")
    parent, snapshot_s, cold_s = await workspace_round(a, b, 1024, lines)
    restic = Restic(s3_server) if shutil.which("restic") else None
    if restic is None:
        lines.append("restic: not installed (make deps), no baseline")
    else:
        await restic_first(a, parent, restic, snapshot_s, cold_s, lines)
    await incremental(a, parent, restic, lines)
    await forks(a, parent, lines)
    await a.manager.kill(parent, "killed")
    await pause_resume(a, b, lines)
    report("Snapshots on real nodes and the snapshot-store (a separate process)", lines)
