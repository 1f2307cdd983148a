"""Rules for snapshots, pause, resume and forks. Pure logic.

A snapshot's manifest carries the spec its node wrote down (JSON: template, isolation, cpu_millis,
memory_mb, envs, metadata, uid_shift). A sandbox created from a snapshot takes from there whatever
its request leaves empty, and may not contradict the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum

from hutch.core import errors
from hutch_gateway.domain import (
    DEFAULT_CPU_MILLIS,
    DEFAULT_MEMORY_MB,
    CreateRequest,
    Limits,
    SandboxRecord,
    State,
    check_metadata,
    check_name,
    check_resources,
)
from hutch_gateway.isolation import CONTAINER, GVISOR

SNAPSHOT_ID_PREFIX = "snap-"
MAX_FORK_COUNT = 100


@dataclass(frozen=True)
class SnapshotSpec:
    """The sandbox a snapshot was taken from, as its node described it."""

    # The node's key of the template: "base", or "<tenant id>/<name>" for a tenant's own.
    template_key: str
    isolation: str
    cpu_millis: int
    memory_mb: int
    envs: dict[str, str]
    # Holds memory and running processes (a gVisor checkpoint): it restores only under gVisor.
    memory: bool

    @property
    def template(self) -> str:
        """The template's name as its tenant calls it."""
        return self.template_key.rpartition("/")[2]


def parse_spec(raw: bytes, *, memory: bool, snapshot_id: str) -> SnapshotSpec:
    """Reads the spec a node stored with a snapshot."""
    try:
        data = json.loads(raw or b"{}")
        spec = SnapshotSpec(
            template_key=str(data.get("template", "")),
            isolation=str(data.get("isolation", "")) or (GVISOR if memory else CONTAINER),
            cpu_millis=int(data.get("cpu_millis", 0)),
            memory_mb=int(data.get("memory_mb", 0)),
            envs={str(k): str(v) for k, v in dict(data.get("envs") or {}).items()},
            memory=memory,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise errors.Internal(f"snapshot {snapshot_id} has an unreadable spec: {exc}") from exc
    if not spec.template_key:
        raise errors.Internal(f"snapshot {snapshot_id} does not say which template it was taken from")
    return spec


def restore_request(request: CreateRequest, spec: SnapshotSpec, snapshot_id: str, limits: Limits) -> CreateRequest:
    """The create request with the snapshot's template, isolation class, resources and environment.

    The request's own envs win over the snapshot's; resources it gives replace the snapshot's, except
    that a memory snapshot's processes need at least the memory they had.
    """
    isolation = request.isolation.strip().lower()
    if spec.memory and isolation == CONTAINER:
        raise errors.FailedPrecondition(
            f"snapshot {snapshot_id} holds a gVisor sandbox's memory and processes: it can only start under "
            "isolation 'gvisor' (leave isolation empty to take the snapshot's)"
        )
    if request.template and request.template != spec.template:
        raise errors.InvalidArgument(
            f"snapshot {snapshot_id} was taken from template {spec.template!r}, not {request.template!r}: "
            "leave template empty"
        )
    if isolation not in ("", "auto", spec.isolation):
        raise errors.InvalidArgument(
            f"snapshot {snapshot_id} was taken under isolation {spec.isolation!r}, not {isolation!r}: "
            "leave isolation empty"
        )
    cpu_millis = request.cpu_millis or spec.cpu_millis or DEFAULT_CPU_MILLIS
    memory_mb = request.memory_mb or spec.memory_mb or DEFAULT_MEMORY_MB
    if spec.memory and memory_mb < spec.memory_mb:
        raise errors.InvalidArgument(
            f"snapshot {snapshot_id} holds processes that had {spec.memory_mb} MB: ask for at least that much"
        )
    check_resources(cpu_millis, memory_mb, limits)
    return replace(
        request,
        template=spec.template,
        isolation=spec.isolation,
        cpu_millis=cpu_millis,
        memory_mb=memory_mb,
        envs={**spec.envs, **request.envs},
    )


def check_snapshot_name(name: str) -> None:
    """A snapshot's name follows the rules of sandbox names; empty means none."""
    if not name:
        return
    check_name(name)
    if name.startswith(SNAPSHOT_ID_PREFIX):
        raise errors.InvalidArgument(
            f"name {name!r} may not start with {SNAPSHOT_ID_PREFIX!r}, which marks snapshot ids"
        )


def check_labels(labels: dict[str, str]) -> None:
    check_metadata(labels, "label")


def fork_count(count: int) -> int:
    """How many children a fork makes: 1 when unset, at most MAX_FORK_COUNT."""
    count = count or 1
    if count > MAX_FORK_COUNT:
        raise errors.InvalidArgument(f"a fork makes 1 to {MAX_FORK_COUNT} sandboxes at a time (got {count})")
    return count


def fork_metadata(parent: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """A child's metadata: the parent's, then the fork request's on top."""
    merged = {**parent, **extra}
    check_metadata(merged)
    return merged


def not_running(record: SandboxRecord) -> errors.FailedPrecondition:
    """The error for a call that needs the sandbox to run, saying what to do about it."""
    if record.state == State.PAUSED:
        return errors.FailedPrecondition(f"sandbox {record.id} is paused: resume it first")
    reason = f" ({record.state_reason})" if record.state_reason else ""
    return errors.FailedPrecondition(f"sandbox {record.id} is {record.state.value}, not running{reason}")


class Step(StrEnum):
    """What a pause or a resume does with a sandbox in a given state."""

    ACT = "act"  # change it
    WAIT = "wait"  # it is on its way already: wait like the call that started that
    DONE = "done"  # it is there already: answer with it as it is


def pause_step(record: SandboxRecord) -> Step:
    if record.state == State.PAUSED:
        return Step.DONE
    if record.state == State.RUNNING:
        return Step.ACT
    if record.state == State.PENDING:
        raise errors.FailedPrecondition(f"sandbox {record.id} is still starting: pause it once it runs")
    raise _ended_or_stopping(record, "paused")


def resume_step(record: SandboxRecord) -> Step:
    if record.state == State.PAUSED:
        return Step.ACT
    if record.state == State.PENDING:
        return Step.WAIT
    if record.state == State.RUNNING:
        return Step.DONE
    raise _ended_or_stopping(record, "resumed")


def _ended_or_stopping(record: SandboxRecord, what: str) -> errors.FailedPrecondition:
    if record.state == State.STOPPING:
        return errors.FailedPrecondition(f"sandbox {record.id} is being killed and cannot be {what}")
    return errors.FailedPrecondition(
        f"sandbox {record.id} is {record.state.value} and cannot be {what}: create a new one"
        + (" (or one from a snapshot of it)" if what == "resumed" else "")
    )
