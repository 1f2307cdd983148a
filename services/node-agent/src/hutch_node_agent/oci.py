"""The OCI runtime configuration (config.json) of a sandbox. Pure: no I/O.

What every sandbox gets: its own PID, mount, IPC, UTS, cgroup and network namespaces (the network
namespace has only loopback until a network is attached), cgroup limits on CPU, memory and PIDs, an
open-files limit, no-new-privileges, a reduced capability set, masked and read-only kernel paths,
and two private mounts: the supervisor's runtime (read-only) and the folder holding its socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUN_MOUNT = "/.hutch/run"

# Enough for an agent's root to install packages and manage files and users inside its own
# sandbox; no CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_MODULE, CAP_SYS_PTRACE or CAP_MKNOD.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class ContainerSpec:
    sandbox_id: str
    rootfs: str
    supervisor_argv: list[str]
    supervisor_env: list[str]
    supervisor_dir: str
    supervisor_mount: str
    run_dir: str
    cpu_millis: int
    memory_mb: int
    pids_limit: int
    open_files_limit: int
    cgroup_path: str


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    memory_bytes = spec.memory_mb * 1024 * 1024
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": spec.supervisor_argv,
            "env": spec.supervisor_env,
            "cwd": "/",
            "capabilities": {key: CAPABILITIES for key in ("bounding", "effective", "permitted")},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": spec.open_files_limit, "soft": spec.open_files_limit},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": spec.rootfs, "readonly": False},
        "hostname": spec.sandbox_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {
                "destination": spec.supervisor_mount,
                "type": "bind",
                "source": spec.supervisor_dir,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            },
            {
                "destination": RUN_MOUNT,
                "type": "bind",
                "source": spec.run_dir,
                "options": ["rbind", "rw", "nosuid", "nodev", "noexec"],
            },
        ],
        "linux": {
            "cgroupsPath": spec.cgroup_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": memory_bytes, "swap": memory_bytes},
                "cpu": {"quota": spec.cpu_millis * CPU_PERIOD_US // 1000, "period": CPU_PERIOD_US},
                "pids": {"limit": spec.pids_limit},
            },
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
