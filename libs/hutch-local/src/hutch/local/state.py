"""stack.json: what runs, where, and how to start it again.

Written while the stack starts (so an interrupted start can still be cleaned up by `down`) and removed
by `down`. It holds credentials (service environments), hence mode 0600.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hutch.local.files import read_json, write_json_private
from hutch.local.process import ProcessHandle

Kind = Literal["server", "service"]
FORMAT_VERSION = 1


@dataclass
class ComponentState:
    """One server or service of the stack."""

    name: str
    kind: Kind
    address: str
    external: bool = False
    pid: int | None = None
    ticks: int | None = None
    log: str | None = None
    # The command and the environment it needs beyond the caller's, so it can be restarted.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def handle(self) -> ProcessHandle | None:
        """The process, for components this stack started."""
        return None if self.pid is None else ProcessHandle(self.pid, self.ticks)


@dataclass
class StackState:
    """The running stack as recorded in stack.json."""

    nats_url: str
    postgres_dsn: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    region: str = "local"
    endpoint: str | None = None
    detached: bool = True
    # The foreground `hutch local up` that supervises the stack; `down` asks it to stop everything.
    supervisor_pid: int | None = None
    supervisor_ticks: int | None = None
    components: list[ComponentState] = field(default_factory=list)

    def component(self, name: str) -> ComponentState:
        """The component called `name`; KeyError if the stack has none."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"the stack has no component {name!r}; it has: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [component.name for component in self.components]

    def put(self, component: ComponentState) -> None:
        """Adds `component`, replacing one of the same name."""
        self.components = [c for c in self.components if c.name != component.name] + [component]

    def supervisor(self) -> ProcessHandle | None:
        return None if self.supervisor_pid is None else ProcessHandle(self.supervisor_pid, self.supervisor_ticks)


def save(path: Path, state: StackState) -> None:
    """Writes stack.json."""
    write_json_private(path, {"version": FORMAT_VERSION, **asdict(state)})


def load(path: Path) -> StackState | None:
    """Reads stack.json; None when no stack has been started."""
    data: Any = read_json(path)
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return None
    data.pop("version")
    components = [ComponentState(**component) for component in data.pop("components", [])]
    return StackState(**data, components=components)


def remove(path: Path) -> None:
    """Deletes stack.json."""
    path.unlink(missing_ok=True)
