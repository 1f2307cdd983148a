"""Per-sandbox disk quotas: a sandbox's writable layer cannot grow past its limit.

Sandbox folders live on one btrfs volume with quotas enabled, and each sandbox folder is its own
btrfs subvolume with a limit on its quota group. Everything written into the folder (the overlay's
upper/ and work/, data and metadata alike, so a flood of empty files is bounded too) counts against
that limit, and a write beyond it fails inside the sandbox with EDQUOT. The volume is a sparse image
file loop-mounted at <volume> unless <volume> already lies on btrfs, so sandboxes can never fill
the disk the node root lives on; their quotas only share the volume's size.

Why btrfs and not XFS project quotas (overlay2's mechanism): the kernel these nodes run is built
without CONFIG_XFS_QUOTA (a `prjquota` mount fails with "XFS: quota support not available in this
kernel") and without CONFIG_QFMT_V2, which ext4 project quotas need. Quota groups are part of
btrfs itself. Where the kernel allows it they run as simple quotas (Linux 6.7+), which account each
extent to the subvolume that wrote it without the backref walks of full quota groups.

The filesystem numbers each subvolume, and that number is its quota group's id: ids are unique,
persistent across remounts and never chosen by the node-agent, so nothing here allocates them.
Subvolume creation, limits and deletion are ioctls (well under a millisecond, where spawning the
`btrfs` tool cost milliseconds); only formatting and mounting the volume spawn commands.

How to wire it into SandboxManager: build `DiskQuotas.from_options(options)` and `await prepare()`
at start, before `recover()`, unless `options.disk_quota_mb` is 0; keep sandbox folders under
`volume_root` (point `NodeLayout.sandboxes` there). In `_start`, create the sandbox folder with
`await quotas.apply(paths.dir, options.disk_quota_mb * 2**20)` instead of `mkdir`, before mounting
the overlay (upper/ and work/ are created inside it). In `_teardown`, after unmounting the rootfs,
`await quotas.release(paths.dir)` replaces the `rmtree`: it deletes the folder and its quota at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hutch.core import errors
from hutch_node_agent.settings import NodeOptions

log = logging.getLogger(__name__)

SYSFS_BTRFS: Final = Path("/sys/fs/btrfs")
SYSFS_BLOCK: Final = Path("/sys/block")
MOUNTINFO: Final = Path("/proc/self/mountinfo")

# noatime: reads must not turn into metadata writes that count against a quota.
# discard=async: space freed in the volume is punched out of the sparse image, so the image shrinks
# back on the host disk instead of keeping its high-water mark.
MOUNT_OPTIONS: Final = "noatime,discard=async"

# The root directory of every btrfs subvolume has this inode number (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INODE: Final = 256
_QGROUP_LEVEL_SHIFT: Final = 48
_LIMIT_MAX_RFER: Final = 1  # BTRFS_QGROUP_LIMIT_MAX_RFER
_CLEAR_LIMIT: Final = 2**64 - 1  # a limit of this value removes the limit
_QUOTA_ENABLE: Final = 1
_QUOTA_ENABLE_SIMPLE: Final = 4  # Linux 6.7+


def _btrfs_ioctl(direction: int, number: int, size: int) -> int:
    """An ioctl request number of btrfs (magic 0x94), as the _IOC macro builds it."""
    return (direction << 30) | (size << 16) | (0x94 << 8) | number


_W, _R, _RW = 1, 2, 3
_VOL_ARGS: Final = struct.Struct("q4088s")  # struct btrfs_ioctl_vol_args
_IOC_SUBVOL_CREATE: Final = _btrfs_ioctl(_W, 14, _VOL_ARGS.size)
_IOC_SNAP_DESTROY: Final = _btrfs_ioctl(_W, 15, _VOL_ARGS.size)
_IOC_INO_LOOKUP: Final = _btrfs_ioctl(_RW, 18, 4096)  # struct btrfs_ioctl_ino_lookup_args
_IOC_FS_INFO: Final = _btrfs_ioctl(_R, 31, 1024)  # struct btrfs_ioctl_fs_info_args
_IOC_QUOTA_CTL: Final = _btrfs_ioctl(_RW, 40, 16)  # struct btrfs_ioctl_quota_ctl_args
_IOC_QGROUP_LIMIT: Final = _btrfs_ioctl(_R, 43, 48)  # struct btrfs_ioctl_qgroup_limit_args
_IOC_QUOTA_RESCAN_WAIT: Final = _btrfs_ioctl(0, 46, 0)
_VOL_ARGS_V2: Final = struct.Struct("qQQ32s4040s")  # struct btrfs_ioctl_vol_args_v2
_IOC_SNAP_CREATE_V2: Final = _btrfs_ioctl(_W, 23, _VOL_ARGS_V2.size)
_SUBVOL_RDONLY: Final = 1 << 1
_IOC_QGROUP_CREATE: Final = _btrfs_ioctl(_W, 42, 16)  # struct btrfs_ioctl_qgroup_create_args
# struct btrfs_ioctl_search_key: tree, objectid, offset and transid ranges, type range, item count.
_SEARCH_KEY: Final = struct.Struct("=7Q4I4Q")
_SEARCH_HEADER: Final = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header
_IOC_TREE_SEARCH: Final = _btrfs_ioctl(_RW, 17, 4096)  # struct btrfs_ioctl_search_args
_ROOT_TREE: Final = 1
_ROOT_ITEM_KEY: Final = 132
_LAST_FREE_OBJECTID: Final = 2**64 - 256
_U64_MAX: Final = 2**64 - 1
_LEVEL0_QGROUP = re.compile(r"0_(\d+)")
# The kernel makes a new subvolume's quota group before its root item: a sweep between the two
# would take the group for stale. Creations and sweeps take turns.
_SUBVOLUMES_CHANGING = threading.Lock()


# -- pure helpers ------------------------------------------------------------------------------


def qgroup_id(subvolume_id: int, level: int = 0) -> int:
    """The quota group id `<level>/<subvolume_id>` as btrfs packs it into 64 bits."""
    if not 0 <= level < 2**16 or not 0 < subvolume_id < 2**_QGROUP_LEVEL_SHIFT:
        raise ValueError(f"no quota group {level}/{subvolume_id}")
    return (level << _QGROUP_LEVEL_SHIFT) | subvolume_id


def subvolume_ids_in_search_result(buffer: bytes, count: int) -> tuple[list[int], tuple[int, int, int] | None]:
    """The subvolumes (ROOT_ITEM keys) among `count` items of a tree search result, and the key of
    the last item, from which the next search goes on (None when there was none)."""
    ids: list[int] = []
    last: tuple[int, int, int] | None = None
    at = 0
    for _ in range(count):
        _transid, objectid, offset, item_type, length = _SEARCH_HEADER.unpack_from(buffer, at)
        at += _SEARCH_HEADER.size + length
        if item_type == _ROOT_ITEM_KEY and SUBVOLUME_ROOT_INODE <= objectid <= _LAST_FREE_OBJECTID:
            ids.append(objectid)
        last = (objectid, item_type, offset)
    return ids, last


def qgroup_limit_args(qgroup: int, limit_bytes: int) -> bytes:
    """struct btrfs_ioctl_qgroup_limit_args capping what the group references; 0 lifts the cap."""
    if not 0 <= limit_bytes < _CLEAR_LIMIT:
        raise ValueError(f"no disk limit of {limit_bytes} bytes")
    return struct.pack("=6Q", qgroup, _LIMIT_MAX_RFER, limit_bytes or _CLEAR_LIMIT, 0, 0, 0)


@dataclass(frozen=True)
class MountEntry:
    mount_point: Path
    fstype: str
    source: str


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mountinfo paths as octal escapes.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts of /proc/<pid>/mountinfo, in mount order."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        separator = fields.index("-")  # optional fields of any number come before it
        entries.append(
            MountEntry(Path(_unescape(fields[4])), _unescape(fields[separator + 1]), _unescape(fields[separator + 2]))
        )
    return entries


def mount_containing(path: Path, entries: list[MountEntry]) -> MountEntry | None:
    """The mount `path` (absolute, resolved) lies on: the deepest one, and the last of any stacked."""
    best: MountEntry | None = None
    for entry in entries:
        if path.is_relative_to(entry.mount_point) and (
            best is None or len(entry.mount_point.parts) >= len(best.mount_point.parts)
        ):
            best = entry
    return best


# -- ioctls ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _fsid(fd: int) -> uuid.UUID:
    args = bytearray(1024)
    fcntl.ioctl(fd, _IOC_FS_INFO, args)
    return uuid.UUID(bytes=bytes(args[16:32]))


def _subvolume_id(fd: int) -> int:
    args = bytearray(4096)
    struct.pack_into("=QQ", args, 0, 0, SUBVOLUME_ROOT_INODE)  # tree 0: the tree of the fd itself
    fcntl.ioctl(fd, _IOC_INO_LOOKUP, args)
    return int(struct.unpack_from("=Q", args)[0])


def _vol_args(name: str) -> bytearray:
    return bytearray(_VOL_ARGS.pack(0, os.fsencode(name)))


async def _run(*argv: str) -> tuple[int, str]:
    """Runs a command; returns its exit status and its stderr (for error messages)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


