"""A sandbox's root filesystem: overlayfs of a read-only template over a private upper layer.

Mounts go straight to the mount(2) and umount2(2) system calls: spawning mount(8) for every sandbox
cost several milliseconds of its start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from hutch.core import errors

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_MNT_DETACH = 2


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise errors.Internal(f"{what}: {os.strerror(code)}")


def mount_overlay(lower: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mounts `lower` (highest layer first) under a writable `upper` at `target`."""
    for folder in (upper, work, target):
        folder.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return
    options = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    result = _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode())
    _check(result, f"cannot mount the sandbox's root filesystem at {target}")


def unmount(target: Path) -> None:
    """Detaches the mount; the kernel finishes unmounting once nothing uses it any more."""
    if not is_mounted(target):
        return
    result = _libc.umount2(str(target).encode(), _MNT_DETACH)
    if result != 0 and is_mounted(target):
        _check(result, f"cannot unmount {target}")
