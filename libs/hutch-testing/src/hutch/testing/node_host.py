"""What a node-agent leaves on the host by design when it stops, and how to take it away in tests.

Sandboxes keep running across a node-agent restart, so stopping one leaves their processes (in its
cgroup parent), their network namespaces and links, its firewall table and the mount of its quota
volume. Names on the host derive from the node id: the table is `hutch_<id with _>` and each
namespace starts with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def node_table(node_id: str) -> str:
    """The nft table (and namespace prefix) of node `node_id`."""
    return "hutch_" + node_id.replace("-", "_")


def clear_node_host(node_id: str, cgroup_parent: str, root: Path) -> None:
    """Kills the node's sandboxes and removes their namespaces, its firewall table, and the mounts
    and loop devices under its root folder."""
    for procs in Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}/*/cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    table = node_table(node_id)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in names.splitlines():
        if line.startswith(f"{table}-"):
            subprocess.run(["ip", "netns", "del", line.split()[0]], check=False)
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False)
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [line.split()[4] for line in mounts if len(line.split()) > 4]
    for point in sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    for image in root.glob("*.img"):
        attached = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False)
        for device in (line.split(":", 1)[0] for line in attached.stdout.splitlines() if line):
            subprocess.run(["losetup", "-d", device], check=False)
