"""The whole platform on one machine: NATS, PostgreSQL, S3 and the services, as child processes.

`up()` starts (or attaches to) the three servers, then every installed service, waits until each one
answers its health check and records the result in stack.json. The processes run in their own
sessions, so they survive the command that started them; `down()` (from any process) stops them in
reverse order using the recorded pids. Data lives next to stack.json and survives `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from hutch.local import state as state_file
from hutch.local.credentials import load_or_create
from hutch.local.health import component_healthy
from hutch.local.model import (
    DEFAULT_TEMPLATES_DIR,
    SERVER_PORTS,
    ComponentStatus,
    Event,
    Health,
    Observer,
    StackError,
    StackOptions,
    UpResult,
    component_names,
    default_ports,
    ignore,
)
from hutch.local.paths import StackPaths, default_home
from hutch.local.process import ProcessHandle, log_offset, log_tail, spawn
from hutch.local.starting import Starter
from hutch.local.state import ComponentState, StackState
from hutch.local.stopping import stop_components, stop_group

__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "SERVER_PORTS",
    "ComponentStatus",
    "Event",
    "Observer",
    "StackError",
    "StackOptions",
    "UpResult",
    "component_names",
    "default_ports",
    "down",
    "kill",
    "read_state",
    "restart",
    "status",
    "supervise",
    "up",
]


@contextlib.contextmanager
def _locked(paths: StackPaths) -> Iterator[None]:
    """Serialises up/down/restart on one home directory across processes."""
    paths.local.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(home: Path | None = None) -> StackState | None:
    """The recorded stack, or None when it is down."""
    return state_file.load(StackPaths(home or default_home()).stack_file)


def _alive(component: ComponentState) -> bool:
    handle = component.handle()
    return handle is not None and handle.alive()


def _managed(state: StackState) -> list[ComponentState]:
    return [c for c in state.components if not c.external]


def up(options: StackOptions, observer: Observer = ignore, *, detach: bool = True) -> UpResult:
    """Starts the stack and waits until every component is healthy.

    With `detach=False` the calling process is recorded as the stack's supervisor (see `supervise`).
    On failure everything started so far is stopped again and StackError is raised.
    """
    paths = StackPaths(options.home)
    with _locked(paths):
        existing = state_file.load(paths.stack_file)
        if existing is not None:
            found = _existing_stack(paths, existing)
            if found is not None:
                return found
        secrets = load_or_create(paths.secrets_file)
        return Starter(options, paths, secrets, observer, detach).run()


def _existing_stack(paths: StackPaths, existing: StackState) -> UpResult | None:
    managed = _managed(existing)
    running = [c.name for c in managed if _alive(c)]
    if managed and len(running) == len(managed):
        secrets = load_or_create(paths.secrets_file)
        return UpResult(existing, already_running=True, api_key=secrets.api_key)
    if running:
        stopped = [c.name for c in managed if c.name not in running]
        raise StackError(
            f"the local stack in {paths.local} is partly running ({', '.join(stopped)} stopped); "
            "run `hutch local down` first"
        )
    # Nothing of it runs any more (e.g. after a reboot): forget it.
    state_file.remove(paths.stack_file)
    return None


def down(home: Path | None = None, observer: Observer = ignore, *, timeout: float = 10.0) -> bool:
    """Stops the stack (services first, SIGTERM then SIGKILL after `timeout`) and forgets it.

    Data stays. Returns False when no stack was recorded.
    """
    paths = StackPaths(home or default_home())
    current = state_file.load(paths.stack_file)
    if current is None:
        return False
    supervisor = current.supervisor()
    if supervisor is not None and supervisor.pid != os.getpid() and supervisor.alive():
        # A foreground `up` owns the stack: ask it to shut down in order, and wait for it.
        supervisor.send(signal.SIGTERM)
        supervisor.wait(timeout * (len(current.components) + 1))
    with _locked(paths):
        current = state_file.load(paths.stack_file)
        if current is None:
            return True
        stop_components(current, observer, timeout)
        state_file.remove(paths.stack_file)
    return True


def status(home: Path | None = None) -> list[ComponentStatus] | None:
    """The state of every component, probing the live ones; None when no stack is recorded."""
    current = read_state(home)
    if current is None:
        return None
    rows = []
    for component in current.components:
        if not component.external and not _alive(component):
            health: Health = "stopped"
        else:
            health = "healthy" if component_healthy(current, component) else "unhealthy"
        rows.append(
            ComponentStatus(
                name=component.name,
                kind=component.kind,
                pid=component.pid,
                address=component.address,
                state=health,
                external=component.external,
            )
        )
    return rows


def kill(home: Path | None, name: str) -> None:
    """SIGKILLs one component (for failure tests); `restart` brings it back."""
    current = read_state(home)
    if current is None:
        raise StackError("no local stack is running")
    handle = current.component(name).handle()
    if handle is None:
        raise StackError(f"{name} is external; it is not this stack's to kill", component=name)
    handle.kill()


def restart(home: Path | None, name: str, *, timeout: float = 60.0) -> ComponentState:
    """Stops one component (SIGTERM, then SIGKILL) and starts it again with the same command and
    environment, then waits until it is healthy."""
    paths = StackPaths(home or default_home())
    with _locked(paths):
        current = state_file.load(paths.stack_file)
        if current is None:
            raise StackError("no local stack is running")
        component = current.component(name)
        if component.external or not component.argv or component.log is None:
            raise StackError(f"{name} is external; it is not this stack's to restart", component=name)
        stop_group([component], ignore, 10.0)
        log = Path(component.log)
        since = log_offset(log)
        handle = spawn(component.argv, log_path=log, env={**os.environ, **component.env}, user=component.user)
        restarted = replace(component, pid=handle.pid, ticks=handle.ticks)
        current.components = [restarted if c.name == name else c for c in current.components]
        state_file.save(paths.stack_file, current)
    _wait_healthy(current, restarted, handle, since, timeout)
    return restarted


def _wait_healthy(
    current: StackState, component: ComponentState, handle: ProcessHandle, since: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not component_healthy(current, component):
        if not handle.alive() or time.monotonic() >= deadline:
            what = "exited" if not handle.alive() else f"was not healthy within {timeout:.0f}s"
            raise StackError(
                f"{component.name} {what} after a restart",
                component=component.name,
                log_tail=log_tail(Path(component.log or "/dev/null"), since=since),
            )
        time.sleep(0.1)


def supervise(home: Path | None, shutdown: threading.Event, observer: Observer = ignore) -> None:
    """Keeps a foreground stack running until `shutdown` is set, reporting components that exit,
    then stops everything in reverse order and forgets the stack."""
    paths = StackPaths(home or default_home())
    reported: set[tuple[str, int | None]] = set()
    while not shutdown.wait(0.5):
        current = state_file.load(paths.stack_file)
        if current is None:
            # `down` from another terminal already stopped everything.
            return
        for component in _managed(current):
            key = (component.name, component.pid)
            if key not in reported and not _alive(component):
                reported.add(key)
                handle = component.handle()
                code = handle.returncode() if handle is not None else None
                observer(component.name, "exited", f"exit status {code}; see {component.log}")
    with _locked(paths):
        current = state_file.load(paths.stack_file)
        if current is not None:
            stop_components(current, observer)
            state_file.remove(paths.stack_file)
