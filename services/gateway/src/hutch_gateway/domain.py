"""Sandboxes as the gateway sees them, and the rules a create request must follow. Pure logic."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from hutch.core import errors
from hutch_gateway.network_rules import check_network

DEFAULT_TEMPLATE = "base"
# Separates a snapshot's id from the try in an incarnation's name (see next_incarnation).
INCARNATION_TRY = "~"
DEFAULT_CPU_MILLIS = 1000
DEFAULT_MEMORY_MB = 512
MIN_CPU_MILLIS = 100
MIN_MEMORY_MB = 64
MAX_TIMEOUT_S = 365 * 24 * 3600
# Idle policies: from a couple of seconds (tests, short bursts) to a week.
MIN_AUTO_SLEEP_S = 2
MAX_AUTO_SLEEP_S = 7 * 24 * 3600
MAX_METADATA = 64
MAX_ENVS = 512
MAX_ENV_BYTES = 256 * 1024

_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
SANDBOX_ID_PREFIX = "sb-"


class SandboxNotFound(errors.NotFound):
    """The tenant has no sandbox `ref` in this region (another region may hold it)."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"sandbox {ref!r} not found" if ref else "no sandbox given: pass its id or name")
        self.ref = ref


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    KILLED = "killed"
    FAILED = "failed"
    # Its state is in a snapshot and no node holds it; a resume starts it again.
    PAUSED = "paused"

    @property
    def ended(self) -> bool:
        return self in (State.KILLED, State.FAILED)


# What List shows when no states are asked for: every sandbox that still holds its name.
LIVE_STATES = (State.PENDING, State.RUNNING, State.STOPPING, State.PAUSED)


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def tenant_id_for(name: str) -> str:
    """The id of the tenant called `name`: the same in every region, with no coordination, so a
    tenant's sandboxes, index entries and usage carry one id wherever they are."""
    digest = hashlib.sha256(f"hutch-tenant:{name}".encode()).digest()
    return "tn-" + "".join(_ID_ALPHABET[byte % len(_ID_ALPHABET)] for byte in digest[:20])


def start_snapshot(incarnation: str) -> str:
    """The snapshot a start named `incarnation` starts from ("" for a fresh start)."""
    return incarnation.partition(INCARNATION_TRY)[0]


def next_incarnation(current: str, snapshot_id: str) -> str:
    """The name of the next start from `snapshot_id`: the snapshot's id the first time, then
    "<snapshot>~<try>" for each try after one that failed, so that no event of a new try is
    taken for a repeat of the last one's (event ids carry the incarnation)."""
    if start_snapshot(current) != snapshot_id:
        return snapshot_id
    tries = current.partition(INCARNATION_TRY)[2]
    return f"{snapshot_id}{INCARNATION_TRY}{int(tries or 1) + 1}"


