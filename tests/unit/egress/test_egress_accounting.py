"""Egress accounting's publishing rounds: nothing counted twice, nothing lost, when NATS fails midway."""

from __future__ import annotations

from typing import Any

import pytest

from hutch.core import errors
from hutch.core.events import Envelope
from hutch_egress_proxy.accounting import Accounting
from hutch_egress_proxy.registry import entry


class Bus:
    """Records what was published; refuses the subjects it is told to."""

    def __init__(self) -> None:
        self.published: list[Envelope[Any]] = []
        self.refuse: set[str] = set()

    async def publish(self, subject: str, envelope: Envelope[Any]) -> None:
        if any(part in subject for part in self.refuse):
            raise errors.Unavailable("NATS is away")
        self.published.append(envelope)

    def of(self, kind: str) -> list[Envelope[Any]]:
        return [e for e in self.published if e.kind.name == kind]


BOX = entry("sb-1", "tenant-a", "10.0.0.2", allow=["*"])


async def test_a_round_bills_bytes_out_and_totals_each_destination() -> None:
    bus = Bus()
    accounting = Accounting(bus.publish, "local", "node-1", "e1")
    accounting.count(BOX, "a.test:443", out=100, back=1000, requests=1)
    accounting.count(BOX, "b.test:80", out=5, refused=1)
    await accounting.flush()
    [usage] = bus.of("usage.egress")
    assert usage.payload.egress_bytes == 105 and usage.id == "sb-1.e1.1.egress"
    [traffic] = bus.of("egress.traffic")
    rows = {d.destination: (d.bytes_out, d.bytes_in, d.requests, d.refused) for d in traffic.payload.destinations}
    assert rows == {"a.test:443": (100, 1000, 1, 0), "b.test:80": (5, 0, 0, 1)}
    await accounting.flush()  # nothing new: nothing published
    assert len(bus.published) == 2


async def test_when_only_the_totals_fail_the_bill_is_not_repeated_and_new_bytes_are_not_lost() -> None:
    bus = Bus()
    accounting = Accounting(bus.publish, "local", "node-1", "e1")
    accounting.count(BOX, "a.test:443", out=100, requests=1)
    bus.refuse = {"traffic"}
    with pytest.raises(errors.Unavailable):
        await accounting.flush()
    accounting.count(BOX, "a.test:443", out=7, requests=1)
    bus.refuse = set()
    await accounting.flush()
    bills = bus.of("usage.egress")
    # Each byte billed exactly once, under distinct ids (a reused id would be dropped as a duplicate).
    assert [b.payload.egress_bytes for b in bills] == [100, 7]
    assert len({b.id for b in bills}) == 2
    [traffic] = bus.of("egress.traffic")
    assert [(d.bytes_out, d.requests) for d in traffic.payload.destinations] == [(107, 2)]


async def test_a_failed_bill_is_sent_again_whole() -> None:
    bus = Bus()
    accounting = Accounting(bus.publish, "local", "node-1", "e1")
    accounting.count(BOX, "a.test:443", out=100)
    bus.refuse = {"usage"}
    with pytest.raises(errors.Unavailable):
        await accounting.flush()
    bus.refuse = set()
    accounting.count(BOX, "a.test:443", out=1)
    await accounting.flush()
    assert [b.payload.egress_bytes for b in bus.of("usage.egress")] == [101]
    accounting.forget("sb-1")
    accounting.count(BOX, "a.test:443", out=2)  # registered again: its ids continue, never repeat
    await accounting.flush()
    bills = bus.of("usage.egress")
    assert [b.payload.egress_bytes for b in bills] == [101, 2]
    assert len({b.id for b in bills}) == 2
    assert len({t.id for t in bus.of("egress.traffic")}) == 2
