"""The vocabulary of `hutch.local.stack`: options, results, progress events and errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hutch.local.paths import default_home
from hutch.local.services import SERVICES
from hutch.local.state import StackState

SERVER_PORTS: Mapping[str, int] = {"nats": 14222, "postgres": 15432, "s3": 18333}
# The further listeners of a NATS server that is one region of a supercluster (`up --regions`).
NATS_LINK_PORTS: Mapping[str, int] = {"nats-cluster": 16222, "nats-gateway": 17222, "nats-monitor": 18222}
DEFAULT_TEMPLATES_DIR = Path("/var/lib/hutch/templates")

Event = Literal["starting", "ready", "skipped", "failed", "stopping", "stopped", "exited"]
Health = Literal["healthy", "unhealthy", "stopped"]


class Observer(Protocol):
    """Receives progress: a component, what happened to it, and a detail (address, reason)."""

    def __call__(self, component: str, event: Event, detail: str = "") -> None: ...


def ignore(component: str, event: Event, detail: str = "") -> None:
    """An observer that shows nothing."""
    return


class StackError(RuntimeError):
    """The stack could not be started or changed; names the component and carries its log's tail."""

    def __init__(self, message: str, *, component: str | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.component = component
        self.log_tail = log_tail


def default_ports() -> dict[str, int]:
    """The port of every component when nothing else is asked for."""
    extra = {name: port for spec in SERVICES for name, port in spec.extra_ports}
    return {**SERVER_PORTS, **{spec.name: spec.default_port for spec in SERVICES}, **extra, **NATS_LINK_PORTS}


def component_names() -> list[str]:
    """Every component the stack knows, servers first, in start order."""
    extra = {name for spec in SERVICES for name, _ in spec.extra_ports} | set(NATS_LINK_PORTS)
    return [name for name in default_ports() if name not in extra]


@dataclass(frozen=True)
class StackOptions:
    """How to run the stack. Ports are by component name; 0 picks a free port."""

    home: Path = field(default_factory=default_home)
    ports: Mapping[str, int] = field(default_factory=dict)
    # External servers to use instead of starting embedded ones.
    nats_url: str | None = None
    postgres_dsn: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "hutch"
    region: str = "local"
    log_level: str = "INFO"
    node_id: str = "local-1"
    node_root_dir: Path | None = None
    # The node-agent's cgroup parent and sandbox address pool (None: the node-agent's defaults);
    # node-agents sharing a host need their own.
    node_cgroup_parent: str | None = None
    sandbox_network: str | None = None
    templates_dir: Path = DEFAULT_TEMPLATES_DIR
    startup_timeout_s: float = 120.0
    # False turns off fsync in PostgreSQL: for throwaway stacks in tests.
    durable: bool = True
    # Only these services (None: every installed one).
    services: Sequence[str] | None = None

    def port(self, component: str) -> int:
        """The requested port of `component` (its default unless overridden)."""
        return self.ports.get(component, default_ports()[component])


@dataclass(frozen=True)
class UpResult:
    """What `up()` found or started."""

    state: StackState
    already_running: bool
    api_key: str
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComponentStatus:
    """One row of `hutch local status`."""

    name: str
    kind: str
    pid: int | None
    address: str
    state: Health
    external: bool


@dataclass(frozen=True)
class RegionStatus:
    """The components of one region of `hutch local status`."""

    region: str
    home: Path
    components: list[ComponentStatus]
