"""Templates: read-only root filesystems that sandboxes start from.

A template is a folder `<templates_dir>/<name>/` holding `rootfs/` (the extracted filesystem, the
lowest overlay layer of every sandbox made from it) and `template.json` (its default environment,
working directory and user). Templates are never written to after they are published: the folder
is built under a temporary name and renamed into place, so a half-built template is never used.

Template keys name them on a node: `base` for the platform's own, `<tenant id>/<name>` (stored under
`<templates_dir>/tenants/<tenant id>/<name>/`) for a tenant's imported ones.

Files in a template are owned by the host uids the sandboxes' user namespaces map to (`uid_shift`
in template.json): root's files belong to host uid 100000, say, so that root inside the sandbox
owns them while nothing in the template belongs to the host's root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hutch.core import errors
from hutch_node_agent import images
from hutch_node_agent.domain import DEFAULT_PATH

log = logging.getLogger(__name__)

BASE = "base"
# What the base template offers an agent: a shell, coreutils, Python with pip and venv, git, curl,
# an editor, and the usual process tools.
BASE_PACKAGES = (
    "bash",
    "python3",
    "python3-pip",
    "python3-venv",
    "git",
    "curl",
    "ca-certificates",
    "procps",
    "psmisc",
    "less",
    "vim-tiny",
    "iproute2",
)


_KEY = re.compile(r"^([a-z0-9][a-z0-9-]{0,63}/)?[a-z0-9][a-z0-9._-]{0,62}$")


def check_key(key: str) -> str:
    """Template keys name folders on the host: anything else is refused."""
    if not _KEY.match(key) or ".." in key:
        raise errors.InvalidArgument(f"malformed template key {key!r}")
    return key


@dataclass(frozen=True)
class Template:
    name: str
    rootfs: Path
    env: tuple[str, ...]
    workdir: str
    user: str
    uid_shift: int = 0
    source: str = ""
    size_bytes: int = 0


class TemplateStore:
    """The templates this node can start sandboxes from."""

    def __init__(self, templates_dir: Path) -> None:
        self.dir = templates_dir

    def folder(self, key: str) -> Path:
        check_key(key)
        tenant, _, name = key.rpartition("/")
        return self.dir / "tenants" / tenant / name if tenant else self.dir / name

    def get(self, name: str) -> Template:
        folder = self.folder(name)
        try:
            meta = json.loads((folder / "template.json").read_text())
        except FileNotFoundError:
            raise errors.NotFound(f"template {name!r} is not installed on this node") from None
        return Template(
            name=name,
            rootfs=folder / "rootfs",
            env=tuple(meta.get("env", [f"PATH={DEFAULT_PATH}"])),
            workdir=meta.get("workdir", "/"),
            # OCI images may name "user:group"; processes take the group from the sandbox's /etc/passwd.
            user=str(meta.get("user") or "root").split(":", 1)[0],
            uid_shift=int(meta.get("uid_shift", 0)),
            source=str(meta.get("source", "")),
            size_bytes=int(meta.get("size_bytes", 0)),
        )

    def ensure_shift(self, name: str, shift: int) -> Template:
        """Makes the template's owners match the user namespace mapping `shift`, once.

        Shifting rewrites owners in place under an exclusive lock, so node-agents sharing the
        templates folder never shift twice; a template already at `shift` is left alone.
        """
        folder = self.folder(name)
        with open(folder / "template.json", "r+") as meta_file:
            fcntl.flock(meta_file, fcntl.LOCK_EX)
            meta = json.load(meta_file)
            current = int(meta.get("uid_shift", 0))
            if current != shift:
                log.info("shifting the owners of template %s from %d to %d", name, current, shift)
                shift_owners(folder / "rootfs", shift - current)
                meta["uid_shift"] = shift
                meta_file.seek(0)
                meta_file.truncate()
                json.dump(meta, meta_file, indent=2)
        return self.get(name)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        builtin = [p.name for p in self.dir.iterdir() if (p / "template.json").is_file()]
        owned = [
            f"{tenant.name}/{p.name}"
            for tenant in (self.dir / "tenants").glob("*")
            for p in tenant.iterdir()
            if (p / "template.json").is_file()
        ]
        return sorted(builtin + owned)

    def install(self, key: str, archive: Path, uid_shift: int, max_bytes: int) -> Template:
        """Unpacks an OCI image archive into template `key` (checked and unpacked first, then
        published by one rename, so a failed import leaves nothing behind)."""
        target = self.folder(key)
        if target.exists():
            raise errors.AlreadyExists(f"template {key!r} already exists on this node")
        image = images.read_image(archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=target.parent))
        try:
            (staging / "rootfs").mkdir()
            images.unpack(image, staging / "rootfs", uid_shift, max_bytes=max_bytes)
            os.chown(staging / "rootfs", uid_shift, uid_shift)
            size = tree_size(staging / "rootfs")
            meta = {**image.config.to_template_meta(), "uid_shift": uid_shift, "size_bytes": size}
            (staging / "template.json").write_text(json.dumps(meta, indent=2))
            staging.chmod(0o755)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(key)

    def remove(self, key: str) -> None:
        """Deletes an imported template (the caller checks that no sandbox uses it)."""
        folder = self.folder(key)
        if "/" not in key:
            raise errors.PermissionDenied(f"template {key!r} is built in and cannot be removed")
        if not folder.exists():
            raise errors.NotFound(f"template {key!r} is not installed on this node")
        # Renamed first so that the template disappears at once, even if deleting takes a while.
        doomed = folder.with_name(f".removed-{folder.name}-{os.getpid()}")
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def tree_size(root: Path) -> int:
    """Bytes of regular files under `root` (what a template takes on disk, roughly)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def shift_owners(root: Path, delta: int) -> None:
    """Adds `delta` to the uid and gid of every entry under `root`, never following links."""

    def shifted(path: str) -> None:
        st = os.lstat(path)
        os.chown(path, st.st_uid + delta, st.st_gid + delta, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown clears setuid and setgid bits

    shifted(str(root))
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            shifted(os.path.join(folder, name))


def host_suite() -> str:
    """The Debian suite this host uses, so the base template matches the host's apt sources."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"') or "bookworm"
    return "bookworm"


def build_base(templates_dir: Path) -> Template:
    """Builds the `base` template with mmdebstrap from the host's own apt sources.

    No registry is involved: mmdebstrap reads the machine's apt configuration, so the template comes
    from the same Debian mirror the host already uses.
    """
    store = TemplateStore(templates_dir)
    if BASE in store.names():
        return store.get(BASE)
    if shutil.which("mmdebstrap") is None:
        raise errors.FailedPrecondition("mmdebstrap is not installed: run `make deps` (apt-get install mmdebstrap)")
    templates_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base-", dir=templates_dir))
    try:
        rootfs = staging / "rootfs"
        log.info("building the base template in %s (takes about half a minute)", staging)
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=apt",
                "--quiet",
                f"--include={','.join(BASE_PACKAGES)}",
                '--customize-hook=chroot "$1" useradd --create-home --shell /bin/bash --uid 1000 user',
                '--customize-hook=rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*',
                host_suite(),
                str(rootfs),
            ],
            check=True,
        )
        meta = {
            "size_bytes": tree_size(rootfs),
            "env": [f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8", "TERM=xterm-256color"],
            "workdir": "/root",
            "user": "root",
            "source": f"mmdebstrap {host_suite()}",
        }
        (staging / "template.json").write_text(json.dumps(meta, indent=2))
        os.chmod(staging, 0o755)
        staging.rename(templates_dir / BASE)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return store.get(BASE)
