"""What a sandbox needs to reach the world through the node's egress-proxy.

* `/etc/resolv.conf` names the sandbox's gateway (the host end of its link); the node's firewall
  sends every DNS query to the proxy's responder whatever address it goes to, so this only keeps
  images with a resolver of their own (127.0.0.53, ...) from asking nobody.
* The proxy intercepts TLS with the installation's CA, so the sandbox must trust it without being
  told: `/.hutch/ca/ca.pem` (the CA alone) and `/.hutch/ca/bundle.pem` (the image's own bundle plus
  the CA) are mounted read-only, the bundle also over the image's standard bundle files that are
  plain files, and the usual variables point at them (curl, OpenSSL, Python's ssl and requests,
  Node, git, pip). The CA's private key never leaves the proxy.

Everything here reads from or writes into the sandbox's root filesystem from the host, which may
be an untrusted image: no path component is followed when it is a symbolic link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hutch.core import errors

log = logging.getLogger(__name__)

CA_MOUNT = "/.hutch/ca"
CA_FILE = f"{CA_MOUNT}/ca.pem"
BUNDLE_FILE = f"{CA_MOUNT}/bundle.pem"
# Where images keep their trust bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, Alpine/BSD).
STANDARD_BUNDLES = (
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/ca-bundle.pem",
    "etc/ssl/cert.pem",
)
_MAX_BUNDLE = 8 * 1024 * 1024

CA_ENV = {
    "SSL_CERT_FILE": BUNDLE_FILE,
    "REQUESTS_CA_BUNDLE": BUNDLE_FILE,
    "CURL_CA_BUNDLE": BUNDLE_FILE,
    "GIT_SSL_CAINFO": BUNDLE_FILE,
    "PIP_CERT": BUNDLE_FILE,
    "AWS_CA_BUNDLE": BUNDLE_FILE,
    "NODE_EXTRA_CA_CERTS": CA_FILE,
    "DENO_CERT": CA_FILE,
}


def ca_env(ca_file: Path | None) -> dict[str, str]:
    """The variables that make programs trust the proxy's CA (none when there is no CA to install)."""
    return dict(CA_ENV) if ca_file is not None and ca_file.is_file() else {}


def _open_dir(root: int, parts: list[str]) -> int:
    fd = os.dup(root)
    try:
        for part in parts:
            nxt = os.open(part, os.O_DIRECTORY | os.O_NOFOLLOW | os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_regular(root: int, relative: str) -> bytes | None:
    """The file's bytes when every component is a real directory and the file a regular file."""
    *folders, name = relative.split("/")
    try:
        folder = _open_dir(root, folders)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read(_MAX_BUNDLE)


def write_resolv_conf(rootfs: Path, nameserver: IPv4Address, owner: int) -> None:
    root = os.open(rootfs, os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("etc", 0o755, dir_fd=root)
        etc = _open_dir(root, ["etc"])
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("resolv.conf", dir_fd=etc)  # a symbolic link is removed, never followed
            fd = os.open("resolv.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
            with os.fdopen(fd, "w") as out:
                os.fchown(out.fileno(), owner, owner)
                out.write(f"nameserver {nameserver}\noptions attempts:2 timeout:2\n")
        finally:
            os.close(etc)
    except OSError as exc:
        raise errors.InvalidArgument(f"the template's /etc cannot hold the sandbox's resolv.conf: {exc}") from exc
    finally:
        os.close(root)


def prepare_ca(rootfs: Path, sandbox_dir: Path, ca_file: Path | None) -> list[dict[str, Any]]:
    """Writes the sandbox's CA files next to its record; returns the OCI mounts that show them."""
    if ca_file is None:
        return []
    try:
        ca = ca_file.read_bytes()
    except OSError as exc:
        log.warning("sandboxes do not get the egress CA: %s is unreadable (%s)", ca_file, exc)
        return []
    folder = sandbox_dir / "ca"
    folder.mkdir(mode=0o755, exist_ok=True)
    root = os.open(rootfs, os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        found = {path: _read_regular(root, path) for path in STANDARD_BUNDLES}
    finally:
        os.close(root)
    present = [path for path, data in found.items() if data is not None]
    image_bundle = next((found[path] for path in present), b"") or b""
    (folder / "ca.pem").write_bytes(ca)
    bundle = folder / "bundle.pem"
    bundle.write_bytes(image_bundle.rstrip() + b"\n" + ca if image_bundle else ca)
    for name in ("ca.pem", "bundle.pem"):
        os.chmod(folder / name, 0o644)
    options = ["nosuid", "nodev", "noexec", "ro"]
    mounts = [{"destination": CA_MOUNT, "type": "bind", "source": str(folder), "options": ["rbind", *options]}]
    mounts += [
        {"destination": "/" + path, "type": "bind", "source": str(bundle), "options": ["bind", *options]}
        for path in present
    ]
    return mounts


def prepare(
    rootfs: Path, sandbox_dir: Path, nameserver: IPv4Address | None, proxy_ca: Path | None, owner: int
) -> tuple[dict[str, Any], ...]:
    """Everything above for one sandbox whose traffic goes through the proxy (nothing without one)."""
    if nameserver is None:
        return ()
    write_resolv_conf(rootfs, nameserver, owner)
    return tuple(prepare_ca(rootfs, sandbox_dir, proxy_ca))
