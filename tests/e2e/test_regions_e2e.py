"""Two regions on one machine (`hutch local up --regions 2`): each with its own NATS server, joined
as a supercluster, its own services, database and bucket. First the stack itself (one dev key, a
supercluster, each region's streams in its own cluster, NATS back after a kill); then a tenant
reaches a sandbox through either region's gateway, snapshots travel between regions on demand, a
region whose NATS server dies leaves the other serving, and each region's bill holds both regions'
usage once.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hutch import InvalidArgumentError, Nodes, NotFoundError, ResourceExhaustedError, Sandbox, Snapshot, Usage
from hutch.core.bus import sandbox_stream
from hutch.local.health import grpc_serving
from hutch.local.services import installed_script, service
from hutch.local.stack import read_state
from hutch.local.state import StackState
from hutch.testing.eventually import eventually_sync
from hutch.testing.local_stack import LocalStack
from hutch.testing.regions import TwoRegions
from hutch.v1 import sandbox_pb2, sandbox_pb2_grpc

pytestmark = pytest.mark.e2e


def region_of(stack: Any) -> str:
    return str(stack.service_env("gateway")["HUTCH_REGION"])


def through(stack: Any) -> dict[str, str]:
    """SDK arguments for calls through `stack`'s gateway."""
    return {"endpoint": stack.endpoint, "api_key": stack.api_key}


def state_of(region: LocalStack) -> StackState:
    state = read_state(region.home)
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
    first, second = two_regions.first, two_regions.second
    elsewhere = Sandbox.create(region=first.region, **through(first))
    before = state_of(second).component("nats")
    second.kill("nats")
    second.restart("nats")
    after = state_of(second).component("nats")
    assert after.pid != before.pid
    assert (after.address, after.argv) == (before.address, before.argv)  # same ports, same store

    def services_connected() -> bool:
        names = {connection.get("name") for connection in monitor(second, "connz?limit=1024")["connections"]}
        return {"gateway", "scheduler", "billing-meter", "node-agent-local-2-1", "egress-proxy-local-2-1"} <= names

    try:
        eventually_sync(lambda: joined(second, "local") and services_connected(), timeout=60, interval=0.5)
        assert all(row.state == "healthy" for row in second.status())
        assert grpc_serving(second.endpoint)
        # Back in the supercluster: the second region finds the first region's sandboxes again (its
        # server may take a moment to catch up with the JetStream metadata after its restart).
        found = eventually_sync(
            lambda: Sandbox.get_info(elsewhere.id, **through(second)), timeout=60, interval=1, retry_on=(NotFoundError,)
        )
        assert found.region == first.region
    finally:
        elsewhere.kill()
        elsewhere.close()


@pytest.fixture(scope="module")
def regions(two_regions: Any) -> Iterator[tuple[Any, Any, str, str]]:
    first, second = two_regions.first, two_regions.second
    yield first, second, region_of(first), region_of(second)


@pytest.fixture
def made() -> Iterator[list[Sandbox]]:
    """Sandboxes a test creates, killed at its end through the gateway that made them."""
    sandboxes: list[Sandbox] = []
    yield sandboxes
    for sandbox in sandboxes:
        try:
            sandbox.kill()
        except Exception:
            pass
        finally:
            sandbox.close()


