"""Snapshots, pauses, resumes and forks through the SDK against the whole local stack.

Both isolation classes: a container's snapshot holds its files, a gVisor sandbox's also its memory
and processes, so a counter that runs in a gVisor sandbox goes on after a pause, a resume or a fork.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest

from hutch import InvalidArgumentError, NotFoundError, Sandbox, SandboxError, SandboxState, Snapshot
from hutch.core.bus import nodes_bucket
from hutch.events.v1 import node_pb2
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e

# Counts in its own memory and writes each value out: a fresh start would count from 1 again.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture
def make_sandbox(connection: dict[str, str]) -> Iterator[Callable[..., Sandbox]]:
    """Creates sandboxes for the test and kills them (and any forks they made) when it ends."""
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox.create(memory_mb=kwargs.pop("memory_mb", 256), **kwargs, **connection)
        made.append(box)
        return box

    make.made = made  # type: ignore[attr-defined]
    yield make
    for box in made:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _count(box: Sandbox) -> int:
    text = box.commands.run("cat /tmp/count 2>/dev/null || echo 0").stdout.strip()
    return int(text or 0)


def _counting_past(box: Sandbox, floor: int) -> int:
    """Waits until the sandbox's counter is above `floor`; returns the value seen."""
    return eventually_sync(lambda: (value := _count(box)) > floor and value, timeout=30)


def _allocated_memory_mb(local_stack: Any) -> int:
    """What the local node reports it holds for its sandboxes, from its heartbeat."""

    async def read() -> int:
        client = await nats.connect(local_stack.nats_url)
        try:
            bucket = await client.jetstream().key_value(nodes_bucket("local"))
            beat = node_pb2.NodeHeartbeat()
            beat.ParseFromString((await bucket.get("local-1")).value or b"")
            return beat.memory_mb_allocated
        finally:
            await client.close()

    return asyncio.run(read())


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_a_sandbox_made_from_a_snapshot_has_the_files_byte_for_byte(
    make_sandbox: Callable[..., Sandbox], connection: dict[str, str], isolation: str
) -> None:
    source = make_sandbox(isolation=isolation, envs={"FROM_SOURCE": "yes"})
    blob = os.urandom(3 * 1024 * 1024 + 17)
    source.files.write("/root/data/blob.bin", blob)
    source.files.write("/root/data/notes.txt", "before the snapshot\n")
    source.commands.run("chmod 0751 /root/data/notes.txt && ln -s blob.bin /root/data/link")
    name = f"e2e-{uuid.uuid4().hex[:8]}"

    snap = source.snapshot(name=name, labels={"suite": "e2e-snapshots"})
    assert (snap.name, snap.sandbox_id, snap.purpose, snap.template) == (name, source.id, "user", "base")
    assert snap.kind == ("memory" if isolation == "gvisor" else "filesystem") and snap.isolation == isolation
    assert snap.labels == {"suite": "e2e-snapshots"} and snap.size_bytes >= len(blob)
    assert snap.id in {s.id for s in Snapshot.list(sandbox=source.id, **connection)}

    source.files.write("/root/data/blob.bin", b"changed after the snapshot")
    source.files.remove("/root/data/notes.txt")
    if isolation == "gvisor":  # its processes cannot run outside gVisor
        with pytest.raises(SandboxError, match="only start under isolation 'gvisor'"):
            Sandbox.create(snapshot=name, isolation="container", **connection)
    else:
        with pytest.raises(InvalidArgumentError, match="leave isolation empty"):
            Sandbox.create(snapshot=name, isolation="gvisor", **connection)
    with pytest.raises(InvalidArgumentError, match="leave template empty"):
        Sandbox.create(snapshot=name, template="other", **connection)
    copy = make_sandbox(snapshot=name)  # by name; template, class and resources come from the snapshot
    info = copy.get_info()
    assert (info.isolation, info.memory_mb, info.source_snapshot) == (isolation, 256, snap.id)
    assert _sha256(copy.files.read("/root/data/blob.bin", format="bytes")) == _sha256(blob)
    assert copy.files.read("/root/data/notes.txt") == "before the snapshot\n"
    assert copy.files.get_info("/root/data/notes.txt").mode & 0o777 == 0o751
    assert copy.files.get_info("/root/data/link").symlink_target == "blob.bin"
    assert copy.commands.run("echo $FROM_SOURCE").stdout.strip() == "yes"
    assert source.files.read("/root/data/blob.bin", format="bytes") == b"changed after the snapshot"

    Snapshot.delete(snap.id, **connection)
    with pytest.raises(NotFoundError):
        Snapshot.get(snap.id, **connection)
    assert copy.files.read("/root/data/notes.txt") == "before the snapshot\n"  # made from it, not tied to it


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_a_paused_sandbox_frees_its_node_and_resumes_as_it_was(
    make_sandbox: Callable[..., Sandbox], local_stack: Any, connection: dict[str, str], isolation: str
) -> None:
    box = make_sandbox(isolation=isolation, memory_mb=384, timeout=3600)
    box.files.write("/root/state.txt", "kept across the pause")
    if isolation == "gvisor":
        box.commands.run(COUNTER, background=True)
        before = _counting_past(box, 3)
    held = _allocated_memory_mb(local_stack)

    paused = box.pause()
    assert paused.state is SandboxState.PAUSED and paused.paused_snapshot
    assert paused.expires_at is None  # paused time does not count against the timeout
    assert box.pause().state is SandboxState.PAUSED  # pausing again changes nothing
    eventually_sync(lambda: _allocated_memory_mb(local_stack) <= held - 384, timeout=30)
    with pytest.raises(SandboxError, match="paused: resume it"):
        box.commands.run("true")
    assert box.id in {s.id for s in Sandbox.list(**connection)}  # a paused sandbox is still a live one
    with pytest.raises(SandboxError, match="paused sandbox"):
        Snapshot.delete(paused.paused_snapshot, **connection)  # even while it is still being stored
    eventually_sync(
        lambda: (
            [s.id for s in Snapshot.list(sandbox=box.id, purposes=["pause"], **connection)] == [paused.paused_snapshot]
        ),
        timeout=60,
    )
    with pytest.raises(SandboxError, match="paused sandbox"):
        Snapshot.delete(paused.paused_snapshot, **connection)

    resumed = Sandbox.connect(box.id, **connection)  # connecting resumes it
    try:
        info = resumed.get_info()
        assert info.state is SandboxState.RUNNING and info.paused_snapshot is None and info.expires_at is not None
        assert box.resume().state is SandboxState.RUNNING  # resuming a running sandbox changes nothing
        assert box.files.read("/root/state.txt") == "kept across the pause"
        if isolation == "gvisor":
            after = _count(box)
            assert after >= before  # the same process, counting on from where it was
            _counting_past(box, after)
    finally:
        resumed.close()


