"""What the metering has measured and reported per sandbox, kept on disk across restarts.

One JSON file under the node's root, replaced atomically (written beside, then renamed) after every
sampling round, so a node-agent that is killed at any moment finds, when it starts again, for each
sandbox: the counters its last report ended at, the memory integral since, and the reports it had
cut but may not have published. Nothing else is needed to carry on without losing or repeating
usage. The file is not fsynced: it protects against a process that dies, not a host that does
(a host crash takes the sandboxes' cgroups, and with them their counters, anyway).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class SandboxMeter:
    """One sandbox's metering state."""

    sandbox_id: str
    tenant_id: str
    cpu_millis: int
    memory_mb: int
    # Number of the last report cut (0: none yet).
    sequence: int
    # Where the next report's window starts (wall clock, ns): the end of the last one.
    window_start_ns: int
    # The cgroup's CPU counter at window_start_ns.
    cpu_ns: int
    # When memory was last sampled (wall clock, ms) and memory in use integrated since
    # window_start (byte-milliseconds).
    last_sample_ms: int
    memory_byte_ms: int = 0
    peak_bytes: int = 0
    # The init process the counters belong to: a new one (a gVisor sandbox restored in place) comes
    # with a new cgroup whose counters start again from zero. 0: not known.
    init_pid: int = 0
    # The sandbox stopped and its last report is cut.
    final: bool = False
    # Reports cut but not known to be published: serialized UsageReport messages, hex-encoded.
    unsent: list[str] = field(default_factory=list)
    # Which start of the sandbox this is ("" the first; ".<snapshot id>" once resumed): a resumed
    # sandbox's reports count from 1 again and must not share ids with the earlier ones.
    incarnation: str = ""


class UsageJournal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, SandboxMeter]:
        try:
            data: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("usage journal %s is unreadable (%s); metering starts afresh", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            log.error("usage journal %s has an unknown format; metering starts afresh", self.path)
            return {}
        meters = {}
        for entry in data.get("meters", []):
            try:
                meter = SandboxMeter(**entry)
            except TypeError as exc:
                log.error("skipping a malformed usage journal entry (%s)", exc)
                continue
            meters[meter.sandbox_id + meter.incarnation] = meter
        return meters

    def save(self, meters: dict[str, SandboxMeter]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # vars(), not asdict(): asdict copies deeply, and this runs every second for every sandbox.
        tmp.write_text(json.dumps({"version": FORMAT_VERSION, "meters": [vars(m) for m in meters.values()]}))
        os.replace(tmp, self.path)