def test_a_sandbox_created_in_one_region_through_the_others_gateway_runs_there_and_is_reached_from_both(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    name = f"far-{uuid.uuid4().hex[:8]}"
    sandbox = Sandbox.create(name=name, region=first_region, **through(second))
    made.append(sandbox)
    assert sandbox.get_info().region == first_region

    # Commands and files through the gateway of the region that does not hold it.
    result = sandbox.commands.run("echo $((6 * 7)) > /tmp/answer && hostname")
    assert result.exit_code == 0
    sandbox.files.write("/tmp/from-second", b"written through the second region")
    assert sandbox.files.read("/tmp/answer").strip() == "42"

    # The same sandbox by name through the gateway of the region that holds it, and through the
    # other one too: the name index, not only the id. (Closing a connection does not kill.)
    for stack in (first, second):
        again = Sandbox.connect(name, **through(stack))
        try:
            assert again.id == sandbox.id
            assert again.files.read("/tmp/from-second") == "written through the second region"
            assert again.commands.run("cat /tmp/answer").stdout.strip() == "42"
        finally:
            again.close()


def test_a_create_naming_no_region_stays_in_the_region_called_while_it_has_room(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    here = Sandbox.create(**through(second))
    made.append(here)
    assert here.get_info().region == second_region


def test_a_create_that_fits_no_node_of_the_region_called_goes_to_the_next_region(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    # A sandbox holding all but 256 MiB of the first region's node (a limit, not memory in use).
    (node,) = Nodes.list(**through(first))
    filler = Sandbox.create(memory_mb=node.memory_mb_free - 256, region=first_region, **through(first))
    made.append(filler)
    eventually_sync(lambda: Nodes.list(**through(first))[0].memory_mb_free <= 256, timeout=15, interval=0.2)

    spilled = Sandbox.create(memory_mb=512, **through(first))
    made.append(spilled)
    info = spilled.get_info()
    assert (info.region, info.memory_mb) == (second_region, 512)
    assert spilled.commands.run("true").exit_code == 0
    # Naming the full region keeps the create there: its scheduler refuses it for lack of room.
    with pytest.raises(ResourceExhaustedError):
        made.append(Sandbox.create(memory_mb=512, region=first_region, **through(first)))


def test_a_region_the_installation_does_not_have_is_refused_by_name(regions: tuple[Any, Any, str, str]) -> None:
    first, _, first_region, second_region = regions
    with pytest.raises(InvalidArgumentError) as refused:
        Sandbox.create(region="mars-1", **through(first))
    assert "mars-1" in str(refused.value) and second_region in str(refused.value)


def add_key(stack: LocalStack, tenant: str, key: str) -> subprocess.CompletedProcess[str]:
    """`hutch-gateway admin add-key TENANT` in `stack`'s region, the key on standard input."""
    script = installed_script(service("gateway"))
    assert script is not None
    return subprocess.run(
        [str(script), "admin", "add-key", tenant],
        input=key + "\n",
        env=stack.service_env("gateway"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_another_tenant_with_a_key_in_both_regions_reaches_none_of_this_tenants_sandboxes(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    mine = Sandbox.create(name=f"mine-{uuid.uuid4().hex[:6]}", region=first_region, **through(first))
    made.append(mine)
    tenant = f"other-{uuid.uuid4().hex[:6]}"
    key = first.create_tenant(tenant)
    assert add_key(second, tenant, "not-a-key").returncode != 0
    added = add_key(second, tenant, key)
    assert added.returncode == 0, added.stderr
    theirs = {"endpoint": second.endpoint, "api_key": key}

    # The key works in the second region now, for a sandbox of its own tenant in the first region...
    own = Sandbox.create(region=first_region, **theirs)
    made.append(own)
    assert Sandbox.get_info(own.id, **theirs).region == first_region
    # ...and reaches nothing of the dev tenant's, by id or by name, through either region.
    for where in (theirs, {"endpoint": first.endpoint, "api_key": key}):
        for ref in (mine.id, mine.name or ""):
            with pytest.raises(NotFoundError):
                Sandbox.get_info(ref, **where)


def test_a_list_of_every_region_pages_through_both_regions_newest_first(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    label = {"list-test": uuid.uuid4().hex[:8]}
    for region in (first_region, second_region, first_region):
        made.append(Sandbox.create(metadata=label, region=region, **through(second)))
    newest_first = [s.id for s in reversed(made)]

    assert [s.id for s in Sandbox.list(metadata=label, **through(first))] == [made[2].id, made[0].id]
    everywhere = Sandbox.list(metadata=label, all_regions=True, **through(first))
    assert [s.id for s in everywhere] == newest_first
    assert [s.region for s in everywhere] == [first_region, second_region, first_region]

    # One sandbox a page: each page's token goes on in both regions.
    channel = grpc.insecure_channel(first.endpoint)
    try:
        stub = sandbox_pb2_grpc.SandboxesStub(channel)
        request = sandbox_pb2.ListSandboxesRequest(metadata=label, page_size=1, all_regions=True)
        paged: list[str] = []
        while True:
            response = stub.List(request, metadata=(("authorization", f"Bearer {first.api_key}"),), timeout=30)
            paged.extend(s.id for s in response.sandboxes)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        assert paged == newest_first
    finally:
        channel.close()

    # The command line shows where each runs.
    hutch = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert hutch, "the hutch console script is not installed"
    listed = subprocess.run(
        [hutch, "sandbox", "list", "--all-regions", "-m", f"list-test={label['list-test']}"],
        env={**first.env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    table = [[cell.strip() for cell in re.split("[│┃]", line)[1:-1]] for line in listed.stdout.splitlines()]
    header = next(cells for cells in table if "ID" in cells)
    rows = {cells[0]: cells for cells in table if cells and cells[0].startswith("sb-")}
    assert set(rows) == set(newest_first)
    region = header.index("REGION")
    assert [rows[s.id][region] for s in made] == [first_region, second_region, first_region]


def test_a_sandbox_no_region_holds_is_not_found(regions: tuple[Any, Any, str, str]) -> None:
    _, second, _, _ = regions
    with pytest.raises(NotFoundError):
        Sandbox.connect(f"nowhere-{uuid.uuid4().hex[:8]}", **through(second))


def test_a_snapshot_taken_in_one_region_is_copied_to_the_other_and_restored_there(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    source = Sandbox.create(region=first_region, **through(first))
    made.append(source)
    payload = uuid.uuid4().hex
    source.files.write("/home/payload.txt", payload.encode())
    taken = source.snapshot(name=f"travel-{payload[:8]}")
    assert taken.region == first_region

    # Not in the second region until copied there.
    with pytest.raises(NotFoundError, match="copied here first"):
        Sandbox.create(snapshot=taken.id, region=second_region, **through(second))

    # Asked of the first region's gateway; the second region pulls the bytes.
    copied = Snapshot.copy(taken.id, second_region, **through(first))
    assert (copied.id, copied.name, copied.region) == (taken.id, taken.name, second_region)
    assert copied.size_bytes == taken.size_bytes
    # Again: nothing to do, the same snapshot.
    assert Snapshot.copy(taken.name or "", second_region, **through(second), from_region=first_region).id == taken.id
    assert Snapshot.get(taken.id, **through(second)).region == second_region

    restored = Sandbox.create(snapshot=taken.id, region=second_region, **through(second))
    made.append(restored)
    assert restored.get_info().region == second_region
    assert restored.files.read("/home/payload.txt") == payload


COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"


def count(sandbox: Sandbox) -> int:
    text = sandbox.commands.run("cat /tmp/count 2>/dev/null || echo 0").stdout.strip()
    return int(text or 0)


def test_a_gvisor_sandboxs_running_processes_go_on_in_the_other_region(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    source = Sandbox.create(isolation="gvisor", memory_mb=256, region=first_region, **through(first))
    made.append(source)
    source.commands.run(COUNTER, background=True)
    # Far enough that a counter started afresh could not pass for the one carried over.
    before = eventually_sync(lambda: (value := count(source)) > 20 and value, timeout=60, interval=0.5)
    taken = source.snapshot()
    assert taken.kind == "memory"

    Snapshot.copy(taken.id, second_region, **through(first))
    there = Sandbox.create(snapshot=taken.id, region=second_region, **through(second))
    made.append(there)
    assert (there.get_info().region, there.get_info().isolation) == (second_region, "gvisor")
    # The counter goes on from where the snapshot caught it: the same process, not a new one.
    resumed = eventually_sync(lambda: (value := count(there)) > 0 and value, timeout=30, interval=0.2)
    assert resumed >= before
    eventually_sync(lambda: count(there) > resumed + 3, timeout=30, interval=0.2)


def test_copies_of_an_unknown_snapshot_or_between_unknown_or_equal_regions_are_refused(
    regions: tuple[Any, Any, str, str],
) -> None:
    first, _, first_region, second_region = regions
    with pytest.raises(NotFoundError):
        Snapshot.copy(f"snap-missing{uuid.uuid4().hex[:6]}", second_region, **through(first))
    with pytest.raises(InvalidArgumentError, match="mars-1"):
        Snapshot.copy("snap-any", "mars-1", **through(first))
    with pytest.raises(InvalidArgumentError, match="name the region it is in"):
        Snapshot.copy("snap-any", first_region, **through(first))


def test_when_one_regions_nats_server_dies_the_other_keeps_serving_and_it_recovers_on_return(
    two_regions: Any, regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, second_region = regions
    own = Sandbox.create(region=first_region, **through(first))
    made.append(own)
    theirs = Sandbox.create(region=second_region, **through(second))
    made.append(theirs)
    second.kill("nats")
    try:
        # The first region serves its own sandboxes, old and new, with the second's bus gone.
        assert own.commands.run("echo still here").stdout.strip() == "still here"
        fresh = Sandbox.create(region=first_region, **through(first))
        made.append(fresh)
        assert fresh.commands.run("true").exit_code == 0
        # The second region's running sandboxes are still served by its gateway (the data plane
        # needs no bus); looked up from the first region, the answer says who did not answer.
        assert theirs.commands.run("echo here too").stdout.strip() == "here too"
        with pytest.raises(NotFoundError, match=f"{second_region} did not answer"):
            Sandbox.connect(theirs.id, **through(first))
    finally:
        second.restart("nats")

    # The second region's services reconnect by themselves and place sandboxes again.
    def second_region_creates() -> Sandbox:
        return Sandbox.create(region=second_region, request_timeout=60, **through(second))

    back = eventually_sync(second_region_creates, timeout=120, interval=2)
    made.append(back)
    assert back.get_info().region == second_region
    assert back.commands.run("echo back").stdout.strip() == "back"


def test_each_regions_bill_holds_both_regions_usage_exactly_once(
    regions: tuple[Any, Any, str, str],
) -> None:
    first, second, first_region, second_region = regions
    start = datetime.now(UTC) - timedelta(minutes=1)
    lifetimes: dict[str, float] = {}
    for stack in (first, second):
        began = time.monotonic()
        sandbox = Sandbox.create(region=region_of(stack), **through(stack))
        try:
            sandbox.commands.run("timeout 3 sh -c 'while :; do :; done' || true")
        finally:
            sandbox.kill()
            lifetimes[sandbox.id] = time.monotonic() - began
            sandbox.close()
    end = datetime.now(UTC) + timedelta(minutes=1)

    def running_seconds(stack: Any, sandbox_id: str) -> float:
        summary = Usage.query(start=start, end=end, sandbox=sandbox_id, **through(stack))
        return summary.total.running_seconds

    def settled() -> dict[str, tuple[float, float]]:
        seen = {s: (running_seconds(first, s), running_seconds(second, s)) for s in lifetimes}
        assert all(a > 0 and a == b for a, b in seen.values()), seen
        return seen

    seen = eventually_sync(settled, timeout=90, interval=2)
    for sandbox_id, (in_first, _) in seen.items():
        # Once, not twice: no more running time than the sandbox lived, and most of it.
        assert 0.5 * lifetimes[sandbox_id] <= in_first <= lifetimes[sandbox_id] + 2, (sandbox_id, in_first)


def spans_of_trace(stack: Any, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace that a region's services exported to its traces file."""
    path = stack.home / "local" / "logs" / "traces.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            span = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if span["context"]["trace_id"] == trace_id:
            found.append(span)
    return found


def test_one_trace_follows_a_create_from_one_regions_gateway_into_the_other_region(
    regions: tuple[Any, Any, str, str], made: list[Sandbox]
) -> None:
    first, second, first_region, _ = regions
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        sandbox = Sandbox.create(region=first_region, **through(second))
    made.append(sandbox)
    trace_id = f"0x{caller.get_span_context().trace_id:032x}"

    def both_regions_traced() -> tuple[set[str], set[str]]:
        near = {s["resource"]["attributes"]["service.name"] for s in spans_of_trace(second, trace_id)}
        far = {s["resource"]["attributes"]["service.name"] for s in spans_of_trace(first, trace_id)}
        assert "gateway" in near and {"gateway", "scheduler", "node-agent"} <= far, (near, far)
        return near, far

    near, far = eventually_sync(both_regions_traced, timeout=30, interval=0.5)
    assert len(near | far) >= 3
