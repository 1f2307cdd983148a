"""Loopback TCP ports: picking free ones, checking whether one is taken, waiting for a listener."""

from __future__ import annotations

import socket
import threading
import time

LOOPBACK = "127.0.0.1"

# Ports handed out by `free_port` in this process. The kernel may hand the same ephemeral port to two
# consecutive bind(port 0) calls once the first socket is closed, and the caller only binds it later,
# so without this two components started together could be given the same port.
_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """Returns a TCP port on `host` that nothing listens on and that this process has not handed out."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError(f"could not find a free TCP port on {host}")


def reserve_port(port: int) -> None:
    """Keeps `free_port` from handing out `port`, which the caller is about to bind itself."""
    with _lock:
        _handed_out.add(port)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether binding `host:port` fails, i.e. some process already listens there.

    SO_REUSEADDR makes sockets left in TIME_WAIT by a process that just stopped count as free, which is
    what a restart needs; on Linux it still refuses a port that has a live listener.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_listener(host: str, port: int, timeout: float) -> bool:
    """Waits until `host:port` accepts TCP connections; False if it did not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepts_connections(host, port):
            return True
        time.sleep(0.05)
    return False


def split_host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """Splits "host:port" (or "[v6]:port"); `default_port` is used when the port is missing."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)
