"""Sandboxes' writable layers and the frozen copies snapshots keep of them.

On the quota volume (btrfs) a layer is a subvolume, so freezing one (a read-only snapshot) and
starting a sandbox from a frozen copy (a writable snapshot of it) take constant time whatever the
layer holds: extents are shared until one side writes. Without the volume (quotas turned off) the
same operations copy the files, reflinking where the filesystem can.

A frozen layer holds the layer's `upper/` exactly as the overlay left it: whiteouts (0/0 character
devices), opaque folders (the `trusted.overlay.opaque` attribute), owners in the sandbox's shifted
uid range.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from hutch.core import errors
from hutch_node_agent.quota import DiskQuotas


class Layers:
    def __init__(self, quotas: DiskQuotas | None, limit_bytes: int, owner: int) -> None:
        self._quotas = quotas
        self._limit_bytes = limit_bytes
        self._owner = owner

    @property
    def copy_on_write(self) -> bool:
        return self._quotas is not None

    async def make(self, layer: Path) -> None:
        """An empty writable layer: upper/ (the sandbox's root directory) and the overlay's work/."""
        if self._quotas is not None:
            await self._quotas.apply(layer, self._limit_bytes)
        else:
            layer.mkdir(parents=True)
        upper, work = layer / "upper", layer / "work"
        upper.mkdir()
        os.chown(upper, self._owner, self._owner)
        work.mkdir()

    async def clone(self, frozen: Path, layer: Path) -> None:
        """A writable layer that starts as a copy of a frozen one."""
        if not (frozen / "upper").is_dir():
            raise errors.FailedPrecondition(f"{frozen} is not a frozen layer")
        if self._quotas is not None:
            await self._quotas.snapshot(frozen, layer, read_only=False)
            await self._quotas.apply(layer, self._limit_bytes)  # the new subvolume's own limit
        else:
            layer.mkdir(parents=True)
            await _copy_tree(frozen / "upper", layer / "upper")
            (layer / "work").mkdir(exist_ok=True)
        # The overlay's scratch space of the source must not carry over into a new mount.
        await asyncio.to_thread(_empty_folder, layer / "work")

    async def freeze(self, layer: Path, frozen: Path) -> None:
        """A read-only copy of the layer as it is now; the caller keeps the sandbox still meanwhile."""
        if self._quotas is not None:
            await self._quotas.snapshot(layer, frozen, read_only=True)
        else:
            frozen.mkdir(parents=True)
            await _copy_tree(layer / "upper", frozen / "upper")

    async def adopt(self, staged: Path, frozen: Path) -> None:
        """Turns a writable folder filled from elsewhere (a download) into a frozen layer."""
        if self._quotas is not None:
            await self._quotas.snapshot(staged, frozen, read_only=True)
            await self._quotas.release(staged)
        else:
            staged.rename(frozen)

    async def make_staging(self, staged: Path) -> None:
        """A writable folder with an empty upper/, to unpack a downloaded layer into."""
        if self._quotas is not None:
            await self._quotas.apply(staged, 0)
        else:
            staged.mkdir(parents=True)
        (staged / "upper").mkdir(exist_ok=True)

    async def drop(self, path: Path) -> None:
        if self._quotas is not None:
            await self._quotas.release(path)
        else:
            await asyncio.to_thread(shutil.rmtree, path, True)


async def _copy_tree(source: Path, destination: Path) -> None:
    # cp keeps what shutil cannot: device nodes (whiteouts), xattrs (opaque folders), hard links.
    destination.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "cp", "-a", "--reflink=auto", f"{source}/.", str(destination),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise errors.Internal(f"cannot copy {source} to {destination}: {err.decode(errors='replace').strip()}")


def _empty_folder(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir()
        return
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            entry.chmod(0o700)  # the overlay leaves work/work with no permissions at all
            shutil.rmtree(entry)
        else:
            entry.unlink()
