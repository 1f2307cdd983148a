"""Checks and prepares the host before the node-agent runs any sandbox."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

from hutch.core import errors

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def release_hybrid_cgroup_controllers(cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """Moves controllers off the cgroup v2 tree of a hybrid (v1 + v2) host.

    crun refuses to run on a hybrid host while any controller is enabled on the v2 tree ("cgroups in
    hybrid mode not supported, drop all controllers from cgroupv2"). On such hosts the leftovers are
    controllers nobody mounted as v1 (hugetlb, typically); mounting each as its own v1 hierarchy
    takes it off the v2 tree and lets crun use the v1 controllers. Returns the controllers moved.
    """
    unified = cgroup_root / "unified" / "cgroup.controllers"
    if not unified.exists():
        return []  # pure v1 or pure v2: nothing to do
    moved = []
    for controller in unified.read_text().split():
        target = cgroup_root / controller
        target.mkdir(exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "cgroup", "-o", controller, "cgroup", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise errors.FailedPrecondition(
                f"the {controller} cgroup controller is enabled on the cgroup v2 tree and could not be "
                f"mounted as v1 ({result.stderr.strip()}); crun cannot run sandboxes on this host"
            )
        moved.append(controller)
        log.info("mounted the %s cgroup controller as v1 so crun can run on this hybrid host", controller)
    return moved


def allow_traversal(path: Path) -> list[Path]:
    """Adds search permission for others (o+x, never read) to every folder above `path`.

    A sandbox's root is an unprivileged host uid (its user namespace), and the runtime works on the
    sandbox's folders as that uid: every folder on the way must be passable, which a root-only
    home such as /root is not. Returns the folders changed.
    """
    changed = []
    for folder in reversed(path.absolute().parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(folder)
            log.info("allowed others to pass through %s (search permission only)", folder)
    return changed


def check_host() -> None:
    """Fails early, with the fix in the message, when the host cannot run sandboxes."""
    if os.geteuid() != 0:
        raise errors.FailedPrecondition("the node-agent must run as root (it mounts filesystems and creates cgroups)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], check=False, capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise errors.FailedPrecondition("the kernel has no overlayfs: load the overlay module")
    release_hybrid_cgroup_controllers()
