"""Billing end to end on the local stack: what the Usage API reports against the cgroup counters.

One scenario runs once for the module (three sandboxes side by side, about 25 s) and the tests check
it from several sides:

* idle: `sleep 20`, near zero active CPU but ~20 allocated vCPU-seconds;
* one-vcpu: a busy loop for 10 s on 1 vCPU, about one active vCPU-second per second;
* two-vcpu: two busy loops for 10 s under a 2 vCPU limit, at most two per second (the node has two
  cores, shared with the platform's own services);
* gvisor: an idle sandbox under gVisor, whose Sentry and Gofer run in its cgroup and are billed;
* while two-vcpu runs, the billing-meter and then the node-agent are SIGKILLed and restarted.

Every sandbox's cgroup counter (`cpuacct.usage`) is read on the host after its load has ended and
before it is killed; the ledger must match it: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hutch import AuthenticationError, Sandbox, Usage

pytestmark = pytest.mark.e2e

BUSY = "timeout {seconds} sh -c 'while :; do :; done' >/dev/null 2>&1 &"
LOAD_SECONDS = 10

# Tolerances, stated once. The ledger adds exact integers, so against the cgroup counter the only
# slack is the CPU a sandbox uses between the test's read and its kill (its supervisor answering
# the kill): a quarter of a second covers it with room.
COUNTER_SLACK_S = 0.25
# Allocated time runs from the node's start to its final sample, taken just before its teardown;
# the gateway's ended time comes after the teardown (runsc takes up to a couple of seconds), so the
# ledger may be short of it by that much, and never over it by more than clock rounding.
TEARDOWN_SLACK_S = 3.0
# A busy sandbox bills at most its limit per second (the CPU quota enforces it; 2% for sampling
# edges), and at least 80% of what the host had free for it: its limit, or less when other work on
# the host (the platform's services, the restarts, anything else running on the machine) took
# CPU meanwhile, measured from /proc/stat over the same window.
RATE_CEILING = 1.02
FAIR_SHARE_FLOOR = 0.8


@dataclass
class Window:
    """A stretch of a busy sandbox's load: its own CPU, and what the rest of the host used."""

    seconds: float
    sandbox_cpu_s: float
    others_cpu_s: float

    def rate(self) -> float:
        return self.sandbox_cpu_s / self.seconds

    def free_for(self, limit: float) -> float:
        """The vCPUs the host could have given the sandbox: its limit, less what others took."""
        cores = os.cpu_count() or 1
        return max(0.0, min(limit, cores - self.others_cpu_s / self.seconds))


@dataclass
class Measured:
    sandbox: Sandbox
    cpu: float
    cgroup_cpu_s: float = 0.0
    load: Window | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass
class Scenario:
    suite: str
    start: datetime
    end: datetime
    connection: dict[str, str]
    runs: dict[str, Measured] = field(default_factory=dict)

    def usage(self, sandbox: Measured, **kwargs: Any) -> Any:
        return Usage.query(start=self.start, end=self.end, sandbox=sandbox.sandbox.id, **self.connection, **kwargs)


def cgroup_cpu_seconds(local_stack: Any, sandbox_id: str) -> float:
    parent = local_stack.service_env("node-agent").get("HUTCH_NODE__CGROUP_PARENT", "hutch")
    return int(Path(f"/sys/fs/cgroup/cpuacct/{parent}/{sandbox_id}/cpuacct.usage").read_text()) / 1e9


