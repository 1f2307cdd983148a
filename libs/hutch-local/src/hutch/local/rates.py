"""Request rates per service, from the tail of the stack's `metrics.jsonl`.

Each line is one export of one service process (`MetricsData.to_json`); `rpc.server.requests` is a
cumulative counter, so a service's rate is the growth of its total between its last two exports.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REQUESTS = "rpc.server.requests"
# Enough for the last few exports of every service; the file grows by a few KiB per export.
_TAIL_BYTES = 2 * 1024 * 1024
_STALE_NS = 60 * 10**9


def _tail_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - _TAIL_BYTES))
            data = file.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > _TAIL_BYTES else lines


def _requests(resource: dict[str, Any]) -> tuple[int, int] | None:
    """(total calls answered, time of the export in ns) of one resource's metrics, if it has any."""
    for scope in resource.get("scope_metrics", []):
        for metric in scope.get("metrics", []):
            if metric.get("name") == REQUESTS:
                points = metric.get("data", {}).get("data_points", [])
                if points:
                    return sum(int(p.get("value", 0)) for p in points), max(int(p["time_unix_nano"]) for p in points)
    return None


def request_rates(path: Path) -> dict[str, float]:
    """Calls per second each service answered between its last two exports, by service name.

    A service that answered nothing yet, exported nothing for a minute, or restarted between the two
    exports is left out.
    """
    # service -> instance -> [(time, total)], in file order
    seen: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for line in _tail_lines(path):
        try:
            export = json.loads(line)
        except json.JSONDecodeError:
            continue
        for resource in export.get("resource_metrics", []):
            attributes = resource.get("resource", {}).get("attributes", {})
            found = _requests(resource)
            if found is None:
                continue
            service = str(attributes.get("service.name", ""))
            instance = str(attributes.get("service.instance.id", ""))
            seen.setdefault(service, {}).setdefault(instance, []).append((found[1], found[0]))
    rates: dict[str, float] = {}
    now = time.time_ns()
    for service, instances in seen.items():
        # The process that exported last (an earlier `up`'s may still be in the tail).
        samples = max(instances.values(), key=lambda found: found[-1][0])
        if len(samples) < 2 or now - samples[-1][0] > _STALE_NS:
            continue
        (t0, c0), (t1, c1) = samples[-2], samples[-1]
        if t1 > t0 and c1 >= c0:
            rates[service] = (c1 - c0) / ((t1 - t0) / 1e9)
    return rates
