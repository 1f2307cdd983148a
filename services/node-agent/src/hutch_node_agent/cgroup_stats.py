"""A sandbox cgroup's cumulative counters, read from the host.

On cgroup v1 (these machines: one hierarchy per controller) the counters are
`cpuacct/<parent>/<id>/cpuacct.usage` (nanoseconds) and `memory/<parent>/<id>/memory.usage_in_bytes`
and `memory.max_usage_in_bytes`; on cgroup v2 `<parent>/<id>/cpu.stat` (`usage_usec`),
`memory.current` and `memory.peak`. Everything the sandbox's runtime runs sits in that cgroup,
gVisor's Sentry and Gofer included, so its overhead is counted with the sandbox's own work.
Counters are cumulative from the cgroup's creation, which is what makes usage recoverable after a
node-agent restart: the difference to the last reported value is exactly what was not reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Counters:
    # CPU time of everything in the cgroup since it was made (nanoseconds).
    cpu_ns: int
    # Memory in use now, page cache included (bytes).
    memory_bytes: int
    # The most memory in use at any moment since the cgroup was made (bytes).
    memory_peak_bytes: int


def _read_int(path: str) -> int:
    # os.open/os.read rather than open(): a sampling round reads three files per sandbox every
    # second, and a file object's set-up costs more than the read itself.
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


class CgroupStats:
    """Reads the counters of `<parent>/<sandbox id>` on either cgroup version."""

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self.unified = (root / "cgroup.controllers").exists()
        if self.unified:
            self._cpu = self._memory = root / parent
        else:
            self._cpu = root / "cpuacct" / parent
            self._memory = root / "memory" / parent
        # The three files of each sandbox, as strings: joining paths every second costs more than
        # reading the files.
        self._files: dict[str, tuple[str, str, str]] = {}

    def _paths(self, sandbox_id: str) -> tuple[str, str, str]:
        found = self._files.get(sandbox_id)
        if found is None:
            if self.unified:
                folder = self._cpu / sandbox_id
                found = (str(folder / "cpu.stat"), str(folder / "memory.current"), str(folder / "memory.peak"))
            else:
                memory = self._memory / sandbox_id
                found = (
                    str(self._cpu / sandbox_id / "cpuacct.usage"),
                    str(memory / "memory.usage_in_bytes"),
                    str(memory / "memory.max_usage_in_bytes"),
                )
            self._files[sandbox_id] = found
        return found

    def read(self, sandbox_id: str) -> Counters | None:
        """The sandbox's counters, or None when its cgroup does not exist (not made yet, or removed)."""
        cpu, memory, peak = self._paths(sandbox_id)
        try:
            if self.unified:
                return self._read_v2(cpu, memory, peak)
            return Counters(cpu_ns=_read_int(cpu), memory_bytes=_read_int(memory), memory_peak_bytes=_read_int(peak))
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError, ValueError):
            return None

    def forget(self, sandbox_id: str) -> None:
        """Drops what is kept about a sandbox that is gone."""
        self._files.pop(sandbox_id, None)

    @staticmethod
    def _read_v2(cpu_stat: str, current: str, peak: str) -> Counters:
        with open(cpu_stat, "rb") as file:
            usage_usec = next(int(line.split()[1]) for line in file if line.startswith(b"usage_usec "))
        in_use = _read_int(current)
        try:
            highest = _read_int(peak)
        except FileNotFoundError:  # kernels before 5.19 keep no high-water mark
            highest = in_use
        return Counters(cpu_ns=usage_usec * 1000, memory_bytes=in_use, memory_peak_bytes=highest)
