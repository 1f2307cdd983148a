"""Isolation runtimes behind one interface: `crun` runs the `container` class, `runsc` the `gvisor` class.

Both speak the OCI runtime command line (run, kill, delete, state, list), so one class drives either
with its own binary and flags. The node-agent never keeps a runtime process as its child: `run
--detach` leaves the sandbox's init (the supervisor) running on its own, so sandboxes survive a
node-agent restart and are found again from the runtime's state folder.

A `microvm` class is not offered: these nodes cannot run hardware-virtualised guests (nested KVM
does not work here), and no code path pretends otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hutch.core import errors

log = logging.getLogger(__name__)

CONTAINER: Final = "container"
GVISOR: Final = "gvisor"


@dataclass(frozen=True)
class RuntimeState:
    status: str  # "created", "running", "paused" or "stopped"
    pid: int


async def _run(*argv: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out or b"", err or b""


# crun warns on every call on hosts with a cgroup v1 + v2 hybrid layout; it is not an error.
_NOISE = ("cgroups in hybrid mode",)


def _clean(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if not ln.startswith(_NOISE)]
    return "; ".join(lines).strip()


class OciRuntime:
    """One isolation class, driven through its OCI runtime's command line."""

    def __init__(self, isolation_class: str, binary: str, state_root: Path, flags: tuple[str, ...] = ()) -> None:
        path = shutil.which(binary)
        if path is None:
            raise errors.FailedPrecondition(f"{binary} is not installed: run `make deps` (apt-get install {binary})")
        self.isolation_class = isolation_class
        self._binary = path
        self._root = state_root
        self._flags = flags
        state_root.mkdir(parents=True, exist_ok=True)

    def _cmd(self, *args: str) -> list[str]:
        return [self._binary, f"--root={self._root}", *self._flags, *args]

    async def run_detached(self, sandbox_id: str, bundle: Path, log_path: Path) -> int:
        pid_file = bundle / "init.pid"
        # The sandbox's init inherits the runtime's stdout and stderr: both must be the log file,
        # never a pipe to us, or reading the pipe would wait as long as the sandbox lives.
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self._cmd("run", "--detach", f"--bundle={bundle}", f"--pid-file={pid_file}", sandbox_id),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
            code = await proc.wait()
        if code != 0:
            tail = log_path.read_bytes()[-2000:]
            raise errors.Internal(
                f"{Path(self._binary).name} could not start sandbox {sandbox_id}: {_clean(tail) or f'exit {code}'}"
            )
        return int(pid_file.read_text().strip())

    async def kill(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd("kill", "--all", sandbox_id, "KILL"))
        if code != 0:
            state = await self.state(sandbox_id)
            if state is not None and state.status not in ("stopped", "created"):
                raise errors.Internal(f"could not kill sandbox {sandbox_id}: {_clean(err)}")

    async def delete(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd("delete", "--force", sandbox_id))
        if code != 0 and await self.state(sandbox_id) is not None:
            raise errors.Internal(f"could not delete sandbox {sandbox_id}: {_clean(err)}")

    async def state(self, sandbox_id: str) -> RuntimeState | None:
        code, out, _ = await _run(*self._cmd("state", sandbox_id))
        if code != 0:
            return None
        data = json.loads(out)
        return RuntimeState(status=data.get("status", "unknown"), pid=int(data.get("pid") or 0))

    async def list(self) -> dict[str, RuntimeState]:
        code, out, err = await _run(*self._cmd("list", "--format=json"))
        if code != 0:
            raise errors.Internal(f"{Path(self._binary).name} list failed: {_clean(err)}")
        entries = json.loads(out or b"[]") or []
        return {e["id"]: RuntimeState(status=e.get("status", "unknown"), pid=int(e.get("pid") or 0)) for e in entries}


def crun(state_root: Path) -> OciRuntime:
    """Containers: namespaces, cgroups, seccomp and capabilities around the host kernel."""
    return OciRuntime(CONTAINER, "crun", state_root)


def runsc(state_root: Path, network: str = "none") -> OciRuntime:
    """gVisor: a user-space kernel between the sandbox and the host (ptrace platform).

    `--host-uds=create` lets the supervisor create its socket in the host folder mounted at
    /.hutch/run; `--overlay2=none` makes writes to the root filesystem land in the sandbox's
    overlay upper layer on the host, where snapshots and quotas see them.
    """
    flags = ("--host-uds=create", "--overlay2=none", f"--network={network}")
    return OciRuntime(GVISOR, "runsc", state_root, flags)


def node_runtimes(layout_root: Path, network: str = "none") -> dict[str, OciRuntime]:
    """Every isolation class this host can run, keyed by class: a class whose runtime is not installed
    is simply not offered (the node's heartbeat says which it has)."""
    runtimes: dict[str, OciRuntime] = {}
    if shutil.which("crun"):
        runtimes[CONTAINER] = crun(layout_root / "runtimes" / CONTAINER)
    if shutil.which("runsc"):
        runtimes[GVISOR] = runsc(layout_root / "runtimes" / GVISOR, network)
    if not runtimes:
        raise errors.FailedPrecondition("neither crun nor runsc is installed: run `make deps`")
    return runtimes
