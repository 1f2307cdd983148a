"""A running sandbox's CPU and memory limits, changed in place in its cgroup, and the memory it uses.

The sandbox's cgroup is `<parent>/<sandbox id>` under each controller (cgroup v1: `cpu/` and
`memory/`; v2: one folder). Everything its runtime runs sits in that cgroup (gVisor's Sentry and
Gofer too), so the limits written here bind the whole sandbox, whichever runtime started it.

Memory on v1 has two limits (memory and memory + swap, kept equal: no swap), and the kernel refuses
a memory limit above the memory + swap one: growing writes memory + swap first, shrinking writes it
last. A memory limit the cgroup cannot shrink to (it would have to reclaim memory in use) is
refused by the kernel with EBUSY; the caller checks what the sandbox uses first anyway, so the
kernel never gets to OOM-kill anything over a resize.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from hutch.core import errors
from hutch_node_agent.cgroup_stats import CGROUP_ROOT


@dataclass(frozen=True)
class Limits:
    cpu_quota_us: int
    cpu_period_us: int
    memory_bytes: int


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as out:
            out.write(value)
    except FileNotFoundError as exc:
        raise errors.FailedPrecondition(f"the sandbox's cgroup is gone ({path.parent})") from exc
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise errors.FailedPrecondition(
                f"the kernel cannot shrink the sandbox's memory to {value} bytes: it uses more than that"
            ) from exc
        raise errors.Internal(f"could not write {value} to {path}: {exc}") from exc


class CgroupLimits:
    """Reads usage from and writes limits to `<parent>/<sandbox id>` on either cgroup version."""

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self.unified = (root / "cgroup.controllers").exists()
        self._root = root
        self._parent = parent.strip("/")

    def _cpu(self, sandbox_id: str) -> Path:
        base = self._root if self.unified else self._root / "cpu"
        return base / self._parent / sandbox_id

    def _memory(self, sandbox_id: str) -> Path:
        base = self._root if self.unified else self._root / "memory"
        return base / self._parent / sandbox_id

    def memory_in_use(self, sandbox_id: str) -> int:
        """Bytes the sandbox holds that could not simply be dropped: usage minus inactive page cache
        (what the kernel would have to take from its processes to go below)."""
        folder = self._memory(sandbox_id)
        try:
            usage = int(_read(folder / ("memory.current" if self.unified else "memory.usage_in_bytes")))
            stats = dict(line.split() for line in _read(folder / "memory.stat").splitlines() if " " in line)
        except FileNotFoundError as exc:
            raise errors.FailedPrecondition(f"the cgroup of sandbox {sandbox_id} is gone") from exc
        inactive = int(stats.get("inactive_file" if self.unified else "total_inactive_file", 0))
        return max(0, usage - inactive)

    def read(self, sandbox_id: str) -> Limits:
        cpu, memory = self._cpu(sandbox_id), self._memory(sandbox_id)
        if self.unified:
            quota, period = _read(cpu / "cpu.max").split()
            limit = _read(memory / "memory.max")
            return Limits(-1 if quota == "max" else int(quota), int(period), -1 if limit == "max" else int(limit))
        return Limits(
            int(_read(cpu / "cpu.cfs_quota_us")),
            int(_read(cpu / "cpu.cfs_period_us")),
            int(_read(memory / "memory.limit_in_bytes")),
        )

    def apply(self, sandbox_id: str, limits: Limits) -> None:
        """Writes the new limits; memory first when it shrinks (so a refusal changes nothing)."""
        current = self.read(sandbox_id)
        if 0 <= limits.memory_bytes < current.memory_bytes:
            self._apply_memory(sandbox_id, limits.memory_bytes, grow=False)
            self._apply_cpu(sandbox_id, limits)
        else:
            self._apply_cpu(sandbox_id, limits)
            self._apply_memory(sandbox_id, limits.memory_bytes, grow=True)

    def _apply_cpu(self, sandbox_id: str, limits: Limits) -> None:
        folder = self._cpu(sandbox_id)
        if self.unified:
            _write(folder / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}")
            return
        # A period shorter than the quota's is fine either way round: quota is per period.
        _write(folder / "cpu.cfs_period_us", str(limits.cpu_period_us))
        _write(folder / "cpu.cfs_quota_us", str(limits.cpu_quota_us))

    def _apply_memory(self, sandbox_id: str, memory_bytes: int, *, grow: bool) -> None:
        folder = self._memory(sandbox_id)
        if self.unified:
            _write(folder / "memory.max", str(memory_bytes))
            swap = folder / "memory.swap.max"
            if swap.exists():
                _write(swap, "0")
            return
        memsw = folder / "memory.memsw.limit_in_bytes"
        limit = folder / "memory.limit_in_bytes"
        if not memsw.exists():
            _write(limit, str(memory_bytes))
        elif grow:
            _write(memsw, str(memory_bytes))
            _write(limit, str(memory_bytes))
        else:
            _write(limit, str(memory_bytes))
            _write(memsw, str(memory_bytes))

    # -- automatic memory (memory_autoscaler.py) -------------------------------------------

    def set_memory_limit(self, sandbox_id: str, memory_bytes: int) -> None:
        """Only the memory limit, up or down. A shrink below what is in use is refused before
        anything is written (FailedPrecondition): cgroup v1 would refuse it too, but v2 would take
        it and OOM-kill."""
        current = self.read(sandbox_id)
        if memory_bytes < current.memory_bytes and self.memory_in_use(sandbox_id) >= memory_bytes:
            raise errors.FailedPrecondition(
                f"the sandbox uses more than {memory_bytes} bytes of memory: its limit cannot shrink to that"
            )
        self._apply_memory(sandbox_id, memory_bytes, grow=memory_bytes >= current.memory_bytes)

    def memory_pressure(self, sandbox_id: str) -> MemoryPressure | None:
        """Usage and limit now, and whether the cgroup's tasks wait at the limit (v1 with the OOM
        killer off); None when the cgroup is gone."""
        folder = self._memory(sandbox_id)
        try:
            if self.unified:
                limit = _read(folder / "memory.max")
                return MemoryPressure(self.memory_in_use(sandbox_id), -1 if limit == "max" else int(limit), False)
            control = dict(line.split() for line in _read(folder / "memory.oom_control").splitlines() if " " in line)
            return MemoryPressure(
                self.memory_in_use(sandbox_id),
                int(_read(folder / "memory.limit_in_bytes")),
                control.get("under_oom") == "1",
            )
        except (FileNotFoundError, ValueError, errors.FailedPrecondition):
            return None

    def hold_at_limit(self, sandbox_id: str, hold: bool) -> bool:
        """cgroup v1: with `hold`, tasks that reach the limit wait for more memory instead of being
        OOM-killed (so there is time to raise the limit); without it the kernel kills as usual.
        False where the cgroup version has no such switch (v2)."""
        if self.unified:
            return False
        _write(self._memory(sandbox_id) / "memory.oom_control", "1" if hold else "0")
        return True


@dataclass(frozen=True)
class MemoryPressure:
    # What its processes hold (usage minus page cache the kernel would drop first).
    usage_bytes: int
    limit_bytes: int
    # Tasks are waiting at the limit (v1, held).
    waiting: bool
