"""What the node-agent knows about a sandbox, free of protobuf and transport types."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from hutch.core import errors

# Sandbox ids name folders, cgroups and crun containers on the host, so they are checked here
# even though they come from the platform's own scheduler.
_SANDBOX_ID = re.compile(r"^sb-[a-z0-9]{8,40}$")

Status = Literal["starting", "running", "snapshotting", "stopping", "stopped"]

# The PATH processes get when their template's image does not set one.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_sandbox_id(sandbox_id: str) -> str:
    if not _SANDBOX_ID.match(sandbox_id):
        raise errors.InvalidArgument(f"malformed sandbox id {sandbox_id!r}")
    return sandbox_id


@dataclass(frozen=True)
class SandboxRequest:
    sandbox_id: str
    tenant_id: str
    template: str
    cpu_millis: int
    memory_mb: int
    name: str = ""
    envs: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int = 0
    # The isolation class: "container" (crun) or "gvisor" (runsc).
    isolation: str = "container"
    # The snapshot it starts from ("" for a fresh sandbox); also tells this incarnation's events apart.
    snapshot_id: str = ""
    # What it may reach, as its node's egress-proxy enforces it: {"allow": [...], "deny": [...],
    # "passthrough": [...]}; empty: nothing.
    network: dict[str, list[str]] = field(default_factory=dict)
    # Report it idle (sandbox.idle) after this many seconds unused; 0: never.
    auto_sleep_after_s: int = 0
    # Automatic memory: grow memory_mb as needed up to this (memory_autoscaler.py); 0: fixed.
    memory_ceiling_mb: int = 0
    # Names this start when snapshot_id alone does not (another try at a failed resume); "": it does.
    incarnation_id: str = ""

    @property
    def incarnation_name(self) -> str:
        """The name of this start: "" for a fresh sandbox's first, else its snapshot's id (or a try)."""
        return self.incarnation_id or self.snapshot_id

    @property
    def incarnation(self) -> str:
        """A suffix for event ids: a sandbox resumed from a snapshot starts (and may fail) again."""
        return f".{self.incarnation_name}" if self.incarnation_name else ""


@dataclass(frozen=True)
class SnapshotSource:
    """Where a sandbox made from a snapshot starts: a frozen layer on this node, and for a memory
    snapshot (gVisor) the checkpoint image its processes resume from."""

    frozen_layer: Path
    image: Path | None = None


@dataclass
class LocalSandbox:
    """A sandbox this node runs (or ran, until its folder is removed)."""

    request: SandboxRequest
    status: Status
    # The environment every process starts with: the template's, then the sandbox's own.
    env: dict[str, str]
    default_user: str
    workdir: str
    init_pid: int = 0
    started_at: datetime | None = None
    # When its timeout kills it; None: it lives until killed.
    deadline: datetime | None = None
    # Its cgroup's CPU counter when its usage began to count: 0, except for a warm pool member
    # handed to a tenant, whose time in the pool is not the tenant's (hutch.core.warm_pool).
    metered_from_cpu_ns: int = 0

    @property
    def id(self) -> str:
        return self.request.sandbox_id

    def to_record(self) -> dict[str, Any]:
        return {
            "request": asdict(self.request),
            "status": self.status,
            "env": self.env,
            "default_user": self.default_user,
            "workdir": self.workdir,
            "init_pid": self.init_pid,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "metered_from_cpu_ns": self.metered_from_cpu_ns,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> LocalSandbox:
        started = data.get("started_at")
        deadline = data.get("deadline")
        return cls(
            request=SandboxRequest(**data["request"]),
            status=data["status"],
            env=data["env"],
            default_user=data["default_user"],
            workdir=data["workdir"],
            init_pid=data.get("init_pid", 0),
            started_at=datetime.fromisoformat(started) if started else None,
            deadline=datetime.fromisoformat(deadline) if deadline else None,
            metered_from_cpu_ns=data.get("metered_from_cpu_ns", 0),
        )
