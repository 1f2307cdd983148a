"""Every service's metrics reach `<HUTCH_HOME>/local/logs/metrics.jsonl`, and `hutch top` shows the fleet.

The local stack's services export metrics every 5 s (`HUTCH_TELEMETRY__METRICS_INTERVAL_S`), one JSON
line per export (`MetricsData.to_json`), so the tests poll the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import Nodes, NotFoundError, Sandbox, SandboxError
from hutch.local.rates import request_rates

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox(local_stack: Any) -> Iterator[Sandbox]:
    box = Sandbox.create(cpu=0.25, memory_mb=128, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    try:
        yield box
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        box.close()


def _points(path: Path, service: str, name: str) -> list[dict[str, Any]]:
    """The data points of metric `name` in `service`'s latest export that has it."""
    if not path.exists():
        return []
    found: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            export = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        for resource in export["resource_metrics"]:
            if resource["resource"]["attributes"].get("service.name") != service:
                continue
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    if metric["name"] == name:
                        found = metric["data"]["data_points"]
    return found


def _wait_for(path: Path, service: str, name: str, match: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    points: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        points = _points(path, service, name)
        hit = next((point for point in points if match(point)), None)
        if hit is not None:
            return hit
        time.sleep(0.5)
    raise AssertionError(f"{service} exported no matching {name} within {timeout_s}s; last points: {points}")


def test_services_export_request_durations_and_fleet_gauges(local_stack: Any, sandbox: Sandbox) -> None:
    metrics = local_stack.home / "local" / "logs" / "metrics.jsonl"
    Sandbox.list(api_key=local_stack.api_key, endpoint=local_stack.endpoint)

    create = _wait_for(
        metrics,
        "gateway",
        "rpc.server.duration",
        lambda p: (
            p["attributes"].get("rpc.service") == "hutch.v1.Sandboxes"
            and p["attributes"].get("rpc.method") == "Create"
            and p["attributes"].get("rpc.grpc.status_code") == 0
        ),
    )
    assert create["count"] >= 1 and create["sum"] > 0
    calls = _wait_for(metrics, "gateway", "rpc.server.requests", lambda p: p["attributes"].get("rpc.method") == "List")
    assert calls["value"] >= 1
    # The gauge is read every few seconds: an export from before the sandbox ran may say 0.
    running = _wait_for(
        metrics,
        "gateway",
        "hutch.sandboxes",
        lambda p: p["attributes"].get("hutch.state") == "running" and p["value"] >= 1,
    )
    assert running["value"] >= 1
    # The scheduler placed the sandbox from a `sandbox.requested` event and reports its lag.
    _wait_for(
        metrics,
        "scheduler",
        "hutch.bus.messages.handled",
        lambda p: p["attributes"].get("hutch.event") == "sandbox.requested" and p["value"] >= 1,
    )
    _wait_for(metrics, "scheduler", "hutch.bus.consumer.pending", lambda p: p["value"] >= 0)
    # Two exports after the calls above, the gateway has a request rate for `hutch local status`.
    deadline = time.monotonic() + 15
    while "gateway" not in request_rates(metrics) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert request_rates(metrics).get("gateway", -1) >= 0


def test_top_once_prints_the_node_and_the_callers_sandbox(local_stack: Any, sandbox: Sandbox) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hutch.cli", "top", "--once"],
        env={**local_stack.env, "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    nodes = Nodes.list(api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    assert nodes and all(node.id in text for node in nodes), text
    assert sandbox.id in text, text
    line = next(line for line in text.splitlines() if sandbox.id in line)
    assert "running" in line and "0.25" in line and "128 MiB" in line, line
