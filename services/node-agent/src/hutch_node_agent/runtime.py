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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hutch.core import errors

log = logging.getLogger(__name__)

CONTAINER: Final = "container"
GVISOR: Final = "gvisor"


# The network namespace a sandbox runs in (a path), or None when it has none of its own.
NetnsLookup = Callable[[str], "str | None"]


def no_netns(sandbox_id: str) -> str | None:
    return None


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


def _first_line(stderr: bytes) -> str:
    """The message of a Go runtime's failure without the goroutine dump after it."""
    text = _clean(stderr)
    return text.split("goroutine ", 1)[0].strip()[:2000]


def _clean(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if not ln.startswith(_NOISE)]
    return "; ".join(lines).strip()


class OciRuntime:
    """One isolation class, driven through its OCI runtime's command line."""

    def __init__(
        self,
        isolation_class: str,
        binary: str,
        state_root: Path,
        flags: tuple[str, ...] = (),
        netns_of: NetnsLookup = no_netns,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise errors.FailedPrecondition(f"{binary} is not installed: run `make deps` (apt-get install {binary})")
        self.isolation_class = isolation_class
        self._binary = path
        self._root = state_root
        self._flags = flags
        self._netns_of = netns_of
        state_root.mkdir(parents=True, exist_ok=True)

    def _cmd(self, *args: str) -> list[str]:
        return [self._binary, f"--root={self._root}", *self._flags, *args]

    def _cmd_for(self, sandbox_id: str, *args: str) -> list[str]:
        """A runtime command about one sandbox, run where the runtime can reach it.

        runsc talks to a running sandbox over an abstract unix socket, and those belong to a network
        namespace: for a sandbox started in its own namespace, every later command must run in that
        namespace too, or runsc cannot reach the sandbox and reports it stopped.
        """
        argv = self._cmd(*args)
        netns = self._netns_of(sandbox_id) if self.isolation_class == GVISOR else None
        return ["nsenter", f"--net={netns}", "--", *argv] if netns else argv

    def networked(self, argv: list[str], netns: str | None) -> list[str]:
        """`argv` of a runtime command that starts a sandbox in the prepared namespace `netns`.

        crun joins it through the OCI config alone. runsc's netstack takes over the namespace's
        link (`--network=sandbox`), but the packaged runsc refuses to on kernels from 6.11 on: it
        takes a namespace for the root one when /proc/sys/net/core/rmem_default is visible, which
        newer kernels show in every namespace (google/gvisor#10704). The command therefore runs in
        that namespace, in a mount namespace of its own where an empty tmpfs hides that directory
        (sysctl directories are per network namespace, so only the sandbox's view is covered).
        """
        if netns is None or self.isolation_class != GVISOR:
            return argv
        argv = [a if not a.startswith("--network=") else "--network=sandbox" for a in argv]
        hide = (
            "mkdir -p /run/hutch/proc && mount -t proc proc /run/hutch/proc"
            ' && mount -t tmpfs -o size=4k,mode=0555 hutch-netns /proc/sys/net/core && exec "$@"'
        )
        return [
            "nsenter", f"--net={netns}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", hide, "sh", *argv,
        ]  # fmt: skip

    async def run_detached(self, sandbox_id: str, bundle: Path, log_path: Path, netns: str | None = None) -> int:
        pid_file = bundle / "init.pid"
        # The sandbox's init inherits the runtime's stdout and stderr: both must be the log file,
        # never a pipe to us, or reading the pipe would wait as long as the sandbox lives.
        argv = self._cmd("run", "--detach", f"--bundle={bundle}", f"--pid-file={pid_file}", sandbox_id)
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self.networked(argv, netns),
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

    async def restore_detached(self, sandbox_id: str, bundle: Path, log_path: Path, image: Path) -> int:
        """Starts the sandbox from a checkpoint image (gVisor): its processes go on where they were,
        in the sandbox's network namespace when it has one."""
        pid_file = bundle / "init.pid"
        argv = self._cmd(
            "restore", "--detach", f"--image-path={image}", f"--bundle={bundle}", f"--pid-file={pid_file}", sandbox_id
        )  # fmt: skip
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self.networked(argv, self._netns_of(sandbox_id)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )  # fmt: skip
            code = await proc.wait()
        if code != 0:
            tail = log_path.read_bytes()[-2000:]
            raise errors.Internal(
                f"{Path(self._binary).name} could not restore sandbox {sandbox_id}: {_clean(tail) or f'exit {code}'}"
            )
        return int(pid_file.read_text().strip())

    async def checkpoint(self, sandbox_id: str, image: Path) -> None:
        """Writes the sandbox's memory and process state to `image` (gVisor); the sandbox stops."""
        code, _, err = await _run(*self._cmd_for(sandbox_id, "checkpoint", f"--image-path={image}", sandbox_id))
        if code != 0:
            raise errors.Internal(f"could not checkpoint sandbox {sandbox_id}: {_first_line(err)}")

    async def pause(self, sandbox_id: str) -> None:
        """Freezes every process of the sandbox (crun: the cgroup freezer)."""
        code, _, err = await _run(*self._cmd_for(sandbox_id, "pause", sandbox_id))
        if code != 0:
            raise errors.Internal(f"could not freeze sandbox {sandbox_id}: {_clean(err)}")

    async def resume(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd_for(sandbox_id, "resume", sandbox_id))
        if code != 0:
            raise errors.Internal(f"could not thaw sandbox {sandbox_id}: {_clean(err)}")

    async def signal(self, sandbox_id: str, signal_name: str) -> None:
        """Sends a signal to the sandbox's init (the supervisor)."""
        code, _, err = await _run(*self._cmd_for(sandbox_id, "kill", sandbox_id, signal_name))
        if code != 0:
            raise errors.Internal(f"could not signal sandbox {sandbox_id}: {_clean(err)}")

    async def kill(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd_for(sandbox_id, "kill", "--all", sandbox_id, "KILL"))
        if code != 0:
            state = await self.state(sandbox_id)
            if state is not None and state.status not in ("stopped", "created"):
                raise errors.Internal(f"could not kill sandbox {sandbox_id}: {_clean(err)}")

    async def delete(self, sandbox_id: str) -> None:
        code, _, err = await _run(*self._cmd_for(sandbox_id, "delete", "--force", sandbox_id))
        if code != 0 and await self.state(sandbox_id) is not None:
            raise errors.Internal(f"could not delete sandbox {sandbox_id}: {_clean(err)}")

    async def state(self, sandbox_id: str) -> RuntimeState | None:
        code, out, _ = await _run(*self._cmd_for(sandbox_id, "state", sandbox_id))
        if code != 0:
            return None
        data = json.loads(out)
        return RuntimeState(status=data.get("status", "unknown"), pid=int(data.get("pid") or 0))

    async def list(self) -> dict[str, RuntimeState]:
        code, out, err = await _run(*self._cmd("list", "--format=json"))
        if code != 0:
            raise errors.Internal(f"{Path(self._binary).name} list failed: {_clean(err)}")
        entries = json.loads(out or b"[]") or []
        states = {e["id"]: RuntimeState(status=e.get("status", "unknown"), pid=int(e.get("pid") or 0)) for e in entries}
        for sandbox_id in states:
            # Seen from here, a sandbox in its own namespace looks stopped: ask inside (see _cmd_for).
            if self.isolation_class == GVISOR and self._netns_of(sandbox_id):
                states[sandbox_id] = await self.state(sandbox_id) or states[sandbox_id]
        return states


def crun(state_root: Path) -> OciRuntime:
    """Containers: namespaces, cgroups, seccomp and capabilities around the host kernel."""
    return OciRuntime(CONTAINER, "crun", state_root)


def runsc(state_root: Path, network: str = "none", netns_of: NetnsLookup = no_netns) -> OciRuntime:
    """gVisor: a user-space kernel between the sandbox and the host (ptrace platform).

    `--host-uds=create` lets the supervisor create its socket in the host folder mounted at
    /.hutch/run; `--overlay2=none` makes writes to the root filesystem land in the sandbox's
    overlay upper layer on the host, where snapshots and quotas see them.
    """
    flags = ("--host-uds=create", "--overlay2=none", f"--network={network}")
    return OciRuntime(GVISOR, "runsc", state_root, flags, netns_of=netns_of)


def node_runtimes(layout_root: Path, network: str = "none", netns_of: NetnsLookup = no_netns) -> dict[str, OciRuntime]:
    """Every isolation class this host can run, keyed by class: a class whose runtime is not installed
    is simply not offered (the node's heartbeat says which it has). `netns_of` finds the network
    namespace a sandbox runs in (SandboxNetworks.netns_of)."""
    runtimes: dict[str, OciRuntime] = {}
    if shutil.which("crun"):
        runtimes[CONTAINER] = crun(layout_root / "runtimes" / CONTAINER)
    if shutil.which("runsc"):
        runtimes[GVISOR] = runsc(layout_root / "runtimes" / GVISOR, network, netns_of)
    if not runtimes:
        raise errors.FailedPrecondition("neither crun nor runsc is installed: run `make deps`")
    return runtimes
