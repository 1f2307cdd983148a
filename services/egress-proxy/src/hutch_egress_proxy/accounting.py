"""Bytes out and in per sandbox and destination, published on NATS every few seconds.

Two events per sandbox and round: `usage.egress` (a UsageReport whose egress_bytes are the bytes the
sandbox sent out; the billing-meter adds it to its ledger as it does every usage report) and
`egress.traffic` (the same round split by destination, bytes both ways, requests and refusals; the
gateway keeps the running totals for `GetEgress`). Refusals and injections go out at once as
`egress.audit`. Event ids carry the proxy's epoch, so a restarted proxy never reuses one; counts
not yet published when the process dies are lost, never counted twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hutch.core import errors, events
from hutch.core.events import Envelope
from hutch.events.v1 import egress_pb2, usage_pb2
from hutch_egress_proxy.registry import SandboxEntry

log = logging.getLogger(__name__)

Publish = Callable[[str, Envelope[Any]], Awaitable[None]]
MAX_PENDING_AUDIT = 10_000


@dataclass
class Counters:
    bytes_out: int = 0
    bytes_in: int = 0
    requests: int = 0
    refused: int = 0

    def add(self, other: Counters) -> None:
        self.bytes_out += other.bytes_out
        self.bytes_in += other.bytes_in
        self.requests += other.requests
        self.refused += other.refused


@dataclass
class _Sandbox:
    """What one sandbox sent that is not out yet. Billing and the per-destination totals are
    published, and retried, separately (each with its own sequence), so that one going out and the
    other failing never counts bytes twice or loses them."""

    tenant_id: str
    since: datetime
    sequence: int = 0
    destinations: dict[str, Counters] = field(default_factory=lambda: defaultdict(Counters))
    billed_since: datetime | None = None
    billing_sequence: int = 0
    unbilled_out: int = 0


class Accounting:
    def __init__(self, publish: Publish | None, region: str, node_id: str, epoch: str) -> None:
        self._publish = publish
        self._region = region
        self._node_id = node_id
        self._epoch = epoch
        self._sandboxes: dict[str, _Sandbox] = {}
        # Sequences of forgotten meters: a sandbox registered again (resumed on this node) must not
        # reuse an event id, or its new usage would be dropped as a duplicate.
        self._sequences: dict[str, tuple[int, int]] = {}
        self._audit: list[Envelope[egress_pb2.EgressAudit]] = []
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- counting (called from the proxy's hooks; never blocks) ----------------------------

    def _meter(self, entry: SandboxEntry) -> _Sandbox:
        meter = self._sandboxes.get(entry.sandbox_id)
        if meter is None:
            traffic, billing = self._sequences.pop(entry.sandbox_id, (0, 0))
            meter = self._sandboxes[entry.sandbox_id] = _Sandbox(
                entry.tenant_id, datetime.now(UTC), sequence=traffic, billing_sequence=billing
            )
        return meter

    def count(
        self, entry: SandboxEntry, destination: str, out: int = 0, back: int = 0, requests: int = 0, refused: int = 0
    ) -> None:
        meter = self._meter(entry)
        meter.unbilled_out += out
        counters = meter.destinations[destination]
        counters.bytes_out += out
        counters.bytes_in += back
        counters.requests += requests
        counters.refused += refused

    def audit(
        self,
        entry: SandboxEntry,
        action: str,
        destination: str,
        reason: str = "",
        secrets: tuple[str, ...] = (),
        method: str = "",
        path: str = "",
    ) -> None:
        if len(self._audit) >= MAX_PENDING_AUDIT:
            return  # NATS has been away for long; the counters still tell the story
        now = datetime.now(UTC)
        payload = egress_pb2.EgressAudit(
            tenant_id=entry.tenant_id,
            sandbox_id=entry.sandbox_id,
            node_id=self._node_id,
            action=action,
            destination=destination,
            reason=reason,
            secrets=list(secrets),
            method=method,
            path=path[:512],
        )
        payload.at.FromDatetime(now)
        self._audit.append(
            Envelope(kind=events.EGRESS_AUDIT, payload=payload, tenant=entry.tenant_id, sandbox=entry.sandbox_id)
        )
        self._wake.set()

    # -- publishing ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + interval_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_round - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if loop.time() >= next_round:
                    next_round = loop.time() + interval_s
                    await self.flush()
                else:
                    await self._flush_audit()
            except errors.Unavailable as exc:
                log.warning("egress accounting waits for NATS: %s", exc.message)
        await self.flush()

    async def flush(self) -> None:
        """Publishes what was counted since the last round (and pending audit events)."""
        async with self._flush_lock:
            await self._flush_audit()
            now = datetime.now(UTC)
            for sandbox_id, meter in list(self._sandboxes.items()):
                if meter.unbilled_out:
                    billed, meter.unbilled_out = meter.unbilled_out, 0
                    try:
                        await self._publish_usage(sandbox_id, meter, billed, now)
                    except Exception:
                        meter.unbilled_out += billed  # try again next round
                        raise
                if not meter.destinations:
                    continue
                taken, meter.destinations = meter.destinations, defaultdict(Counters)
                try:
                    await self._publish_traffic(sandbox_id, meter, taken, now)
                except Exception:
                    for destination, counters in taken.items():  # try again next round
                        meter.destinations[destination].add(counters)
                    raise
                meter.since = now

    async def _flush_audit(self) -> None:
        if self._publish is None:
            self._audit.clear()
            return
        while self._audit:
            envelope = self._audit[0]
            await self._publish(envelope.kind.subject(self._region), envelope)
            self._audit.pop(0)

    async def _publish_usage(self, sandbox_id: str, meter: _Sandbox, bytes_out: int, now: datetime) -> None:
        if self._publish is None:
            return
        sequence = meter.billing_sequence + 1
        report = usage_pb2.UsageReport(
            tenant_id=meter.tenant_id,
            sandbox_id=sandbox_id,
            source=f"hutch://{self._region}/egress-proxy/{self._node_id}/{self._epoch}",
            sequence=sequence,
            egress_bytes=bytes_out,
        )
        report.window_start.FromDatetime(meter.billed_since or meter.since)
        report.window_end.FromDatetime(now)
        usage = Envelope(
            kind=events.USAGE_EGRESS,
            payload=report,
            tenant=meter.tenant_id,
            sandbox=sandbox_id,
            id=f"{sandbox_id}.{self._epoch}.{sequence}.egress",
        )
        await self._publish(usage.kind.subject(self._region), usage)
        meter.billing_sequence = sequence
        meter.billed_since = now

    async def _publish_traffic(
        self, sandbox_id: str, meter: _Sandbox, taken: dict[str, Counters], now: datetime
    ) -> None:
        if self._publish is None:
            return
        sequence = meter.sequence + 1
        traffic = egress_pb2.EgressTraffic(
            tenant_id=meter.tenant_id,
            sandbox_id=sandbox_id,
            node_id=self._node_id,
            destinations=[
                egress_pb2.EgressCounters(
                    destination=destination,
                    bytes_out=c.bytes_out,
                    bytes_in=c.bytes_in,
                    requests=c.requests,
                    refused=c.refused,
                )
                for destination, c in sorted(taken.items())
            ],
        )
        traffic.window_start.FromDatetime(meter.since)
        traffic.window_end.FromDatetime(now)
        per_destination = Envelope(
            kind=events.EGRESS_TRAFFIC,
            payload=traffic,
            tenant=meter.tenant_id,
            sandbox=sandbox_id,
            id=f"{sandbox_id}.{self._epoch}.{sequence}.traffic",
        )
        await self._publish(per_destination.kind.subject(self._region), per_destination)
        meter.sequence = sequence

    def forget(self, sandbox_id: str) -> None:
        """Drops a sandbox's meter once its counts are out (it was unregistered)."""
        meter = self._sandboxes.get(sandbox_id)
        if meter is not None and not meter.destinations and not meter.unbilled_out:
            del self._sandboxes[sandbox_id]
            self._sequences[sandbox_id] = (meter.sequence, meter.billing_sequence)
