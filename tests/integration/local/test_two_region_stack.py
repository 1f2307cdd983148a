"""`hutch local up --regions 2`: two regions on one machine, their NATS servers joined as a supercluster.

The `two_regions` fixture's stack is checked for what cross-region tests rely on (both gateways, one
dev key, a supercluster, each region's streams in its own cluster, NATS coming back after a kill);
`up`, `status` and `down` of the command line run on a stack of their own, servers only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hutch.core.bus import sandbox_stream
from hutch.local import stack
from hutch.local.health import grpc_serving
from hutch.local.state import StackState
from hutch.testing import eventually_sync
from hutch.testing.local_stack import LocalStack, missing_services
from hutch.testing.regions import TwoRegions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_services()), reason="services not installed yet"),
]

ALL_FREE = ",".join(f"{name}=0" for name in stack.default_ports())


def state_of(region: LocalStack) -> StackState:
    state = stack.read_state(region.home)
    assert state is not None
    return state


def monitor(region: LocalStack, endpoint: str) -> dict[str, Any]:
    """A page of the region's NATS monitoring listener (its port is in the server's configuration)."""
    argv = state_of(region).component("nats").argv
    config = Path(argv[argv.index("-c") + 1]).read_text()
    match = re.search(r"^http_port: (\d+)$", config, re.MULTILINE)
    assert match is not None, config
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/{endpoint}", timeout=2) as response:
        page: dict[str, Any] = json.load(response)
    return page


def joined(region: LocalStack, other: str) -> bool:
    gatewayz = monitor(region, "gatewayz")
    return other in (gatewayz.get("outbound_gateways") or {}) and other in (gatewayz.get("inbound_gateways") or {})


def test_both_regions_serve_with_one_dev_key(two_regions: TwoRegions) -> None:
    first, second = two_regions.first, two_regions.second
    assert (first.region, second.region) == ("local", "local-2")
    assert grpc_serving(first.endpoint) and grpc_serving(second.endpoint)
    assert first.endpoint != second.endpoint
    assert first.api_key == second.api_key and first.internal_token == second.internal_token
    assert second.postgres_dsn.endswith("/hutch_local_2") and first.postgres_dsn.endswith("/hutch")
    assert (first.s3_bucket, second.s3_bucket) == ("hutch", "hutch-local-2")

    gateway = second.service_env("gateway")
    assert gateway["HUTCH_REGION"] == "local-2"
    assert gateway["HUTCH_PEER_REGIONS"] == "local"
    assert gateway["HUTCH_GATEWAY__PEER_GATEWAYS"] == f"local={first.endpoint}"
    store = first.service_env("snapshot-store")["HUTCH_GRPC__PORT"]
    assert gateway["HUTCH_SNAPSHOT_STORE__PEER_STORES"] == f"local=127.0.0.1:{store}"
    node = second.service_env("node-agent")
    assert node["HUTCH_NODE__ID"] == "local-2-1"
    assert node["HUTCH_NODE__CGROUP_PARENT"] == "hutch-local-2-1"
    assert node["HUTCH_NODE__SANDBOX_NETWORK"] == "100.98.0.0/16"
    assert second.service_env("egress-proxy")["HUTCH_EGRESS__NODE_ID"] == "local-2-1"


def test_the_regions_form_a_supercluster(two_regions: TwoRegions) -> None:
    first, second = two_regions.first, two_regions.second
    assert joined(first, "local-2") and joined(second, "local")
    assert monitor(second, "varz")["cluster"]["name"] == "local-2"

    async def request_across() -> bytes:
        answering = await nats.connect(second.nats_url)
        asking = await nats.connect(first.nats_url)
        try:
            subject = f"hutch.local-2.test.{uuid.uuid4().hex}"

            async def answer(msg: Any) -> None:
                await msg.respond(b"from local-2")

            await answering.subscribe(subject, cb=answer)
            await answering.flush()
            for _ in range(50):
                try:
                    reply = await asking.request(subject, b"from local", timeout=1)
                    return bytes(reply.data)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)
            raise AssertionError("no answer from the other region")
        finally:
            await asking.close()
            await answering.close()

    assert asyncio.run(request_across()) == b"from local-2"


def test_each_region_keeps_its_streams_in_its_own_cluster(two_regions: TwoRegions) -> None:
    async def stream_clusters() -> dict[str, str | None]:
        client = await nats.connect(two_regions.first.nats_url)
        try:
            js = client.jetstream()
            clusters = {}
            for region in ("local", "local-2"):
                info = await js.stream_info(sandbox_stream(region).name)
                clusters[region] = info.cluster.name if info.cluster is not None else None
            return clusters
        finally:
            await client.close()

    assert asyncio.run(stream_clusters()) == {"local": "local", "local-2": "local-2"}


def test_a_killed_nats_server_comes_back_and_its_services_reconnect(two_regions: TwoRegions) -> None:
    second = two_regions.second
    before = state_of(second).component("nats")
    second.kill("nats")
    second.restart("nats")
    after = state_of(second).component("nats")
    assert after.pid != before.pid
    assert (after.address, after.argv) == (before.address, before.argv)  # same ports, same store

    def services_connected() -> bool:
        names = {connection.get("name") for connection in monitor(second, "connz?limit=1024")["connections"]}
        return {"gateway", "scheduler", "billing-meter", "node-agent-local-2-1", "egress-proxy-local-2-1"} <= names

    eventually_sync(lambda: joined(second, "local") and services_connected(), timeout=60, interval=0.5)
    assert all(row.state == "healthy" for row in second.status())
    assert grpc_serving(second.endpoint)


@pytest.fixture
def home(server_tmp_path: Path) -> Iterator[Path]:
    """A HUTCH_HOME whose stack is always brought down at the end, whatever the test did."""
    yield server_tmp_path
    stack.down(server_tmp_path)


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUTCH_HOME": str(home), "HUTCH_LOCAL_PORTS": ALL_FREE, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hutch.local", *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_up_status_down_of_two_regions_from_the_command_line(home: Path) -> None:
    up = run_cli(home, "up", "--detach", "--no-services", "--regions", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "region local-2" in up.stdout and "hutch_local_2" in up.stdout
    second_home = home / "local" / "regions" / "local-2"
    states = [stack.read_state(home), stack.read_state(second_home)]
    assert [state.region for state in states if state is not None] == ["local", "local-2"]
    pids = [c.pid for state in states if state is not None for c in state.components if c.pid is not None]
    assert len(pids) == 4  # NATS, PostgreSQL and S3 of the first region, NATS of the second

    again = run_cli(home, "up", "--detach", "--no-services", "--regions", "2")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

    status = run_cli(home, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "region local\n" in status.stdout and "region local-2" in status.stdout
    assert status.stdout.count("healthy") == 6

    down = run_cli(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.index("local-2/nats") < down.stdout.index("postgres")
    assert not (home / "local" / "stack.json").exists()
    assert not (second_home / "local" / "stack.json").exists()
    assert not any(pid_running(pid) for pid in pids)
    assert run_cli(home, "status").returncode == 3
