"""Isolation runtimes behind one interface. `crun` runs the `container` class.

The node-agent never keeps a runtime process as its child: `crun run --detach` leaves the sandbox's
init (the supervisor) running on its own, so sandboxes survive a node-agent restart and are found
again from crun's state folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hutch.core import errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeState:
    status: str  # "created", "running", "paused" or "stopped"
    pid: int


class Runtime(Protocol):
    isolation_class: str

    async def run_detached(self, sandbox_id: str, bundle: Path, log_path: Path) -> int: ...
    async def kill(self, sandbox_id: str) -> None: ...
    async def delete(self, sandbox_id: str) -> None: ...
    async def state(self, sandbox_id: str) -> RuntimeState | None: ...
    async def list(self) -> dict[str, RuntimeState]: ...


async def _run(*argv: str, stdout: int | None = asyncio.subprocess.PIPE) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out or b"", err or b""


# crun warns on every call on hosts with a cgroup v1 + v2 hybrid layout; it is not an error.
_NOISE = ("cgroups in hybrid mode",)


def _clean(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if not ln.startswith(_NOISE)]
    return "; ".join(lines).strip()


class CrunRuntime:
    """OCI containers with crun: the fast `container` isolation class."""

    isolation_class = "container"

    def __init__(self, state_root: Path, binary: str = "crun") -> None:
        path = shutil.which(binary)
        if path is None:
            raise errors.FailedPrecondition(f"{binary} is not installed: run `make deps` (apt-get install crun)")
        self._crun = path
        self._root = state_root
        state_root.mkdir(parents=True, exist_ok=True)

    def _cmd(self, *args: str) -> list[str]:
        return [self._crun, f"--root={self._root}", *args]

    async def run_detached(self, sandbox_id: str, bundle: Path, log_path: Path) -> int:
        pid_file = bundle / "init.pid"
        # The sandbox's init inherits crun's stdout and stderr: both must be the log file, never a
        # pipe to us, or reading the pipe would wait as long as the sandbox lives.
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
            raise errors.Internal(f"crun could not start sandbox {sandbox_id}: {_clean(tail) or f'exit {code}'}")
        return int(pid_file.read_text().strip())

    async def kill(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd("kill", "--all", sandbox_id, "KILL"))
        if code != 0 and "does not exist" not in err.decode(errors="replace"):
            state = await self.state(sandbox_id)
            if state is not None and state.status != "stopped":
                raise errors.Internal(f"crun could not kill sandbox {sandbox_id}: {_clean(err)}")

    async def delete(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd("delete", "--force", sandbox_id))
        if code != 0 and await self.state(sandbox_id) is not None:
            raise errors.Internal(f"crun could not delete sandbox {sandbox_id}: {_clean(err)}")

    async def state(self, sandbox_id: str) -> RuntimeState | None:
        code, out, _ = await _run(*self._cmd("state", sandbox_id))
        if code != 0:
            return None
        data = json.loads(out)
        return RuntimeState(status=data.get("status", "unknown"), pid=int(data.get("pid") or 0))

    async def list(self) -> dict[str, RuntimeState]:
        code, out, err = await _run(*self._cmd("list", "--format=json"))
        if code != 0:
            raise errors.Internal(f"crun list failed: {_clean(err)}")
        entries = json.loads(out or b"[]") or []
        return {e["id"]: RuntimeState(status=e.get("status", "unknown"), pid=int(e.get("pid") or 0)) for e in entries}