def test_gvisor_forks_carry_on_the_parents_processes_and_then_go_their_own_ways(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    parent = make_sandbox(isolation="gvisor")
    parent.commands.run(COUNTER, background=True)
    seen = _counting_past(parent, 3)
    children = parent.fork(count=2, metadata={"role": "child"})
    make_sandbox.made.extend(children)  # type: ignore[attr-defined]
    assert len(children) == 2
    for index, child in enumerate(children):
        assert _count(child) >= seen  # the counter went on in each child, not from 1
        child.files.write("/root/mine.txt", f"child {index}")
    for index, child in enumerate(children):
        assert child.files.read("/root/mine.txt") == f"child {index}"
        _counting_past(child, _count(child))
    assert not parent.files.exists("/root/mine.txt")


def test_ten_forks_share_the_parents_files_and_nothing_with_each_other(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    parent = make_sandbox(isolation="container", memory_mb=128, metadata={"team": "e2e"})
    parent.files.write("/root/shared.txt", "from the parent")
    batch = uuid.uuid4().hex[:8]
    children = parent.fork(count=10, metadata={"batch": batch})
    make_sandbox.made.extend(children)  # type: ignore[attr-defined]
    assert len({child.id for child in children}) == 10
    for child in children:
        info = child.get_info()
        assert info.state is SandboxState.RUNNING and info.forked_from == parent.id and info.name is None
        assert info.metadata == {"team": "e2e", "batch": batch} and info.memory_mb == 128
        assert child.files.read("/root/shared.txt") == "from the parent"
        child.files.write("/root/who.txt", child.id)
    sources = {child.get_info().source_snapshot for child in children}
    assert len(sources) == 1 and None not in sources  # all from the one fork snapshot
    for child in children:
        assert child.files.read("/root/who.txt") == child.id
    assert not parent.files.exists("/root/who.txt")


def test_killing_a_paused_sandbox_needs_no_node_and_takes_its_snapshot(
    make_sandbox: Callable[..., Sandbox], connection: dict[str, str]
) -> None:
    box = make_sandbox(isolation="container")
    snapshot_id = box.pause().paused_snapshot
    assert snapshot_id
    killed = box.kill()
    assert killed.state is SandboxState.KILLED and killed.state_reason == "killed on request"
    with pytest.raises(SandboxError, match="cannot be resumed"):
        box.resume()

    def deleted() -> bool:
        try:
            Snapshot.get(snapshot_id, **connection)
        except NotFoundError:
            return True
        return False

    eventually_sync(deleted, timeout=30)


def test_unknown_and_other_tenants_snapshots_are_not_found(
    make_sandbox: Callable[..., Sandbox], local_stack: Any, connection: dict[str, str]
) -> None:
    with pytest.raises(NotFoundError):
        Sandbox.create(snapshot="snap-aaaaaaaaaaaaaaaaaaaa", **connection)
    source = make_sandbox(isolation="container")
    snap = source.snapshot()
    other = {"api_key": local_stack.create_tenant(f"snap-b-{uuid.uuid4().hex[:6]}"), "endpoint": local_stack.endpoint}
    with pytest.raises(NotFoundError):
        Sandbox.create(snapshot=snap.id, **other)
    with pytest.raises(NotFoundError):
        Snapshot.get(snap.id, **other)
    with pytest.raises(NotFoundError):
        Snapshot.delete(snap.id, **other)
    assert snap.id not in {s.id for s in Snapshot.list(**other)}
    Snapshot.delete(snap.id, **connection)