def host_busy_seconds() -> float:
    """CPU time the whole host has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure_load(local_stack: Any, run: Measured, seconds: float, meanwhile: Callable[[], None]) -> None:
    """Records `run`'s CPU and the rest of the host's over the next `seconds`, doing `meanwhile`."""
    began, host, own = time.monotonic(), host_busy_seconds(), cgroup_cpu_seconds(local_stack, run.sandbox.id)
    meanwhile()
    time.sleep(max(0.0, seconds - (time.monotonic() - began)))
    elapsed = time.monotonic() - began
    used = cgroup_cpu_seconds(local_stack, run.sandbox.id) - own
    run.load = Window(elapsed, used, max(0.0, host_busy_seconds() - host - used))


def eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:.0f}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def scenario(local_stack: Any) -> Iterator[Scenario]:
    connection = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    suite = f"billing-{uuid.uuid4().hex[:8]}"
    begin = datetime.now(UTC) - timedelta(minutes=1)
    shapes = {"idle": (1.0, "container"), "one-vcpu": (1.0, "container"), "two-vcpu": (2.0, "container")}
    shapes["gvisor"] = (1.0, "gvisor")

    def create(name: str) -> Sandbox:
        cpu, isolation = shapes[name]
        metadata = {"suite": suite, "shape": name}
        return Sandbox.create(cpu=cpu, memory_mb=256, metadata=metadata, isolation=isolation, **connection)

    with ThreadPoolExecutor(len(shapes)) as pool:
        created = dict(zip(shapes, pool.map(create, shapes), strict=True))
    runs = {name: Measured(sandbox, shapes[name][0]) for name, sandbox in created.items()}
    try:
        runs["idle"].sandbox.commands.run("sleep 20 >/dev/null 2>&1 &")
        runs["one-vcpu"].sandbox.commands.run(BUSY.format(seconds=LOAD_SECONDS))
        # Measured inside the loop's lifetime (it started just before and ends at LOAD_SECONDS).
        measure_load(local_stack, runs["one-vcpu"], LOAD_SECONDS - 1, lambda: None)
        time.sleep(1.5)

        def restarts() -> None:
            time.sleep(1)
            local_stack.kill("billing-meter")
            time.sleep(1)
            local_stack.restart("billing-meter")
            local_stack.kill("node-agent")
            local_stack.restart("node-agent")

        runs["two-vcpu"].sandbox.commands.run(" ".join([BUSY.format(seconds=LOAD_SECONDS)] * 2))
        measure_load(local_stack, runs["two-vcpu"], LOAD_SECONDS - 1, restarts)
        time.sleep(1.5)
        # The idle sandbox's `sleep 20` is over too by now (about 21 s after it started).
        eventually(lambda: runs["idle"].sandbox.commands.run("pgrep -x sleep || true").stdout == "", 15, "sleep ended")

        for run in runs.values():
            run.cgroup_cpu_s = cgroup_cpu_seconds(local_stack, run.sandbox.id)
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(lambda run: run.sandbox.kill(), runs.values()))
        for run in runs.values():
            info = run.sandbox.get_info()
            run.started_at, run.ended_at = info.started_at, info.ended_at
        result = Scenario(suite, begin, datetime.now(UTC) + timedelta(minutes=1), connection, runs)

        def ingested() -> bool:
            return all(
                result.usage(run).total.cpu_active_seconds >= run.cgroup_cpu_s - 1e-6
                and result.usage(run).total.cpu_allocated_seconds > 0
                for run in runs.values()
            )

        eventually(ingested, what="the ledger holding every sandbox's final usage")
        time.sleep(2)  # anything counted twice would arrive now
        yield result
    finally:
        for run in runs.values():
            if run.sandbox.is_running():
                run.sandbox.kill()
            run.sandbox.close()


def report(scenario: Scenario) -> None:
    for name, run in scenario.runs.items():
        total = scenario.usage(run).total
        sys.stderr.write(
            f"\n{name}: active {total.cpu_active_seconds:.3f} vCPU-s (cgroup {run.cgroup_cpu_s:.3f}), "
            f"allocated {total.cpu_allocated_seconds:.3f} vCPU-s, running {total.running_seconds:.3f} s"
        )


def wall_seconds(run: Measured) -> float:
    assert run.started_at is not None and run.ended_at is not None
    return (run.ended_at - run.started_at).total_seconds()


def assert_allocated(run: Measured, allocated_s: float) -> None:
    wall = wall_seconds(run)
    assert (wall - TEARDOWN_SLACK_S) * run.cpu <= allocated_s <= (wall + 0.1) * run.cpu


def test_the_ledger_matches_the_cgroup_counters_through_restarts(scenario: Scenario) -> None:
    report(scenario)
    for name, run in scenario.runs.items():
        active = scenario.usage(run).total.cpu_active_seconds
        assert run.cgroup_cpu_s - 1e-6 <= active <= run.cgroup_cpu_s + COUNTER_SLACK_S, name


def test_gvisor_overhead_is_metered_with_the_sandbox(scenario: Scenario) -> None:
    run = scenario.runs["gvisor"]
    total = scenario.usage(run).total
    # Even idle, gVisor's own processes use CPU in the sandbox's cgroup; the ledger has all of it.
    assert total.cpu_active_seconds > 0
    assert total.cpu_active_seconds == pytest.approx(run.cgroup_cpu_s, abs=COUNTER_SLACK_S)
    assert_allocated(run, total.cpu_allocated_seconds)


def test_an_idle_sandbox_bills_almost_no_active_cpu_but_its_whole_allocation(scenario: Scenario) -> None:
    idle = scenario.runs["idle"]
    total = scenario.usage(idle).total
    assert total.cpu_active_seconds < 0.5
    assert_allocated(idle, total.cpu_allocated_seconds)
    assert 19.0 <= total.cpu_allocated_seconds <= 45.0
    assert total.memory_provisioned_gib_seconds == pytest.approx(0.25 * total.running_seconds, rel=1e-3)


def assert_busy_rate(run: Measured) -> None:
    load = run.load
    assert load is not None
    sys.stderr.write(
        f"\n{run.cpu:g}-vCPU busy sandbox: {load.rate():.3f} vCPU-s per second; "
        f"{load.free_for(run.cpu):.2f} vCPU free for it (others used {load.others_cpu_s / load.seconds:.2f})"
    )
    assert load.rate() <= run.cpu * RATE_CEILING
    assert load.rate() >= FAIR_SHARE_FLOOR * load.free_for(run.cpu)


def test_a_busy_loop_bills_one_active_vcpu_second_per_second(scenario: Scenario) -> None:
    run = scenario.runs["one-vcpu"]
    assert_busy_rate(run)
    total = scenario.usage(run).total
    assert total.cpu_active_seconds <= LOAD_SECONDS * RATE_CEILING + COUNTER_SLACK_S
    assert_allocated(run, total.cpu_allocated_seconds)


def test_two_busy_loops_under_a_two_vcpu_limit_bill_up_to_two_per_second(scenario: Scenario) -> None:
    run = scenario.runs["two-vcpu"]
    assert_busy_rate(run)
    total = scenario.usage(run).total
    assert total.cpu_active_seconds <= 2 * LOAD_SECONDS * RATE_CEILING + COUNTER_SLACK_S
    assert_allocated(run, total.cpu_allocated_seconds)
    for minute in scenario.usage(run, granularity="minute").buckets:
        assert minute.usage.cpu_active_seconds <= 2 * minute.usage.running_seconds * 1.02 + 0.05


def test_labels_select_sandboxes_and_costs_follow_the_price_book(scenario: Scenario) -> None:
    labelled = Usage.query(
        start=scenario.start,
        end=scenario.end,
        labels={"suite": scenario.suite},
        by_sandbox=True,
        price_book="e2b",
        **scenario.connection,
    )
    assert {b.sandbox_id for b in labelled.buckets} == {run.sandbox.id for run in scenario.runs.values()}
    expected = sum(scenario.usage(run).total.cpu_active_seconds for run in scenario.runs.values())
    assert labelled.total.cpu_active_seconds == pytest.approx(expected, abs=1e-6)
    assert labelled.price_book == "e2b" and labelled.cost.total > 0
    assert labelled.free_tier_credit.total == 0  # a slice of the bill gets no allowance
    books = {book.name: book for book in Usage.price_books(**scenario.connection)}
    assert {"cloudflare", "vercel", "aws-agentcore", "e2b", "modal"} <= set(books)
    compared = Usage.compare(
        start=scenario.start, end=scenario.end, labels={"suite": scenario.suite}, **scenario.connection
    )
    assert compared.usage.cpu_active_seconds == pytest.approx(expected, abs=1e-6)
    assert [c.cost.total for c in compared.costs] == sorted(c.cost.total for c in compared.costs)


def test_one_tenant_cannot_see_another_tenants_usage(scenario: Scenario, local_stack: Any) -> None:
    other = {"api_key": local_stack.create_tenant(f"other-{uuid.uuid4().hex[:6]}"), "endpoint": local_stack.endpoint}
    for run in scenario.runs.values():
        theirs = Usage.query(start=scenario.start, end=scenario.end, sandbox=run.sandbox.id, **other)
        assert theirs.buckets == [] and theirs.total.cpu_active_seconds == 0
    everything = Usage.query(start=scenario.start, end=scenario.end, labels={"suite": scenario.suite}, **other)
    assert everything.total.cpu_allocated_seconds == 0
    assert Usage.export(start=scenario.start, end=scenario.end, format="jsonl", **other) == b""
    with pytest.raises(AuthenticationError):
        Usage.query(api_key="hk_" + "x" * 32, endpoint=local_stack.endpoint)


def test_exports_parse_back_to_the_same_totals(scenario: Scenario) -> None:
    window = {"start": scenario.start, "end": scenario.end, "labels": {"suite": scenario.suite}}
    expected = Usage.query(**window, **scenario.connection).total

    def check(active: list[float], allocated: list[float]) -> None:
        assert sum(active) == pytest.approx(expected.cpu_active_seconds, abs=1e-6)
        assert sum(allocated) == pytest.approx(expected.cpu_allocated_seconds, abs=1e-6)

    rows = list(csv.DictReader(io.StringIO(Usage.export(**window, format="csv", **scenario.connection).decode())))
    check([float(r["cpu_active_seconds"]) for r in rows], [float(r["cpu_allocated_seconds"]) for r in rows])
    lines = [json.loads(x) for x in Usage.export(**window, format="jsonl", **scenario.connection).splitlines()]
    check([r["cpu_active_seconds"] for r in lines], [r["cpu_allocated_seconds"] for r in lines])
    table = pq.read_table(io.BytesIO(Usage.export(**window, format="parquet", **scenario.connection)))
    check(table.column("cpu_active_seconds").to_pylist(), table.column("cpu_allocated_seconds").to_pylist())
    events = [json.loads(x) for x in Usage.export(**window, format="cloudevents", **scenario.connection).splitlines()]
    assert all(e["specversion"] == "1.0" and e["subject"] and e["id"] and e["time"] for e in events)
    check([e["data"]["cpu_active_seconds"] for e in events], [e["data"]["cpu_allocated_seconds"] for e in events])


def test_the_cli_shows_exports_and_compares(scenario: Scenario, local_stack: Any, tmp_path: Path) -> None:
    since = scenario.start.isoformat()
    label = f"suite={scenario.suite}"

    def hutch(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "hutch.cli", "usage", *args],
            env=local_stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    chart = tmp_path / "usage.png"
    shown = hutch("--from", since, "--granularity", "minute", "--label", label, "--png", str(chart))
    assert "ALLOCATED" in shown and "active" in shown
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", chart.read_bytes()[16:24])
    assert width > 0 and height > 0
    out = tmp_path / "usage.csv"
    hutch("export", "--from", since, "--format", "csv", "--label", label, "--out", str(out))
    assert len(out.read_text().splitlines()) > 1
    compared = hutch("compare", "--shape", "rl-burst")
    assert "cloudflare" in compared and "e2b" in compared