def _attached_loop_device(image: Path) -> str | None:
    """A loop device already backed by `image` (left attached by an earlier run), if any."""
    target = str(image.resolve())
    for backing in SYSFS_BLOCK.glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == target:
                return f"/dev/{backing.parent.parent.name}"
    return None


class DiskQuotas:
    """The btrfs volume that holds sandbox folders, and the disk limit of each folder."""

    def __init__(self, volume: Path, image: Path, image_size_bytes: int) -> None:
        self.volume = volume.absolute()
        self.image = image.absolute()
        self.image_size_bytes = image_size_bytes
        self._fsid: uuid.UUID | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_options(cls, options: NodeOptions) -> DiskQuotas:
        volume = options.volume_path or options.root_dir / "volume"
        return cls(volume, volume.with_name(volume.name + ".img"), options.volume_size_gb * 2**30)

    @property
    def volume_root(self) -> Path:
        """Where sandbox folders belong."""
        return self.volume / "sandboxes"

    # -- the volume ----------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Makes sure the volume is mounted with quotas on; safe to call again, and after a reboot."""
        async with self._lock:
            await _require_btrfs_in_kernel()
            self.volume.mkdir(parents=True, exist_ok=True)
            mount = self._mount()
            if mount is None or mount.fstype != "btrfs":
                await self._mount_image(mount)
            with _open_dir(self.volume) as fd:
                fsid = _fsid(fd)
                await asyncio.to_thread(_enable_quotas, fd, fsid)
            self.volume_root.mkdir(exist_ok=True)
            self._fsid = fsid
            await asyncio.to_thread(_clear_stale_quota_groups, self.volume, fsid)

    async def detach(self) -> None:
        """Unmounts the volume (its loop device goes with it); for decommissioning a node and tests."""
        async with self._lock:
            mount = self._mount()
            if mount is not None and mount.mount_point == self.volume.resolve():
                code, err = await _run("umount", str(self.volume))
                if code != 0:
                    raise errors.Internal(f"cannot unmount the sandbox volume {self.volume}: {err}")
            self._fsid = None

    def _mount(self) -> MountEntry | None:
        return mount_containing(self.volume.resolve(), parse_mountinfo(MOUNTINFO.read_text()))

    async def _mount_image(self, current: MountEntry | None) -> None:
        if current is not None and current.mount_point == self.volume.resolve():
            raise errors.FailedPrecondition(
                f"{self.volume} is a {current.fstype} mount, not btrfs: unmount it or set volume_path elsewhere"
            )
        if any(self.volume.iterdir()):
            # Mounting would hide these files, and sandboxes written there would escape their quotas.
            raise errors.FailedPrecondition(f"{self.volume} is not empty and not mounted: empty it or move it away")
        if not self.image.exists():
            await self._make_image()
        self._warn_if_the_disk_cannot_hold_the_image()
        device = _attached_loop_device(self.image)
        source, options = (device, MOUNT_OPTIONS) if device else (str(self.image), f"loop,{MOUNT_OPTIONS}")
        code, err = await _run("mount", "-t", "btrfs", "-o", options, source, str(self.volume))
        mounted = self._mount()
        if code != 0 or mounted is None or mounted.fstype != "btrfs":
            raise errors.FailedPrecondition(
                f"cannot mount the sandbox volume {self.image} at {self.volume}: {err or 'not mounted'} "
                "(the host needs loop devices and btrfs)"
            )
        log.info("mounted the sandbox volume %s at %s", self.image, self.volume)

    async def _make_image(self) -> None:
        mkfs = shutil.which("mkfs.btrfs")
        if mkfs is None:
            raise errors.FailedPrecondition(
                "mkfs.btrfs is not installed: run `make deps` (apt-get install btrfs-progs); "
                "sandbox disk quotas need it once, to format the sandbox volume"
            )
        # Formatted under another name first: a crash half-way must not leave an image that looks ready.
        partial = self.image.with_name(self.image.name + ".partial")
        partial.unlink(missing_ok=True)
        with open(partial, "wb") as out:
            out.truncate(self.image_size_bytes)  # sparse: it takes disk space only as sandboxes write
        # -K: a new sparse file has nothing to discard. Single metadata: the volume holds scratch data
        # of sandboxes, and a second metadata copy in the same file would double metadata writes.
        code, err = await _run(mkfs, "-q", "-K", "-m", "single", "-d", "single", "-L", "hutch-sandboxes", str(partial))
        if code != 0:
            partial.unlink(missing_ok=True)
            raise errors.FailedPrecondition(f"mkfs.btrfs could not format the sandbox volume {partial}: {err}")
        partial.rename(self.image)
        log.info("created the sandbox volume image %s (%d GiB, sparse)", self.image, self.image_size_bytes >> 30)

    def _warn_if_the_disk_cannot_hold_the_image(self) -> None:
        # Once the host disk is full, writes into the image fail with EIO and btrfs turns read-only
        # for every sandbox; the operator should know before that happens.
        image, disk = self.image.stat(), os.statvfs(self.image.parent)
        can_grow = image.st_size - image.st_blocks * 512
        free = disk.f_bavail * disk.f_frsize
        if can_grow > free:
            log.warning(
                "the sandbox volume %s can still grow by %d GiB but its disk has %d GiB free: "
                "lower volume_size_gb or free disk space",
                self.image,
                can_grow >> 30,
                free >> 30,
            )

    # -- sandbox folders -----------------------------------------------------------------------

    async def apply(self, folder: Path, limit_bytes: int) -> None:
        """Creates `folder` under the volume with a disk limit, or sets the limit of an existing one.

        A limit of 0 lets the folder grow as far as the volume allows. Writes past the limit fail
        with EDQUOT. An existing folder that was not made here is refused.
        """
        if not 0 <= limit_bytes < _CLEAR_LIMIT:
            raise errors.InvalidArgument(f"a disk limit must be 0 or a positive number of bytes, not {limit_bytes}")
        fsid = self._prepared_fsid()
        folder = self._inside_volume(folder)
        # A thread, because both ioctls join a btrfs transaction, which can wait on a commit.
        await asyncio.to_thread(_create_and_limit, folder, fsid, limit_bytes)

    async def release(self, folder: Path) -> None:
        """Deletes `folder` with everything in it and drops its quota.

        Unmount whatever is mounted inside first: the kernel would detach such mounts itself. btrfs
        frees the space in the background, and the folder's quota group disappears once it has (or,
        where the kernel leaves it behind, at a later release or node start). A
        folder that was never given a limit is removed all the same; a missing one is no error.
        """
        fsid = self._prepared_fsid()
        folder = self._inside_volume(folder)
        await asyncio.to_thread(_remove, folder, fsid)
        # This folder's own group goes later, in the background; the sweep takes those left earlier.
        await self.clear_stale_quota_groups()

    async def clear_stale_quota_groups(self) -> int:
        """Destroys the quota groups whose subvolume is gone; returns how many it destroyed.

        The kernel drops a deleted folder's quota group itself once its last extent is freed, but
        not when the group's counters were still settling at that moment: such a stale group would
        stay for good. `release` sweeps them, so they cannot pile up over a node's life.
        """
        fsid = self._prepared_fsid()
        return await asyncio.to_thread(_clear_stale_quota_groups, self.volume, fsid)

    async def snapshot(self, source: Path, destination: Path, *, read_only: bool) -> None:
        """Makes `destination` a copy-on-write snapshot of the subvolume `source`, in constant time
        whatever it holds. A read-only one is a frozen image of the source (what a sandbox snapshot
        keeps); a writable one is a new sandbox folder that shares every extent until written.
        """
        fsid = self._prepared_fsid()
        source, destination = self._inside_volume(source), self._inside_volume(destination)
        await asyncio.to_thread(_snapshot, source, destination, fsid, read_only)

    async def usage(self, folder: Path) -> int:
        """Bytes the folder holds (data and metadata), as of the filesystem's last commit.

        btrfs commits every 30 s at most, so deletions show up to that late.
        """
        fsid = self._prepared_fsid()
        with _open_dir(self._inside_volume(folder)) as fd:
            subvolume = _quota_subvolume(fd, fsid, folder)
        counter = SYSFS_BTRFS / str(fsid) / "qgroups" / f"0_{subvolume}" / "referenced"
        try:
            return int(counter.read_text())
        except FileNotFoundError:
            raise errors.FailedPrecondition(f"{folder} has no quota group (quotas are off on the volume)") from None

    def _prepared_fsid(self) -> uuid.UUID:
        if self._fsid is None:
            raise errors.FailedPrecondition("the sandbox volume is not prepared: call DiskQuotas.prepare() first")
        return self._fsid

    def _inside_volume(self, folder: Path) -> Path:
        folder = folder.absolute()
        if folder == self.volume or not folder.is_relative_to(self.volume) or ".." in folder.parts:
            raise errors.InvalidArgument(f"{folder} is not a folder inside the sandbox volume {self.volume}")
        return folder


