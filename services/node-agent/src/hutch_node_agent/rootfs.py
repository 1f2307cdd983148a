"""A sandbox's root filesystem: overlayfs of a read-only template over a private upper layer."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hutch.core import errors


async def _mount_cmd(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


async def mount_overlay(lower: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mounts `lower` (highest layer first) under a writable `upper` at `target`."""
    for folder in (upper, work, target):
        folder.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return
    options = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    code, err = await _mount_cmd("mount", "-t", "overlay", "overlay", "-o", options, str(target))
    if code != 0:
        raise errors.Internal(f"cannot mount the sandbox's root filesystem at {target}: {err}")


async def unmount(target: Path) -> None:
    if not is_mounted(target):
        return
    code, err = await _mount_cmd("umount", "--lazy", str(target))
    if code != 0 and is_mounted(target):
        raise errors.Internal(f"cannot unmount {target}: {err}")
