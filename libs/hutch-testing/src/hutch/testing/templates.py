"""Small templates built on the spot for tests: no registry, no network, a second or less."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
_GROUP = "root:x:0:\nuser:x:1000:\n"


def make_busybox_template(folder: Path) -> Path:
    """Writes a template (rootfs/ + template.json) holding only busybox-static: no Python, no libc.

    A sandbox from it proves that the supervisor's runtime brings everything it needs. Returns the
    template folder; its name is the folder's name.
    """
    rootfs = folder / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "root", "home/user", "tmp", "proc", "sys", "dev", "usr/bin"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    os.chown(rootfs / "home" / "user", 1000, 1000)
    (rootfs / "etc" / "passwd").write_text(_PASSWD)
    (rootfs / "etc" / "group").write_text(_GROUP)
    meta = {"env": ["PATH=/bin:/usr/bin"], "workdir": "/root", "user": "root", "source": "busybox-static"}
    (folder / "template.json").write_text(json.dumps(meta))
    return folder