@dataclass(frozen=True)
class CreateRequest:
    """A validated create request (see `validate_create`)."""

    template: str
    name: str
    cpu_millis: int
    memory_mb: int
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int = 0
    # As asked: "auto", "container" or "gvisor", and "trusted"/"untrusted"/"" (see isolation.py).
    isolation: str = ""
    trust: str = ""
    # Start from this snapshot (id or name); template, isolation and resources left empty above
    # are then the snapshot's (see snapshot_rules.restore_request).
    snapshot: str = ""
    # What it may reach: normalized "allow", "deny" and "passthrough" lists (network_rules); empty: nothing.
    network: dict[str, list[str]] = field(default_factory=dict)
    # Idle seconds before it goes to sleep; 0: never.
    auto_sleep_after_s: int = 0
    # Automatic memory up to this many MB; 0: memory_mb is fixed.
    memory_ceiling_mb: int = 0


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    tenant_id: str
    name: str
    template: str
    state: State
    cpu_millis: int
    memory_mb: int
    metadata: dict[str, str]
    timeout_seconds: int
    region: str
    node_id: str | None
    error_code: str
    state_reason: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    isolation: str = "container"
    expires_at: datetime | None = None
    public_ports: tuple[int, ...] = ()
    source_snapshot: str = ""
    forked_from: str = ""
    # Its latest pause snapshot and the node that pause happened on (see migration 0006).
    paused_snapshot: str = ""
    paused_node: str | None = None
    # The snapshot its current start is from ("" for a plain create); in its events' ids.
    incarnation: str = ""
    # While paused: what was left of its timeout (None: the whole timeout applies from its start).
    timeout_left_s: int | None = None
    envs: dict[str, str] = field(default_factory=dict)
    network: dict[str, list[str]] = field(default_factory=dict)
    auto_sleep_after_s: int = 0
    # PAUSED by its idle policy rather than a pause call: any request wakes it (migration 0008).
    asleep: bool = False
    memory_ceiling_mb: int = 0

    @property
    def resuming(self) -> bool:
        """Pending because it is being started again from its pause snapshot."""
        return (
            self.state == State.PENDING
            and bool(self.paused_snapshot)
            and start_snapshot(self.incarnation) == self.paused_snapshot
        )

    def error(self) -> errors.HutchError:
        """The error a FAILED sandbox reports to whoever waited for it."""
        return errors.error_for_code(self.error_code or "internal", self.state_reason or "the sandbox failed")


def restart_request(record: SandboxRecord) -> CreateRequest:
    """The request that starts this sandbox again as it was made (a resume; a fork's children)."""
    return CreateRequest(
        template=record.template,
        name=record.name,
        cpu_millis=record.cpu_millis,
        memory_mb=record.memory_mb,
        metadata=dict(record.metadata),
        envs=dict(record.envs),
        timeout_seconds=record.timeout_seconds,
        isolation=record.isolation,
        network={key: list(values) for key, values in record.network.items()},
        auto_sleep_after_s=record.auto_sleep_after_s,
        memory_ceiling_mb=record.memory_ceiling_mb,
    )


@dataclass(frozen=True)
class Limits:
    max_cpu_millis: int
    max_memory_mb: int


def validate_create(
    *,
    template: str,
    name: str,
    cpu_millis: int,
    memory_mb: int,
    metadata: dict[str, str],
    envs: dict[str, str],
    timeout_seconds: int,
    limits: Limits,
    isolation: str = "",
    trust: str = "",
    snapshot: str = "",
    network: dict[str, list[str]] | None = None,
    auto_sleep_after_s: int = 0,
    memory_ceiling_mb: int = 0,
) -> CreateRequest:
    """Checks a create request and fills in defaults; raises InvalidArgument naming the bad field.

    With a snapshot, an empty template and zero resources stay empty: they are the snapshot's, and
    `snapshot_rules.restore_request` fills them in once it is known.
    """
    template = template or ("" if snapshot else DEFAULT_TEMPLATE)
    if template and not _TEMPLATE.match(template):
        raise errors.InvalidArgument(
            f"template {template!r} is not a valid template name (lowercase letters, digits, '.', '_', '-')"
        )
    if name:
        check_name(name)
    if not snapshot:
        cpu_millis = cpu_millis or DEFAULT_CPU_MILLIS
        memory_mb = memory_mb or DEFAULT_MEMORY_MB
    check_resources(cpu_millis, memory_mb, limits)
    check_memory_ceiling(memory_ceiling_mb, memory_mb, limits)
    if timeout_seconds > MAX_TIMEOUT_S:
        raise errors.InvalidArgument(f"timeout must be at most {MAX_TIMEOUT_S} seconds; use 0 for no timeout")
    check_metadata(metadata)
    _check_envs(envs)
    check_auto_sleep(auto_sleep_after_s)
    checked = check_network(**(network or {}))
    return CreateRequest(
        template,
        name,
        cpu_millis,
        memory_mb,
        dict(metadata),
        dict(envs),
        timeout_seconds,
        isolation,
        trust,
        snapshot,
        network=checked,
        auto_sleep_after_s=auto_sleep_after_s,
        memory_ceiling_mb=memory_ceiling_mb,
    )


