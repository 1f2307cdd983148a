"""Automatic memory through the SDK: a sandbox created with memory_mb="auto" grows as its processes
need, its record follows, and a bad ceiling is refused."""

from __future__ import annotations

from typing import Any

import pytest

from hutch import InvalidArgumentError, Sandbox
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_an_auto_sandbox_grows_past_its_start_and_its_record_follows(local_stack: Any, isolation: str) -> None:
    box = Sandbox.create(
        isolation=isolation,
        memory_mb="auto",
        memory_ceiling_mb=1024,
        api_key=local_stack.api_key,
        endpoint=local_stack.endpoint,
    )
    try:
        info = box.get_info()
        assert (info.memory_mb, info.memory_ceiling_mb) == (256, 1024)
        # Holds 500 MiB for a while, twice what the sandbox started with.
        result = box.commands.run(
            "python3 -c 'import time; b = b\"x\" * (500 * 2**20); print(len(b) >> 20); time.sleep(1)'"
        )
        assert result.stdout.strip() == "500"
        grown = eventually_sync(lambda: (m := box.get_info().memory_mb) > 500 and m, timeout=30, interval=0.2)
        assert grown <= 1024
    finally:
        box.kill()
        box.close()


def test_a_ceiling_below_the_start_or_above_the_maximum_is_refused(local_stack: Any) -> None:
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    with pytest.raises(InvalidArgumentError, match="must be at least the memory the sandbox starts with"):
        Sandbox.create(isolation="container", memory_mb=512, memory_ceiling_mb=256, **auth)
    with pytest.raises(InvalidArgumentError, match="memory_ceiling_mb must be at most"):
        Sandbox.create(isolation="container", memory_mb="auto", memory_ceiling_mb=10**6, **auth)
    with pytest.raises(InvalidArgumentError, match='or "auto"'):
        Sandbox.create(isolation="container", memory_mb="lots", **auth)  # type: ignore[arg-type]
