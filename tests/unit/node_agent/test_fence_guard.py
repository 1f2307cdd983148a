"""A fenced node stops what it runs, then heartbeats as a new run, then removes only the fence it read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from nats.js.errors import KeyNotFoundError

from hutch.core.nodes import Fence
from hutch_node_agent.fencing import FENCED, FenceGuard


@dataclass
class Entry:
    value: bytes
    revision: int


class FakeKV:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.deleted: list[tuple[str, int | None]] = []
        self.log: list[str] = []

    async def get(self, key: str) -> Entry:
        if key not in self.entries:
            raise KeyNotFoundError
        return self.entries[key]

    async def delete(self, key: str, last: int | None = None) -> bool:
        self.log.append("delete")
        self.deleted.append((key, last))
        self.entries.pop(key, None)
        return True


@dataclass
class Box:
    id: str


class FakeManager:
    def __init__(self, ids: list[str], log: list[str]) -> None:
        self.running = {i: Box(i) for i in ids}
        self.log = log

    def all(self) -> list[Box]:
        return list(self.running.values())

    async def kill(self, sandbox_id: str, reason: str) -> bool:
        self.log.append(f"kill {sandbox_id} {reason}")
        return self.running.pop(sandbox_id, None) is not None


def guard(kv: FakeKV, manager: FakeManager) -> FenceGuard:
    return FenceGuard(cast(Any, kv), "n1", cast(Any, manager))


async def test_an_unfenced_node_changes_nothing() -> None:
    kv = FakeKV()
    manager = FakeManager(["sb-1"], kv.log)

    async def beat() -> None:
        kv.log.append("beat")

    assert await guard(kv, manager).clear(beat) is False
    assert kv.log == [] and manager.all() != []


async def test_a_fenced_node_stops_everything_beats_then_clears_its_fence() -> None:
    kv = FakeKV()
    fence = Fence(node_id="n1", fenced_at=datetime(2024, 5, 1, tzinfo=UTC), epoch=datetime(2024, 4, 1, tzinfo=UTC))
    kv.entries["n1"] = Entry(fence.encode(), revision=7)
    manager = FakeManager(["sb-1", "sb-2"], kv.log)

    async def beat() -> None:
        kv.log.append("beat")

    g = guard(kv, manager)
    assert await g.fenced() == fence
    assert await g.clear(beat) is True
    assert kv.log == [f"kill sb-1 {FENCED}", f"kill sb-2 {FENCED}", "beat", "delete"]
    assert kv.deleted == [("n1", 7)]
    assert await g.fenced() is None


async def test_a_node_that_cannot_stop_its_sandboxes_stays_fenced_and_silent() -> None:
    kv = FakeKV()
    kv.entries["n1"] = Entry(Fence(node_id="n1", fenced_at=datetime.now(UTC)).encode(), revision=3)
    manager = FakeManager(["sb-1"], kv.log)

    async def refuse(sandbox_id: str, reason: str) -> bool:
        raise RuntimeError("crun failed")

    manager.kill = refuse  # type: ignore[method-assign]

    async def beat() -> None:
        kv.log.append("beat")

    with pytest.raises(RuntimeError):
        await guard(kv, manager).clear(beat)
    assert "beat" not in kv.log and kv.deleted == []
