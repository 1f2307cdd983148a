"""`hutch local up|status|down` end to end, run as `python -m hutch.local` in a temporary HUTCH_HOME.

The servers-only tests always run; those that need the services skip while their console scripts
are not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.local import stack
from hutch.local.health import grpc_serving
from hutch.local.servers import NatsServer, PostgresServer, S3Server
from hutch.local.servers.nats import nats_ready
from hutch.local.servers.postgres import run_sql
from hutch.local.servers.s3 import s3_answers
from hutch.testing import eventually_sync
from hutch.testing.local_stack import LocalStack, missing_services

pytestmark = pytest.mark.integration

ALL_FREE = "nats=0,postgres=0,s3=0,scheduler=0,node-agent=0,gateway=0"

needs_services = pytest.mark.skipif(
    bool(missing_services()), reason=f"services not installed yet: {', '.join(missing_services())}"
)


@pytest.fixture
def home(server_tmp_path: Path) -> Iterator[Path]:
    """A HUTCH_HOME whose stack is always brought down at the end, whatever the test did."""
    yield server_tmp_path
    if (server_tmp_path / "local" / "stack.json").exists():
        run_cli(server_tmp_path, "down")


def run_cli(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUTCH_HOME": str(home), "HUTCH_LOCAL_PORTS": ALL_FREE, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hutch.local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_json(home: Path) -> dict[str, object]:
    data = json.loads((home / "local" / "stack.json").read_text())
    assert isinstance(data, dict)
    return data


def components(home: Path) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in stack_json(home)["components"]}  # type: ignore[attr-defined]


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_status_down_and_up_again_keeps_data(home: Path) -> None:
    started = time.monotonic()
    up = run_cli(home, "up", "--detach", "--no-services")
    assert up.returncode == 0, up.stdout + up.stderr
    up_seconds = time.monotonic() - started

    secrets = json.loads((home / "local" / "secrets.json").read_text())
    api_key = secrets["api_key"]
    assert api_key.startswith("hk_") and len(api_key) == 35
    assert api_key in up.stdout
    assert mode(home / "local" / "secrets.json") == 0o600
    assert mode(home / "local" / "stack.json") == 0o600

    state = stack_json(home)
    found = components(home)
    assert list(found) == ["nats", "postgres", "s3"]
    host, _, port = str(found["nats"]["address"]).rpartition(":")
    assert nats_ready(host, int(port))
    run_sql(str(state["postgres_dsn"]), "CREATE TABLE kept (value text); INSERT INTO kept VALUES ('yes')")
    assert s3_answers(str(state["s3_endpoint"]), str(state["s3_access_key"]), str(state["s3_secret_key"]))

    status = run_cli(home, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 3

    again = run_cli(home, "up", "--detach", "--no-services")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert components(home)["nats"]["pid"] == found["nats"]["pid"]

    down = run_cli(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (home / "local" / "stack.json").exists()
    for component in found.values():
        assert not pid_running(int(str(component["pid"])))
    assert run_cli(home, "status").returncode == 3

    up = run_cli(home, "up", "--detach", "--no-services")
    assert up.returncode == 0, up.stdout + up.stderr
    assert json.loads((home / "local" / "secrets.json").read_text())["api_key"] == api_key
    assert run_sql(str(stack_json(home)["postgres_dsn"]), "SELECT value FROM kept") == "yes"
    assert run_cli(home, "down").returncode == 0
    # Servers only: NATS and PostgreSQL take well under a second, SeaweedFS about three.
    assert up_seconds < 60


def test_an_occupied_port_is_named(home: Path) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        result = run_cli(home, "up", "--detach", "--no-services", "--port", f"postgres={port}")
    assert result.returncode != 0
    assert f"port {port} for postgres is already in use" in " ".join((result.stdout + result.stderr).split())
    assert not (home / "local" / "stack.json").exists()


def test_a_failing_server_shows_its_log_and_nothing_is_left_running(home: Path) -> None:
    # A cluster directory from an unsupported PostgreSQL version makes the server exit at once.
    data = home / "local" / "postgres" / "data"
    data.mkdir(parents=True, mode=0o700)
    (data / "PG_VERSION").write_text("9\n")
    (data / "postgresql.conf").write_text("")
    result = run_cli(home, "up", "--detach", "--no-services")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "postgres" in output and "exited during startup" in output
    assert "incompatible" in output  # from PostgreSQL's own log
    assert not (home / "local" / "stack.json").exists()
    nats_log = (home / "local" / "logs" / "nats.log").read_text()
    assert "Server Exiting" in nats_log  # NATS had started and was stopped again


def test_status_reports_a_stopped_component(home: Path) -> None:
    assert run_cli(home, "up", "--detach", "--no-services").returncode == 0
    nats = components(home)["nats"]
    os.kill(int(str(nats["pid"])), signal.SIGKILL)
    eventually_sync(lambda: not pid_running(int(str(nats["pid"]))))
    status = run_cli(home, "status")
    assert status.returncode == 1
    assert "stopped" in status.stdout
    partly = run_cli(home, "up", "--detach", "--no-services")
    assert partly.returncode == 1
    assert "partly running" in " ".join((partly.stdout + partly.stderr).split())

    # What the local_stack fixture's restart() does: same command, same data, healthy again.
    restarted = stack.restart(home, "nats")
    assert restarted.pid != nats["pid"] and restarted.address == nats["address"]
    assert run_cli(home, "status").returncode == 0
    assert run_cli(home, "down").returncode == 0


def test_external_servers_are_used_and_left_running(
    home: Path, nats_server: NatsServer, postgres_server: PostgresServer, postgres_dsn: str, s3_server: S3Server
) -> None:
    up = run_cli(
        home,
        "up",
        "--detach",
        "--no-services",
        f"--nats-url={nats_server.url}",
        f"--postgres-dsn={postgres_dsn}",
        f"--s3-endpoint={s3_server.endpoint}",
        f"--s3-access-key={s3_server.access_key}",
        f"--s3-secret-key={s3_server.secret_key}",
        "--s3-bucket=external-stack",
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert all(c["external"] and c["pid"] is None for c in components(home).values())
    assert stack_json(home)["postgres_dsn"] == postgres_dsn
    assert not (home / "local" / "postgres").exists()
    status = run_cli(home, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("external") == 3

    assert run_cli(home, "down").returncode == 0
    assert nats_server.healthy() and postgres_server.healthy() and s3_server.healthy()
    assert s3_server.client().bucket_exists("external-stack")
    s3_server.remove_bucket("external-stack")


def test_an_incomplete_external_s3_is_refused(home: Path) -> None:
    result = run_cli(home, "up", "--detach", "--no-services", "--s3-endpoint=127.0.0.1:1")
    assert result.returncode == 1
    assert "--s3-access-key" in result.stderr


def test_foreground_up_stops_everything_on_sigint(home: Path) -> None:
    env = {**os.environ, "HUTCH_HOME": str(home), "HUTCH_LOCAL_PORTS": ALL_FREE}
    foreground = subprocess.Popen(
        [sys.executable, "-m", "hutch.local", "up", "--no-services"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert foreground.stdout is not None
        for line in foreground.stdout:
            if "press Ctrl-C" in line:
                break
        assert run_cli(home, "status").returncode == 0
        pids = [int(str(c["pid"])) for c in components(home).values()]
        foreground.send_signal(signal.SIGINT)
        output, _ = foreground.communicate(timeout=60)
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()
    assert foreground.returncode == 0, output
    assert not (home / "local" / "stack.json").exists()
    assert not any(pid_running(pid) for pid in pids)


@needs_services
def test_whole_stack_up_status_down_keeps_the_dev_key(home: Path) -> None:
    up = run_cli(home, "up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    config = json.loads((home / "config.json").read_text())
    assert mode(home / "config.json") == 0o600
    assert config["endpoint"] == stack_json(home)["endpoint"]
    assert config["api_key"] in up.stdout
    found = components(home)
    assert [name for name, c in found.items() if c["kind"] == "service"] == [
        "scheduler",
        "snapshot-store",
        "secrets-broker",
        "egress-proxy",
        "node-agent",
        "billing-meter",
        "gateway",
    ]
    assert grpc_serving(config["endpoint"])
    env = found["gateway"]["env"]
    assert isinstance(env, dict)
    assert env["HUTCH_GATEWAY__BOOTSTRAP_API_KEY"] == config["api_key"]
    assert env["HUTCH_TELEMETRY__FILE_PATH"] == str(home / "local" / "logs" / "traces.jsonl")

    status = run_cli(home, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 10

    assert run_cli(home, "down").returncode == 0
    up = run_cli(home, "up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    assert json.loads((home / "config.json").read_text())["api_key"] == config["api_key"]
    assert run_cli(home, "down").returncode == 0


@needs_services
def test_local_stack_fixture_restarts_and_kills_services(local_stack: LocalStack) -> None:
    assert grpc_serving(local_stack.endpoint)
    assert local_stack.env["HUTCH_HOME"] == str(local_stack.home)
    key = local_stack.create_tenant(f"acme-{os.getpid()}")
    assert key.startswith("hk_") and key != local_stack.api_key

    before = local_stack.pid("scheduler")
    local_stack.restart("scheduler")
    assert local_stack.pid("scheduler") != before
    assert {row.name: row.state for row in local_stack.status()}["scheduler"] == "healthy"

    local_stack.kill("node-agent")
    assert {row.name: row.state for row in local_stack.status()}["node-agent"] == "stopped"
    local_stack.restart("node-agent")
    assert all(row.state == "healthy" for row in local_stack.status())
