"""The whole platform on one machine: NATS, PostgreSQL, S3 and the services, as child processes.

`up()` starts (or attaches to) the three servers, then every installed service, waits until each one
answers its health check and records the result in stack.json. The processes run in their own
sessions, so they survive the command that started them; `down()` (from any process) stops them in
reverse order using the recorded pids. Data lives next to stack.json and survives `down`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from hutch.local import state as state_file
from hutch.local.credentials import load_or_create
from hutch.local.health import component_healthy
from hutch.local.locking import locked as _locked
from hutch.local.model import (
    DEFAULT_TEMPLATES_DIR,
    SERVER_PORTS,
    ComponentStatus,
    Event,
    Health,
    Observer,
    RegionStatus,
    StackError,
    StackOptions,
    UpResult,
    component_names,
    default_ports,
    ignore,
)
from hutch.local.paths import StackPaths, default_home
from hutch.local.process import ProcessHandle, log_offset, log_tail, spawn
from hutch.local.regions import MAX_REGIONS, extra_region_homes, find_region_home, region_home, region_name
from hutch.local.starting import Starter
from hutch.local.starting_regions import RegionsStarter, in_region
from hutch.local.state import ComponentState, StackState
from hutch.local.stopping import stop_components, stop_group

__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "SERVER_PORTS",
    "ComponentStatus",
    "Event",
    "Observer",
    "RegionStatus",
    "StackError",
    "StackOptions",
    "UpResult",
    "component_names",
    "default_ports",
    "down",
    "kill",
    "read_state",
    "regions_status",
    "restart",
    "status",
    "supervise",
    "up",
    "up_regions",
]


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


def _existing_stack(paths: StackPaths, existing: StackState, secrets_file: Path | None = None) -> UpResult | None:
    managed = _managed(existing)
    running = [c.name for c in managed if _alive(c)]
    if managed and len(running) == len(managed):
        # The regions after the first share the first region's credentials.
        secrets = load_or_create(secrets_file or paths.secrets_file)
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


def up_regions(
    options: StackOptions, count: int, observer: Observer = ignore, *, detach: bool = True
) -> list[UpResult]:
    """Starts `count` regions joined as a NATS supercluster (see `hutch.local.regions`), the first
    in `options.home`; returns each region's result, the first region's first. One region is `up`."""
    if count == 1:
        return [up(options, observer, detach=detach)]
    if not 1 <= count <= MAX_REGIONS:
        raise StackError(f"--regions must be between 1 and {MAX_REGIONS}")
    if options.nats_url:
        raise StackError("each region runs a NATS server of its own: --nats-url cannot be used with --regions")
    names = [region_name(options.region, index) for index in range(1, count + 1)]
    homes = [options.home, *(region_home(options.home, name) for name in names[1:])]
    with contextlib.ExitStack() as locks:
        for home in homes:
            locks.enter_context(_locked(StackPaths(home)))
        found = _existing_regions(homes)
        if found is not None:
            return found
        secrets = load_or_create(StackPaths(options.home).secrets_file)
        return RegionsStarter(options, count, secrets, observer, detach).run()


def _existing_regions(homes: list[Path]) -> list[UpResult] | None:
    """The results of regions that all run already; None when none does (an error when only some do)."""
    secrets_file = StackPaths(homes[0]).secrets_file
    results: list[UpResult | None] = []
    for home in homes:
        paths = StackPaths(home)
        existing = state_file.load(paths.stack_file)
        results.append(None if existing is None else _existing_stack(paths, existing, secrets_file))
    running = [result for result in results if result is not None]
    if not running:
        return None
    if len(running) < len(results):
        raise StackError(
            f"the local stack in {StackPaths(homes[0]).local} runs {len(running)} of the {len(homes)} regions "
            "asked for; run `hutch local down` first"
        )
    return running


def down(home: Path | None = None, observer: Observer = ignore, *, timeout: float = 10.0) -> bool:
    """Stops the stack (services first, SIGTERM then SIGKILL after `timeout`) and forgets it; with
    several regions, the last region first and the first (whose servers the others use) last.

    Data stays. Returns False when no stack was recorded.
    """
    home = home or default_home()
    stopped = False
    for region_home_, region_observer in reversed(_regions(home, observer)):
        stopped = _down_region(region_home_, region_observer, timeout) or stopped
    return stopped


def _down_region(home: Path, observer: Observer, timeout: float) -> bool:
    paths = StackPaths(home)
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


def regions_status(home: Path | None = None) -> list[RegionStatus] | None:
    """`status` of every region, the first region first; None when no stack is recorded."""
    home = home or default_home()
    if read_state(home) is None:
        return None
    result = []
    for region_home_ in [home, *extra_region_homes(home)]:
        state, rows = read_state(region_home_), status(region_home_)
        if state is not None and rows is not None:
            result.append(RegionStatus(state.region, region_home_, rows))
    return result


def _region_home(home: Path | None, region: str | None) -> Path:
    try:
        return find_region_home(home or default_home(), region)
    except KeyError as exc:
        raise StackError(str(exc.args[0])) from exc


def kill(home: Path | None, name: str, *, region: str | None = None) -> None:
    """SIGKILLs one component (for failure tests) of `region` (None: the first); `restart` brings
    it back."""
    current = read_state(_region_home(home, region))
    if current is None:
        raise StackError("no local stack is running")
    handle = current.component(name).handle()
    if handle is None:
        raise StackError(f"{name} is external; it is not this stack's to kill", component=name)
    handle.kill()


def restart(home: Path | None, name: str, *, timeout: float = 60.0, region: str | None = None) -> ComponentState:
    """Stops one component (SIGTERM, then SIGKILL) of `region` (None: the first) and starts it again
    with the same command and environment, then waits until it is healthy."""
    paths = StackPaths(_region_home(home, region))
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
    """Keeps a foreground stack (every region of it) running until `shutdown` is set, reporting
    components that exit, then stops everything in reverse order and forgets the stack."""
    home = home or default_home()
    reported: set[tuple[Path, str, int | None]] = set()
    while not shutdown.wait(0.5):
        if read_state(home) is None:
            # `down` from another terminal already stopped everything.
            return
        for region_home_, region_observer in _regions(home, observer):
            current = read_state(region_home_)
            for component in _managed(current) if current is not None else []:
                key = (region_home_, component.name, component.pid)
                if key not in reported and not _alive(component):
                    reported.add(key)
                    handle = component.handle()
                    code = handle.returncode() if handle is not None else None
                    region_observer(component.name, "exited", f"exit status {code}; see {component.log}")
    for region_home_, region_observer in reversed(_regions(home, observer)):
        paths = StackPaths(region_home_)
        with _locked(paths):
            current = state_file.load(paths.stack_file)
            if current is not None:
                stop_components(current, region_observer)
                state_file.remove(paths.stack_file)


def _regions(home: Path, observer: Observer) -> list[tuple[Path, Observer]]:
    """The home of every region, the first first, with an observer naming the region (after the first)."""
    return [(home, observer), *((extra, in_region(observer, extra.name)) for extra in extra_region_homes(home))]
