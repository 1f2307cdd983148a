"""Create and exec latency for a sandbox in the caller's region against one in the other region.

Both regions run on this machine (`hutch local up --regions 2`), so the figures measure what the
platform adds for crossing regions (the index lookup, the second gateway, the NATS gateway link),
not distance: on a real installation add the round trip between the regions to each far call.
The caller always talks to the first region's gateway; "far" sandboxes run in the second region.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from figures import percentile, report, summary

from hutch import Sandbox

pytestmark = pytest.mark.bench

CREATES = 10
EXECS = 60


def gateway_region(stack: Any) -> str:
    return str(stack.service_env("gateway")["HUTCH_REGION"])


def test_calls_to_the_other_region_against_the_callers_own(two_regions: Any) -> None:
    first, second = two_regions.first, two_regions.second
    connection = {"api_key": first.api_key, "endpoint": first.endpoint}
    figures: dict[str, tuple[list[float], list[float]]] = {}
    for label, region in (("own region", gateway_region(first)), ("other region", gateway_region(second))):
        creates: list[float] = []
        execs: list[float] = []
        for _ in range(CREATES):
            start = time.perf_counter()
            box = Sandbox.create(region=region, cpu=0.5, memory_mb=256, **connection)
            assert box.commands.run("true").exit_code == 0
            creates.append(time.perf_counter() - start)
            box.kill()
            box.close()
        box = Sandbox.create(region=region, cpu=0.5, memory_mb=256, **connection)
        try:
            # By id through the first region's gateway, as a client holding it would call it.
            far = Sandbox.connect(box.id, **connection)
            try:
                for _ in range(EXECS):
                    start = time.perf_counter()
                    assert far.commands.run("true").exit_code == 0
                    execs.append(time.perf_counter() - start)
            finally:
                far.close()
        finally:
            box.kill()
            box.close()
        figures[label] = (creates, execs)
    own_creates, own_execs = figures["own region"]
    far_creates, far_execs = figures["other region"]
    report(
        "create → first command, and exec round trip, through the first region's gateway",
        [
            summary("create + first command, own region", own_creates),
            summary("create + first command, other region", far_creates),
            f"{'create ratio other/own (p50)':<48} {percentile(far_creates, 50) / percentile(own_creates, 50):8.2f}x",
            summary("exec round trip, own region", own_execs),
            summary("exec round trip, other region", far_execs),
            f"{'exec ratio other/own (p50)':<48} {percentile(far_execs, 50) / percentile(own_execs, 50):8.2f}x",
        ],
    )