async def _require_btrfs_in_kernel() -> None:
    filesystems = Path("/proc/filesystems")
    if "btrfs" not in filesystems.read_text():
        await _run("modprobe", "btrfs")
        if "btrfs" not in filesystems.read_text():
            raise errors.FailedPrecondition("the kernel has no btrfs, which sandbox disk quotas need: load the module")


def _enable_quotas(fd: int, fsid: uuid.UUID) -> None:
    if (SYSFS_BTRFS / str(fsid) / "qgroups").is_dir():
        return  # already on, in whichever mode
    try:
        fcntl.ioctl(fd, _IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", _QUOTA_ENABLE_SIMPLE, 0)))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise errors.FailedPrecondition(f"cannot turn on quotas on the sandbox volume: {exc}") from exc
        # A kernel before 6.7 has full quota groups only; the scan counts what is already there.
        fcntl.ioctl(fd, _IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", _QUOTA_ENABLE, 0)))
        fcntl.ioctl(fd, _IOC_QUOTA_RESCAN_WAIT)
    log.info("turned on quotas on the sandbox volume (btrfs %s)", fsid)


def _quota_subvolume(fd: int, fsid: uuid.UUID, folder: Path) -> int:
    """The id of the subvolume whose root `fd` is, after checking it lies on the sandbox volume."""
    try:
        same_volume = _fsid(fd) == fsid
    except OSError:
        same_volume = False  # not btrfs at all
    if not same_volume or os.fstat(fd).st_ino != SUBVOLUME_ROOT_INODE:
        raise errors.FailedPrecondition(f"{folder} exists but is not a sandbox folder with a disk quota")
    return _subvolume_id(fd)


def _create_and_limit(folder: Path, fsid: uuid.UUID, limit_bytes: int) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _open_dir(folder.parent) as parent, _SUBVOLUMES_CHANGING:
        try:
            fcntl.ioctl(parent, _IOC_SUBVOL_CREATE, _vol_args(folder.name))
        except FileExistsError:
            pass  # made earlier: only its limit changes
        except OSError as exc:
            raise errors.Internal(f"cannot create the sandbox folder {folder}: {exc}") from exc
    with _open_dir(folder) as fd:
        subvolume = _quota_subvolume(fd, fsid, folder)
        try:
            fcntl.ioctl(fd, _IOC_QGROUP_LIMIT, bytearray(qgroup_limit_args(qgroup_id(subvolume), limit_bytes)))
        except OSError as exc:
            raise errors.Internal(f"cannot set the disk limit of {folder}: {exc}") from exc


def _snapshot(source: Path, destination: Path, fsid: uuid.UUID, read_only: bool) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _open_dir(source) as src, _open_dir(destination.parent) as parent, _SUBVOLUMES_CHANGING:
        _quota_subvolume(src, fsid, source)
        args = _VOL_ARGS_V2.pack(src, 0, _SUBVOL_RDONLY if read_only else 0, b"", os.fsencode(destination.name))
        try:
            fcntl.ioctl(parent, _IOC_SNAP_CREATE_V2, bytearray(args))
        except FileExistsError:
            raise errors.AlreadyExists(f"{destination} exists already") from None
        except OSError as exc:
            raise errors.Internal(f"cannot snapshot {source} as {destination}: {exc}") from exc


def _remove(folder: Path, fsid: uuid.UUID) -> None:
    try:
        if not stat.S_ISDIR(folder.lstat().st_mode):
            folder.unlink()  # a stray file or link: nothing of ours to release
            return
    except FileNotFoundError:
        return
    with _open_dir(folder) as fd:
        try:
            _quota_subvolume(fd, fsid, folder)
        except errors.FailedPrecondition:
            shutil.rmtree(folder)  # a plain folder, never given a limit
            return
    with _open_dir(folder.parent) as parent:
        try:
            # Deleting the subvolume unlinks it at once; btrfs frees its extents in the background.
            fcntl.ioctl(parent, _IOC_SNAP_DESTROY, _vol_args(folder.name))
        except OSError as exc:
            raise errors.Internal(f"cannot delete the sandbox folder {folder}: {exc}") from exc


def _existing_subvolumes(fd: int) -> set[int]:
    """Every subvolume the root tree still has an item for, deleted ones not yet dropped included."""
    found: set[int] = set()
    start = (SUBVOLUME_ROOT_INODE, _ROOT_ITEM_KEY, 0)
    while True:
        objectid, item_type, offset = start
        args = bytearray(4096)
        _SEARCH_KEY.pack_into(
            args, 0, _ROOT_TREE, objectid, _LAST_FREE_OBJECTID, offset, _U64_MAX, 0, _U64_MAX,
            item_type, _ROOT_ITEM_KEY, 4096, 0, 0, 0, 0, 0,
        )  # fmt: skip
        fcntl.ioctl(fd, _IOC_TREE_SEARCH, args)
        count = _SEARCH_KEY.unpack_from(args)[9]  # the kernel writes back how many items it copied
        ids, last = subvolume_ids_in_search_result(bytes(args[_SEARCH_KEY.size :]), count)
        found.update(ids)
        if last is None:
            return found
        # Keys are ordered (objectid, type, offset): go on just after the last one returned.
        objectid, item_type, offset = last
        if offset < _U64_MAX:
            start = (objectid, item_type, offset + 1)
        elif item_type < _ROOT_ITEM_KEY:
            start = (objectid, item_type + 1, 0)
        elif objectid < _LAST_FREE_OBJECTID:
            start = (objectid + 1, 0, 0)
        else:
            return found


def _clear_stale_quota_groups(volume: Path, fsid: uuid.UUID) -> int:
    groups_dir = SYSFS_BTRFS / str(fsid) / "qgroups"
    cleared = 0
    with _open_dir(volume) as fd, _SUBVOLUMES_CHANGING:
        try:
            names = os.listdir(groups_dir)
        except FileNotFoundError:
            return 0  # quotas are off
        level0 = sorted(int(m.group(1)) for name in names if (m := _LEVEL0_QGROUP.fullmatch(name)))
        existing = _existing_subvolumes(fd)
        for subvolume in level0:
            if subvolume < SUBVOLUME_ROOT_INODE or subvolume in existing:
                continue  # the top level, or a live (or still dropping) subvolume
            try:
                fcntl.ioctl(fd, _IOC_QGROUP_CREATE, bytearray(struct.pack("=QQ", 0, qgroup_id(subvolume))))
                cleared += 1
            except OSError as exc:
                # ENOENT: the kernel dropped it meanwhile. EBUSY: it still counts bytes; a later sweep.
                if exc.errno not in (errno.ENOENT, errno.EBUSY):
                    log.warning("cannot destroy the stale quota group 0/%d: %s", subvolume, exc)
    if cleared:
        log.info("destroyed %d stale quota groups on the sandbox volume", cleared)
    return cleared
