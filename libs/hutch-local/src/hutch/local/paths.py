"""Where `hutch local` keeps its state: `$HUTCH_HOME` (default ~/.hutch), stack files in `local/`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """`$HUTCH_HOME`, or ~/.hutch."""
    configured = os.environ.get("HUTCH_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".hutch"


@dataclass(frozen=True)
class StackPaths:
    """The files and directories of one local stack."""

    home: Path

    @property
    def local(self) -> Path:
        """Everything the stack owns: server data, logs, state files."""
        return self.home / "local"

    @property
    def nats(self) -> Path:
        return self.local / "nats"

    @property
    def postgres(self) -> Path:
        """The PostgreSQL cluster (its parent holds nothing else of PostgreSQL's)."""
        return self.local / "postgres" / "data"

    @property
    def s3(self) -> Path:
        return self.local / "s3" / "data"

    @property
    def logs(self) -> Path:
        return self.local / "logs"

    @property
    def stack_file(self) -> Path:
        """pids, ports and addresses of the running stack; absent when it is down."""
        return self.local / "stack.json"

    @property
    def secrets_file(self) -> Path:
        """Credentials generated once and kept across restarts."""
        return self.local / "secrets.json"

    @property
    def lock_file(self) -> Path:
        return self.local / ".lock"

    @property
    def config_file(self) -> Path:
        """The SDK's and CLI's configuration: endpoint and API key."""
        return self.home / "config.json"

    @property
    def traces_file(self) -> Path:
        return self.logs / "traces.jsonl"

    @property
    def metrics_file(self) -> Path:
        """Every service's metrics, one export a line (next to the traces, where telemetry puts them)."""
        return self.logs / "metrics.jsonl"

    def log(self, component: str) -> Path:
        """The log file of one component."""
        return self.logs / f"{component}.log"
