"""Stopping components in order: services before servers, each group in reverse start order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hutch.local.model import Observer
from hutch.local.process import ProcessHandle
from hutch.local.servers import ManagedServer, NatsServer, PostgresServer, S3Server
from hutch.local.servers.s3 import remove_sockets
from hutch.local.state import ComponentState, StackState

# The longest `hutch-node-agent release` may take (killing many sandboxes, unmounting the volume).
RELEASE_TIMEOUT_S = 120

SERVER_CLASSES: Mapping[str, type[ManagedServer]] = {
    "nats": NatsServer,
    "postgres": PostgresServer,
    "s3": S3Server,
}


def stop_policy(component: ComponentState, timeout: float) -> tuple[int, float]:
    """The signal that stops `component` gracefully, and how long to wait before SIGKILL."""
    server = SERVER_CLASSES.get(component.name) if component.kind == "server" else None
    if server is None:
        return signal.SIGTERM, timeout
    return server.stop_signal, min(server.stop_timeout_s, timeout)


def stop_group(components: Sequence[ComponentState], observer: Observer, timeout: float) -> None:
    """Signals each component in the given order, then waits for all of them together.

    Signalling all first means a group takes as long as its slowest member to stop, not the sum.
    """
    running: list[tuple[ComponentState, ProcessHandle, float]] = []
    for component in components:
        handle = component.handle()
        if component.external or handle is None:
            continue
        if handle.alive():
            observer(component.name, "stopping", "")
            sig, grace = stop_policy(component, timeout)
            handle.send(sig)
            running.append((component, handle, time.monotonic() + grace))
        else:
            observer(component.name, "stopped", "")
    for component, handle, deadline in running:
        if not handle.wait(max(0.0, deadline - time.monotonic())):
            handle.kill()
        observer(component.name, "stopped", "")


def stop_components(state: StackState, observer: Observer, timeout: float = 10.0) -> None:
    """Stops the services (the gateway, started last, is signalled first), then the servers."""
    services = [c for c in state.components if c.kind == "service"]
    servers = [c for c in state.components if c.kind == "server"]
    stop_group(list(reversed(services)), observer, timeout)
    for component in services:
        if component.name == "node-agent" and not component.external and component.argv:
            release_node(component, observer)
    stop_group(list(reversed(servers)), observer, timeout)
    for component in servers:
        if component.name == "s3" and not component.external and component.argv:
            with contextlib.suppress(StopIteration, ValueError, OSError):
                remove_sockets(Path(_flag(component.argv, "dir")), int(component.address.rpartition(":")[2]))


def release_node(component: ComponentState, observer: Observer) -> None:
    """Kills the sandboxes the stopped node-agent left and undoes its host setup (networks, firewall
    table, the volume mount): without it they would outlive the stack, holding memory and mounts."""
    observer(component.name, "stopping", "its sandboxes, networks and sandbox volume")
    done = subprocess.run(
        [*component.argv, "release"],
        env={**os.environ, **component.env},
        capture_output=True,
        text=True,
        timeout=RELEASE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        observer(component.name, "failed", "release: " + (done.stderr.strip().splitlines() or ["?"])[-1])


def _flag(argv: Sequence[str], name: str) -> str:
    prefix = f"-{name}="
    return next(arg[len(prefix) :] for arg in argv if arg.startswith(prefix))
