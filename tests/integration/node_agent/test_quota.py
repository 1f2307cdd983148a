"""Per-sandbox disk quotas on a real loop-mounted btrfs volume: limits, isolation, restarts, overlays."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hutch.core import errors
from hutch_node_agent import rootfs
from hutch_node_agent.quota import MOUNTINFO, DiskQuotas, mount_containing, parse_mountinfo

pytestmark = pytest.mark.integration

MiB = 2**20
LIMIT = 20 * MiB
# btrfs refuses a write once the data it would reserve, plus the folder's metadata, passes the limit,
# so writes stop a little before the limit, never after it.
SLACK = 3 * MiB


def _sh(*argv: str) -> str:
    """Runs a command the test needs as its setting; returns its output."""
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _mounts_under(path: Path) -> list[Path]:
    entries = parse_mountinfo(MOUNTINFO.read_text())
    return [e.mount_point for e in entries if e.mount_point.is_relative_to(path.resolve())]


def _loop_devices_of(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line]


def _clean_up(tmp_path: Path, image: Path) -> None:
    for mount_point in sorted(_mounts_under(tmp_path), key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
    for device in _loop_devices_of(image):
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def needs_btrfs() -> None:
    if os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        pytest.skip("needs root and btrfs-progs")
    if "btrfs" not in Path("/proc/filesystems").read_text():
        pytest.skip("the kernel has no btrfs")


@pytest.fixture
def volume_paths(tmp_path: Path, needs_btrfs: None) -> Iterator[tuple[Path, Path]]:
    volume, image = tmp_path / "volume", tmp_path / "volume.img"
    try:
        yield volume, image
    finally:
        _clean_up(tmp_path, image)


@pytest.fixture
async def quotas(volume_paths: tuple[Path, Path]) -> AsyncIterator[DiskQuotas]:
    volume, image = volume_paths
    quotas = DiskQuotas(volume, image, 512 * MiB)
    await quotas.prepare()
    yield quotas


def _fill(folder: Path, name: str = "fill", most: int = 200 * MiB) -> int:
    """Writes 1 MiB at a time until the disk refuses; returns the bytes that reached the disk."""
    chunk = b"\xa5" * MiB
    written = 0
    path = folder / name
    try:
        with open(path, "wb", buffering=0) as out:
            while written < most:
                written += out.write(chunk) or 0
                os.fsync(out.fileno())
    except OSError as exc:
        assert exc.errno in (errno.EDQUOT, errno.ENOSPC), exc
    return os.stat(path).st_blocks * 512


def _subvolume_id(folder: Path) -> int:
    return int(_sh("btrfs", "inspect-internal", "rootid", str(folder)))


def _wait_for_dropped_subvolumes(volume: Path) -> None:
    # A commit wakes the cleaner, which drops deleted subvolumes; then wait until it has.
    _sh("btrfs", "filesystem", "sync", str(volume))
    _sh("btrfs", "subvolume", "sync", str(volume))


def _qgroups(volume: Path) -> str:
    return _sh("btrfs", "qgroup", "show", "-r", str(volume))


# -- the volume ------------------------------------------------------------------------------------


async def test_prepare_mounts_a_sparse_btrfs_image_once(quotas: DiskQuotas) -> None:
    await quotas.prepare()

    mounts = [e for e in parse_mountinfo(MOUNTINFO.read_text()) if e.mount_point == quotas.volume.resolve()]
    assert [m.fstype for m in mounts] == ["btrfs"]
    assert quotas.volume_root.is_dir()
    image = quotas.image.stat()
    assert image.st_size == 512 * MiB
    assert image.st_blocks * 512 < image.st_size // 2  # sparse


async def test_prepare_after_a_reboot_reuses_the_image_and_its_limits(quotas: DiskQuotas) -> None:
    folder = quotas.volume_root / "sb-1"
    await quotas.apply(folder, LIMIT)
    (folder / "kept").write_text("still here")
    _sh("umount", str(quotas.volume))  # autoclear detaches the loop device too
    assert not os.path.ismount(quotas.volume)

    again = DiskQuotas(quotas.volume, quotas.image, quotas.image_size_bytes)
    await again.prepare()

    assert (folder / "kept").read_text() == "still here"
    assert LIMIT - SLACK <= _fill(folder) <= LIMIT


async def test_prepare_mounts_a_loop_device_left_attached_to_the_image(quotas: DiskQuotas) -> None:
    _sh("umount", str(quotas.volume))
    device = _sh("losetup", "--show", "-f", str(quotas.image)).strip()

    await DiskQuotas(quotas.volume, quotas.image, quotas.image_size_bytes).prepare()

    mount = mount_containing(quotas.volume.resolve(), parse_mountinfo(MOUNTINFO.read_text()))
    assert mount is not None and mount.source == device
    assert _loop_devices_of(quotas.image) == [device]


async def test_prepare_refuses_another_filesystem_mounted_at_the_volume(volume_paths: tuple[Path, Path]) -> None:
    volume, image = volume_paths
    volume.mkdir()
    _sh("mount", "-t", "tmpfs", "tmpfs", str(volume))

    with pytest.raises(errors.FailedPrecondition, match="tmpfs mount, not btrfs"):
        await DiskQuotas(volume, image, 512 * MiB).prepare()


async def test_prepare_says_what_to_install_when_mkfs_btrfs_is_missing(
    volume_paths: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume, image = volume_paths
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mount", "modprobe"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))

    with pytest.raises(errors.FailedPrecondition, match="apt-get install btrfs-progs"):
        await DiskQuotas(volume, image, 512 * MiB).prepare()
    assert not image.exists()


async def test_folders_need_a_prepared_volume(volume_paths: tuple[Path, Path]) -> None:
    volume, image = volume_paths
    with pytest.raises(errors.FailedPrecondition, match="prepare"):
        await DiskQuotas(volume, image, 512 * MiB).apply(volume / "sandboxes" / "sb-1", LIMIT)


# -- limits ------------------------------------------------------------------------------------------


async def test_writes_stop_at_the_limit_and_other_folders_keep_writing(quotas: DiskQuotas) -> None:
    full, other = quotas.volume_root / "sb-full", quotas.volume_root / "sb-other"
    await quotas.apply(full, LIMIT)
    await quotas.apply(other, LIMIT)

    written = _fill(full)
    assert LIMIT - SLACK <= written <= LIMIT
    assert _fill(other, most=10 * MiB) == 10 * MiB

    os.sync()  # usage is counted at each btrfs commit
    assert LIMIT - SLACK <= await quotas.usage(full) <= LIMIT
    assert 10 * MiB <= await quotas.usage(other) <= 10 * MiB + SLACK


async def test_a_flood_of_empty_files_is_bounded_by_the_limit(quotas: DiskQuotas) -> None:
    folder = quotas.volume_root / "sb-files"
    await quotas.apply(folder, 2 * MiB)

    with pytest.raises(OSError) as refused:
        for n in range(1_000_000):
            (folder / f"f{n}").touch()
    assert refused.value.errno == errno.EDQUOT


async def test_a_new_limit_replaces_the_old_one_and_zero_lifts_it(quotas: DiskQuotas) -> None:
    folder = quotas.volume_root / "sb-grow"
    await quotas.apply(folder, LIMIT)
    assert _fill(folder, "first") <= LIMIT

    await quotas.apply(folder, 0)

    assert _fill(folder, "second", most=3 * LIMIT) == 3 * LIMIT


async def test_an_overlay_with_its_upper_layer_in_a_folder_is_limited(quotas: DiskQuotas, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "motd").write_text("from the template\n")
    folder = quotas.volume_root / "sb-overlay"
    await quotas.apply(folder, LIMIT)
    merged = folder / "rootfs"
    rootfs.mount_overlay([lower], folder / "upper", folder / "work", merged)
    try:
        with open(merged / "etc" / "motd", "a") as motd:  # copy-up into the upper layer
            motd.write("and from the sandbox\n")
        written = _fill(merged)
    finally:
        rootfs.unmount(merged)

    assert LIMIT - SLACK <= written <= LIMIT
    assert (folder / "upper" / "etc" / "motd").read_text() == "from the template\nand from the sandbox\n"


async def test_apply_refuses_folders_it_cannot_limit(quotas: DiskQuotas, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument):
        await quotas.apply(tmp_path / "elsewhere", LIMIT)
    with pytest.raises(errors.InvalidArgument):
        await quotas.apply(quotas.volume_root / ".." / ".." / "escape", LIMIT)
    with pytest.raises(errors.InvalidArgument):
        await quotas.apply(quotas.volume_root / "sb-1", -1)
    plain = quotas.volume_root / "plain"
    plain.mkdir()
    with pytest.raises(errors.FailedPrecondition, match="not a sandbox folder"):
        await quotas.apply(plain, LIMIT)
    with pytest.raises(errors.FailedPrecondition, match="not a sandbox folder"):
        await quotas.usage(plain)


# -- release -----------------------------------------------------------------------------------------


async def test_release_deletes_the_folder_and_its_quota_group(quotas: DiskQuotas) -> None:
    folder = quotas.volume_root / "sb-gone"
    await quotas.apply(folder, LIMIT)
    _fill(folder, most=8 * MiB)
    qgroup = f"0/{_subvolume_id(folder)}"
    assert qgroup in _qgroups(quotas.volume)

    await quotas.release(folder)

    assert not folder.exists()
    _wait_for_dropped_subvolumes(quotas.volume)
    await quotas.clear_stale_quota_groups()  # whether or not the kernel dropped the group itself
    assert qgroup not in _qgroups(quotas.volume).split()
    await quotas.apply(folder, LIMIT)  # the name is free again, with a fresh quota
    assert await quotas.usage(folder) < MiB


async def test_a_deleted_folder_a_snapshot_shared_leaves_no_quota_group_behind(quotas: DiskQuotas) -> None:
    # Simple quotas count an extent against the folder that wrote it until the extent is freed, so a
    # folder deleted while its snapshot still holds its bytes keeps a group after the kernel drops it.
    # Node snapshots and forks do exactly this; without a sweep such groups would pile up for good.
    kept, source, frozen, other = (quotas.volume_root / name for name in ("kept", "source", "frozen", "other"))
    await quotas.apply(kept, LIMIT)
    await quotas.apply(source, LIMIT)
    _fill(source, most=8 * MiB)
    await quotas.snapshot(source, frozen, read_only=True)
    kept_group, source_group = f"0/{_subvolume_id(kept)}", f"0/{_subvolume_id(source)}"

    await quotas.release(source)
    await quotas.release(frozen)
    _wait_for_dropped_subvolumes(quotas.volume)
    await quotas.apply(other, LIMIT)
    await quotas.release(other)  # a later release sweeps what earlier ones left

    groups = _qgroups(quotas.volume).split()
    assert source_group not in groups
    assert kept_group in groups  # a live folder keeps its group and its limit
    assert LIMIT - SLACK <= _fill(kept) <= LIMIT


async def test_release_removes_plain_folders_and_ignores_missing_ones(quotas: DiskQuotas) -> None:
    plain = quotas.volume_root / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "sub" / "file").write_text("x")

    await quotas.release(plain)
    await quotas.release(quotas.volume_root / "never-made")

    assert not plain.exists()
