"""The OCI runtime configuration (config.json) of a sandbox. Pure: no I/O.

What every sandbox gets: its own PID, mount, IPC, UTS, cgroup and network namespaces (the network
namespace has only loopback until a network is attached), a user namespace that maps its root to an
unprivileged host uid, cgroup limits on CPU, memory and PIDs, an open-files limit,
no-new-privileges, a reduced capability set, and two private mounts: the supervisor's runtime
(read-only) and the folder holding its socket.

The container class also gets a seccomp filter and masked, read-only kernel paths. The gVisor class
does not need them: its processes never reach the host kernel's system calls or /proc and /sys,
which gVisor implements itself (and host paths masked into its synthetic /proc confuse it).
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

# System calls a container sandbox may not make (EPERM), on top of what the missing capabilities
# already refuse: kernel modules and kexec, mounting and namespaces (no nested containers),
# keyrings, BPF, perf, userfaultfd and io_uring (frequent kernel attack surface), clock and swap
# changes, reboot, accounting, handle-based opens that bypass path checks.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "init_module",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr",
    "move_mount", "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "query_module", "quotactl", "quotactl_fd", "reboot",
    "request_key", "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog", "_sysctl",
    "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
]  # fmt: skip
EPERM = 1

SECCOMP_PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}],
}
USERNS_SIZE = 65536


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
    # A network namespace prepared by network.SandboxNetworks; None gives the sandbox a fresh one
    # with only loopback.
    netns_path: str | None = None
    # "container" (crun) or "gvisor" (runsc).
    isolation: str = "container"
    # Host uid (and gid) of the sandbox's root; 0 runs without a user namespace.
    uid_shift: int = 0
    # Further mounts after the standard ones (the egress CA files, see sandbox_egress).
    extra_mounts: tuple[dict[str, Any], ...] = ()


def _namespaces(spec: ContainerSpec) -> list[dict[str, str]]:
    # With a path the runtime joins that network namespace instead of creating one.
    network = {"type": "network"} if spec.netns_path is None else {"type": "network", "path": spec.netns_path}
    kinds = ["pid", "network", "ipc", "uts", "mount", "cgroup"] + (["user"] if spec.uid_shift else [])
    return [network if t == "network" else {"type": t} for t in kinds]


def _hardening(spec: ContainerSpec) -> dict[str, Any]:
    linux: dict[str, Any] = {}
    if spec.uid_shift:
        mapping = [{"containerID": 0, "hostID": spec.uid_shift, "size": USERNS_SIZE}]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = mapping
    if spec.isolation == "container":
        linux["seccomp"] = SECCOMP_PROFILE
        linux["maskedPaths"] = MASKED_PATHS
        linux["readonlyPaths"] = READONLY_PATHS
    return linux


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
            *spec.extra_mounts,
        ],
        "linux": {
            "cgroupsPath": spec.cgroup_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": memory_bytes, "swap": memory_bytes},
                "cpu": {"quota": spec.cpu_millis * CPU_PERIOD_US // 1000, "period": CPU_PERIOD_US},
                "pids": {"limit": spec.pids_limit},
            },
            "namespaces": _namespaces(spec),
            **_hardening(spec),
        },
    }


def set_resources(config: dict[str, Any], cpu_quota_us: int, cpu_period_us: int, memory_bytes: int) -> None:
    """Changes the CPU and memory limits in an existing config (a sandbox resized in place)."""
    resources = config.setdefault("linux", {}).setdefault("resources", {})
    resources["memory"] = {"limit": memory_bytes, "swap": memory_bytes}
    resources["cpu"] = {"quota": cpu_quota_us, "period": cpu_period_us}