def check_memory_ceiling(ceiling_mb: int, memory_mb: int, limits: Limits) -> None:
    """Automatic memory grows from memory_mb (0: the default or the snapshot's) up to the ceiling."""
    if not ceiling_mb:
        return
    if ceiling_mb > limits.max_memory_mb:
        raise errors.InvalidArgument(f"memory_ceiling_mb must be at most {limits.max_memory_mb} (got {ceiling_mb})")
    if memory_mb and ceiling_mb < memory_mb:
        raise errors.InvalidArgument(
            f"memory_ceiling_mb ({ceiling_mb}) must be at least the memory the sandbox starts with ({memory_mb} MB)"
        )


def check_auto_sleep(seconds: int) -> None:
    if seconds and not MIN_AUTO_SLEEP_S <= seconds <= MAX_AUTO_SLEEP_S:
        raise errors.InvalidArgument(
            f"auto_sleep_after must be between {MIN_AUTO_SLEEP_S} and {MAX_AUTO_SLEEP_S} seconds, or 0 for never "
            f"(got {seconds})"
        )


def check_resources(cpu_millis: int, memory_mb: int, limits: Limits) -> None:
    """Checks what a sandbox asks for; 0 passes (it means "the default", filled in elsewhere)."""
    if cpu_millis and not MIN_CPU_MILLIS <= cpu_millis <= limits.max_cpu_millis:
        raise errors.InvalidArgument(
            f"cpu must be between {MIN_CPU_MILLIS / 1000:g} and {limits.max_cpu_millis / 1000:g} vCPUs "
            f"(got {cpu_millis / 1000:g})"
        )
    if memory_mb and not MIN_MEMORY_MB <= memory_mb <= limits.max_memory_mb:
        raise errors.InvalidArgument(
            f"memory_mb must be between {MIN_MEMORY_MB} and {limits.max_memory_mb} (got {memory_mb})"
        )


def check_template_name(name: str) -> None:
    if not _TEMPLATE.match(name):
        raise errors.InvalidArgument(
            f"template name {name!r} is not valid: 1-63 lowercase letters, digits, '.', '_' and '-'"
        )


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise errors.InvalidArgument(
            f"name {name!r} is not valid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if name.startswith(SANDBOX_ID_PREFIX):
        raise errors.InvalidArgument(f"name {name!r} may not start with {SANDBOX_ID_PREFIX!r}, which marks sandbox ids")


def check_metadata(metadata: dict[str, str], what: str = "metadata") -> None:
    """Checks key/value pairs: a sandbox's metadata, or a snapshot's labels (`what` names them)."""
    if len(metadata) > MAX_METADATA:
        raise errors.InvalidArgument(f"at most {MAX_METADATA} {what} entries are allowed (got {len(metadata)})")
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            raise errors.InvalidArgument(f"{what} key {key!r} is not valid: 1-128 letters, digits, '.', '_', '/', '-'")
        if len(value) > 1024:
            raise errors.InvalidArgument(f"{what} value for {key!r} is longer than 1024 characters")


def _check_envs(envs: dict[str, str]) -> None:
    if len(envs) > MAX_ENVS:
        raise errors.InvalidArgument(f"at most {MAX_ENVS} environment variables are allowed (got {len(envs)})")
    total = 0
    for key, value in envs.items():
        if not _ENV_KEY.match(key):
            raise errors.InvalidArgument(f"environment variable name {key!r} is not valid")
        if "\0" in value:
            raise errors.InvalidArgument(f"environment variable {key} contains a NUL byte")
        total += len(key) + len(value.encode())
    if total > MAX_ENV_BYTES:
        raise errors.InvalidArgument(f"environment variables add up to {total} bytes; the limit is {MAX_ENV_BYTES}")


def is_sandbox_id(ref: str) -> bool:
    return ref.startswith(SANDBOX_ID_PREFIX)
