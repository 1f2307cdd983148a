"""An RL-style burst: 100 sandboxes asked for at once, each runs a short job, then all are killed.

Prints the time until all run, failures, the host's peak memory use, and how much memory the fleet
was allocated at its peak: once with fixed limits sized so no job is OOM-killed (the largest job's
need), once with automatic memory starting small, both measured in the same run. Each job holds
between 16 and 112 MiB for a second while using a little CPU, as rollouts of differing length do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from figures import percentile, report

from hutch import HutchError, Sandbox

pytestmark = pytest.mark.bench

FLEET = 100
NEEDS_MB = [16 + (i * 37) % 97 for i in range(FLEET)]  # 16..112 MiB, spread evenly
FIXED_MB = 128  # the largest need and the interpreter's own, rounded up
AUTO_START_MB, AUTO_CEILING_MB = 64, 256
JOB = (
    'python3 -c \'import time; b = b"x" * ({mb} * 2**20); t = time.time()\n'
    "while time.time() - t < 1: sum(range(1000))\n"
    "print(len(b) >> 20)'"
)


def host_memory_used_mb() -> int:
    fields = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(fields["MemTotal"].split()[0])
    available = int(fields["MemAvailable"].split()[0])
    return (total - available) // 1024


class PeakSampler:
    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def burst(local_stack: Any, memory: int | str, ceiling: int | None) -> list[str]:
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    boxes: list[Sandbox | None] = [None] * FLEET
    errors: list[str] = []
    created: list[float] = []
    baseline = host_memory_used_mb()

    def make(index: int) -> None:
        start = time.perf_counter()
        try:
            boxes[index] = Sandbox.create(
                isolation="container", memory_mb=memory, memory_ceiling_mb=ceiling, cpu=0.1, **auth
            )
            created.append(time.perf_counter() - start)
        except HutchError as exc:
            errors.append(f"create: {exc}")

    def work(index: int) -> int:
        box = boxes[index]
        if box is None:
            return 0
        try:
            out = box.commands.run(JOB.format(mb=NEEDS_MB[index]), timeout=120).stdout.strip()
            if out != str(NEEDS_MB[index]):
                errors.append(f"job {index}: {out!r}")
        except HutchError as exc:
            errors.append(f"job {index}: {exc}")
        return box.get_info().memory_mb

    with PeakSampler(host_memory_used_mb) as host, ThreadPoolExecutor(max_workers=FLEET) as pool:
        start = time.perf_counter()
        list(pool.map(make, range(FLEET)))
        all_running = time.perf_counter() - start
        allocated = sum(pool.map(work, range(FLEET)))
        for box in boxes:
            if box is not None:
                pool.submit(box.kill)
    for box in boxes:
        if box is not None:
            box.close()
    label = f"auto ({AUTO_START_MB} MiB up to {AUTO_CEILING_MB})" if ceiling else f"fixed {FIXED_MB} MiB"
    return [
        f"{label}:",
        f"  time to all {FLEET} running      {all_running:8.2f} s   (create p50 "
        f"{percentile(created, 50) * 1000:.0f} ms, p99 {percentile(created, 99) * 1000:.0f} ms)",
        f"  failures                      {len(errors):8d}   {errors[:3] if errors else ''}",
        f"  memory allocated to the fleet {allocated:8d} MiB at its peak",
        f"  host memory in use, peak      {host.peak - baseline:8d} MiB above idle",
    ]


def test_rl_burst(local_stack: Any) -> None:
    fixed = burst(local_stack, FIXED_MB, None)
    auto = burst(local_stack, AUTO_START_MB, AUTO_CEILING_MB)
    report(f"RL burst: {FLEET} sandboxes at once, a short job each, then killed", [*fixed, *auto])
