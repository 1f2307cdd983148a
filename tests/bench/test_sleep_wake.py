"""Wake latency: the first command to a sleeping sandbox, from the call to its answer.

A sandbox created with an idle policy is left alone until it sleeps; a command then wakes it
(resume from its pause snapshot, on the node that still holds it: the warm case, as a sandbox woken
on the node it slept on). The baseline, measured in the same run, is the same command to the same
sandbox once it runs. E2B resumes a paused sandbox in about a second.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from figures import report, summary

from hutch import Sandbox, SandboxState
from hutch.testing import eventually_sync

pytestmark = pytest.mark.bench

ROUNDS = 8
SLEEP_AFTER = 2


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_wake_on_request(local_stack: Any, isolation: str) -> None:
    box = Sandbox.create(
        isolation=isolation,
        memory_mb=256,
        auto_sleep_after=SLEEP_AFTER,
        api_key=local_stack.api_key,
        endpoint=local_stack.endpoint,
    )
    wakes: list[float] = []
    awake: list[float] = []
    try:
        for _ in range(ROUNDS):
            eventually_sync(
                lambda: (info := box.get_info()).state is SandboxState.PAUSED and info.asleep,
                timeout=90,
                interval=0.1,
            )
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
        f"wake on request ({isolation}, warm node cache)",
        [
            summary("first command to a sleeping sandbox", wakes),
            summary("the same command once it runs", awake),
            f"{'ratio (p50)':<48} {p50 / base:8.1f}x   E2B resume: ~1000 ms",
        ],
    )
