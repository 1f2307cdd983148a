"""Usage metering at the source: every running sandbox's cgroup, sampled every second.

Each sampling round reads every running sandbox's counters (`cgroup_stats`), integrates its memory
in use, and, every `usage_report_interval_s` (aligned to the wall clock, so reports fall inside
ledger minutes), cuts one usage report per sandbox: the CPU time since the last report (a
difference of cumulative counters), the vCPUs and memory it held for that long, and the memory
in use. A sandbox's last report is cut when it stops, from counters read before its cgroup is
removed (`SandboxManager`'s on_releasing hook).

A report's event id is `<sandbox>.compute.<sequence>`. The journal (`usage_journal`) is saved
after every round and before anything is published, so a node-agent that dies at any point starts
again from the counters its last cut report ended at and publishes again every report it may not
have published: the same id again, which JetStream and the ledger each drop the second time. While
reports cannot be published, no new ones are cut; the next one simply covers a longer window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import events
from hutch.core.bus import Bus
from hutch.core.warm_pool import is_pool_member
from hutch.events.v1 import usage_pb2
from hutch_node_agent.cgroup_stats import CgroupStats, Counters
from hutch_node_agent.domain import LocalSandbox, SandboxRequest
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.usage_journal import SandboxMeter, UsageJournal

log = logging.getLogger(__name__)

Publish = Callable[[events.Envelope[usage_pb2.UsageReport]], Awaitable[None]]

JOURNAL_NAME: Final = "usage-journal.json"
# Reports published at once; the rest wait for a free slot.
PUBLISH_CONCURRENCY: Final = 64
_NS_PER_MS: Final = 1_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def report_id(meter: SandboxMeter, sequence: int) -> str:
    return f"{meter.sandbox_id}.compute{meter.incarnation}.{sequence}"


def meter_key(sandbox: LocalSandbox) -> str:
    """Meters are per start of a sandbox: a resumed one is metered afresh."""
    return sandbox.id + sandbox.request.incarnation


def _epoch_ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def new_meter(sandbox: LocalSandbox, now_ns: int) -> SandboxMeter:
    """State for a sandbox seen for the first time: its usage starts when it started running.

    The cgroup's counters start at zero when the runtime makes it, so the first report's CPU is
    everything since then (the runtime's own start-up included); for a warm pool member handed to
    a tenant, everything since the handover.
    """
    started = sandbox.started_at
    start_ns = min(now_ns, _epoch_ns(started)) if started is not None else now_ns
    return SandboxMeter(
        sandbox_id=sandbox.id,
        incarnation=sandbox.request.incarnation,
        tenant_id=sandbox.request.tenant_id,
        cpu_millis=sandbox.request.cpu_millis,
        memory_mb=sandbox.request.memory_mb,
        sequence=0,
        window_start_ns=start_ns,
        cpu_ns=sandbox.metered_from_cpu_ns,
        last_sample_ms=start_ns // _NS_PER_MS,
        init_pid=sandbox.init_pid,
    )


def observe(meter: SandboxMeter, counters: Counters, now_ns: int) -> None:
    """Adds the memory in use since the last sample to the meter's integral."""
    now_ms = now_ns // _NS_PER_MS
    meter.memory_byte_ms += counters.memory_bytes * max(0, now_ms - meter.last_sample_ms)
    meter.last_sample_ms = max(meter.last_sample_ms, now_ms)
    meter.peak_bytes = max(meter.peak_bytes, counters.memory_peak_bytes, counters.memory_bytes)


def cut(meter: SandboxMeter, counters: Counters | None, end_ns: int, source: str, final: bool) -> usage_pb2.UsageReport:
    """The report for [window start, end) and the meter moved on to `end`.

    Durations are differences of times floored to the unit, so consecutive reports add up to the
    whole time exactly: vCPU-nanoseconds are milli-vCPUs times microseconds.
    """
    start_ns = meter.window_start_ns
    end_ns = max(end_ns, start_ns)
    cpu_now = counters.cpu_ns if counters is not None else meter.cpu_ns
    running_ms = end_ns // _NS_PER_MS - start_ns // _NS_PER_MS
    used_mib_ms = meter.memory_byte_ms >> 20
    report = usage_pb2.UsageReport(
        tenant_id=meter.tenant_id,
        sandbox_id=meter.sandbox_id,
        source=source,
        sequence=meter.sequence + 1,
        window_start=_timestamp(start_ns),
        window_end=_timestamp(end_ns),
        final=final,
        running_ms=running_ms,
        # A counter below the last one means a new cgroup under the same name: count it whole.
        cpu_active_ns=cpu_now - meter.cpu_ns if cpu_now >= meter.cpu_ns else cpu_now,
        cpu_allocated_ns=meter.cpu_millis * (end_ns // 1000 - start_ns // 1000),
        memory_provisioned_mib_ms=meter.memory_mb * running_ms,
        memory_used_mib_ms=used_mib_ms,
        memory_peak_bytes=meter.peak_bytes,
        cpu_millis=meter.cpu_millis,
        memory_mb=meter.memory_mb,
    )
    meter.sequence += 1
    meter.window_start_ns = end_ns
    meter.cpu_ns = cpu_now
    meter.memory_byte_ms -= used_mib_ms << 20
    meter.final = meter.final or final
    meter.unsent.append(report.SerializeToString().hex())
    return report


class Metering:
    def __init__(
        self,
        stats: CgroupStats,
        journal: UsageJournal,
        publish: Publish,
        source: str,
        sample_interval_s: float = 1.0,
        report_interval_s: float = 10.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._stats = stats
        self._journal = journal
        self._publish = publish
        self._source = source
        self._sample_ns = int(sample_interval_s * 1e9)
        self._report_ns = int(report_interval_s * 1e9)
        self._clock = clock
        self._meters = journal.load()
        self._wake = asyncio.Event()
        # False until the sampling loop runs: releases before it come from the restart recovery,
        # for sandboxes that ended while no node-agent watched them.
        self._running = False
        self._next_report_ns = self._after(clock(), self._report_ns)

    @classmethod
    def for_node(cls, options: NodeOptions, region: str, bus: Bus) -> Metering:
        subject = events.USAGE_COMPUTE.subject(region)

        async def publish(envelope: events.Envelope[usage_pb2.UsageReport]) -> None:
            await bus.publish(subject, envelope, timeout_s=2.0)

        return cls(
            CgroupStats(options.cgroup_parent),
            UsageJournal(options.root_dir / JOURNAL_NAME),
            publish,
            f"hutch://{region}/node/{options.id}",
            options.usage_sample_interval_s,
            options.usage_report_interval_s,
        )

    @staticmethod
    def _after(now_ns: int, interval_ns: int) -> int:
        return (now_ns // interval_ns + 1) * interval_ns

    def meters(self) -> dict[str, SandboxMeter]:
        return self._meters

    def _forget(self, key: str) -> None:
        meter = self._meters.pop(key)
        self._stats.forget(meter.sandbox_id)

    # -- sampling ------------------------------------------------------------------------

    def sample(self, sandboxes: Iterable[LocalSandbox], now_ns: int, report: bool) -> None:
        """One round: every running sandbox's counters; with `report`, a report for each."""
        present = set()
        for sandbox in sandboxes:
            key = meter_key(sandbox)
            present.add(key)
            if sandbox.status != "running" or is_pool_member(sandbox.request.tenant_id):
                continue  # a pool member's time is the platform's until a tenant claims it
            meter = self._meters.get(key)
            if meter is None:
                meter = self._meters[key] = new_meter(sandbox, now_ns)
            if meter.final:
                continue
            if sandbox.init_pid != meter.init_pid:
                if meter.init_pid and sandbox.init_pid:
                    # Restored in place under a new init: its cgroup, and the counters, start anew.
                    # What it used between the last sample and the restore is not known.
                    log.info("%s runs under a new init process: its CPU counter starts again", sandbox.id)
                    meter.cpu_ns = 0
                meter.init_pid = sandbox.init_pid
            counters = self._stats.read(sandbox.id)
            if counters is None:
                continue
            observe(meter, counters, now_ns)
            # While earlier reports wait to be published, the next one waits too and grows instead.
            if report and not meter.unsent:
                cut(meter, counters, now_ns, self._source, final=False)
        for key, meter in list(self._meters.items()):
            if key not in present and not meter.final and not meter.unsent:
                log.warning("no longer metering %s: the node does not know it any more", meter.sandbox_id)
                self._forget(key)

    async def release(self, sandbox: LocalSandbox) -> None:
        """Cuts a stopping sandbox's last report while its cgroup still exists (SandboxManager's
        on_releasing hook); never raises, so it never stands in the way of a kill."""
        try:
            self._release(sandbox)
        except Exception:
            log.exception("could not take the final usage sample of %s", sandbox.id)
        self._wake.set()

    async def resized(self, sandbox: LocalSandbox, previous: SandboxRequest) -> None:
        """Ends the current window at the resize (SandboxManager's on_resized hook): what came before
        is billed at the old size, what follows at the new one. Never raises."""
        try:
            self._resized(sandbox, previous)
        except Exception:
            log.exception("could not switch the metered size of %s", sandbox.id)
        self._wake.set()

    def _resized(self, sandbox: LocalSandbox, previous: SandboxRequest) -> None:
        if is_pool_member(sandbox.request.tenant_id):
            return
        now_ns = self._clock()
        key = meter_key(sandbox)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = new_meter(sandbox, now_ns)
            meter.cpu_millis, meter.memory_mb = previous.cpu_millis, previous.memory_mb
        if meter.final:
            return
        counters = self._stats.read(sandbox.id)
        if counters is not None:
            observe(meter, counters, now_ns)
        cut(meter, counters, now_ns, self._source, final=False)
        meter.cpu_millis = sandbox.request.cpu_millis
        meter.memory_mb = sandbox.request.memory_mb
        self._journal.save(self._meters)

    def _release(self, sandbox: LocalSandbox) -> None:
        if is_pool_member(sandbox.request.tenant_id):
            return
        now_ns = self._clock()
        key = meter_key(sandbox)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = new_meter(sandbox, now_ns)
        if meter.final:
            return
        counters = self._stats.read(sandbox.id)
        if counters is None:
            log.warning("the cgroup of %s is gone: its CPU since the last report is not known", sandbox.id)
        end_ns = now_ns
        if not self._running:
            # It ended while no node-agent watched: bill its time up to when it was last seen
            # running, not up to now. Its CPU counters are final either way.
            end_ns = max(meter.window_start_ns, meter.last_sample_ms * _NS_PER_MS)
        elif counters is not None:
            observe(meter, counters, now_ns)
        cut(meter, counters, end_ns, self._source, final=True)
        self._journal.save(self._meters)

    # -- publishing ----------------------------------------------------------------------

    async def publish_pending(self) -> int:
        """Publishes every cut report not yet published; returns how many went out."""
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def send(meter: SandboxMeter, blob: str) -> bool:
            report = usage_pb2.UsageReport.FromString(bytes.fromhex(blob))
            envelope = events.Envelope(
                kind=events.USAGE_COMPUTE,
                payload=report,
                tenant=report.tenant_id,
                sandbox=report.sandbox_id,
                id=report_id(meter, report.sequence),
                time=report.window_end.ToDatetime(tzinfo=UTC),
            )
            async with slots:
                try:
                    await self._publish(envelope)
                except Exception as exc:
                    log.warning("usage report %s not published yet: %s", envelope.id, exc)
                    return False
            meter.unsent.remove(blob)
            return True

        pending = [(meter, blob) for meter in self._meters.values() for blob in list(meter.unsent)]
        sent = sum(await asyncio.gather(*(send(meter, blob) for meter, blob in pending)))
        for sandbox_id, meter in list(self._meters.items()):
            if meter.final and not meter.unsent:
                self._forget(sandbox_id)
        return sent

    async def run(self, manager: SandboxManager, stop: asyncio.Event) -> None:
        """Samples, reports and publishes until `stop` is set."""
        self._running = True
        next_sample_ns = self._after(self._clock(), self._sample_ns)
        while not stop.is_set():
            wait_s = max(0.0, (next_sample_ns - self._clock()) / 1e9)
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass
            self._wake.clear()
            now_ns = self._clock()
            if now_ns >= next_sample_ns:
                report = now_ns >= self._next_report_ns
                self.sample(manager.all(), now_ns, report)
                if report:
                    self._next_report_ns = self._after(now_ns, self._report_ns)
                next_sample_ns = self._after(now_ns, self._sample_ns)
            self._journal.save(self._meters)
            if any(meter.unsent for meter in self._meters.values()):
                await self.publish_pending()
                self._journal.save(self._meters)
