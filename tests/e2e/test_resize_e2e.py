"""Live resizing and the fleet view through the whole stack: the SDK and the `hutch` command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import InvalidArgumentError, Nodes, NotFoundError, ResourceExhaustedError, Sandbox, SandboxError

pytestmark = pytest.mark.e2e


def hutch(local_stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert executable, "the hutch console script is not installed"
    return subprocess.run(
        [executable, *args], env=local_stack.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180
    )


def ok(local_stack: Any, *args: str) -> str:
    result = hutch(local_stack, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def boxes(local_stack: Any) -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for box in made:
        try:
            Sandbox.kill(box.id, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
        except (NotFoundError, SandboxError):
            pass
        box.close()


def create(local_stack: Any, boxes: list[Sandbox], **kwargs: Any) -> Sandbox:
    box = Sandbox.create(api_key=local_stack.api_key, endpoint=local_stack.endpoint, **kwargs)
    boxes.append(box)
    return box


# Holds N MiB in one Python process until killed; prints "ready" once every page is touched.
HOLD = (
    "python3 -c \"import time; b=bytearray({mb}*2**20); b[::4096]=b'x'*len(b[::4096]); "
    "print('ready', flush=True); time.sleep(600)\""
)


@pytest.mark.parametrize("isolation", ["container", "gvisor"])
def test_a_running_sandbox_grows_and_shrinks_in_place(local_stack: Any, boxes: list[Sandbox], isolation: str) -> None:
    box = create(local_stack, boxes, isolation=isolation, cpu=0.5, memory_mb=256)
    box.files.write("/root/state", "kept")

    info = box.resize(memory_mb=768, cpu=1)
    assert (info.cpu, info.memory_mb, info.state) == (1.0, 768, "running")
    assert Sandbox.get_info(box.id, api_key=local_stack.api_key, endpoint=local_stack.endpoint).memory_mb == 768
    # 400 MiB held by one process: far beyond the 256 MiB it started with.
    held = box.commands.run(HOLD.format(mb=400), background=True)
    deadline = 60
    while "ready" not in held.stdout and deadline:
        time.sleep(0.5)
        deadline -= 1
    assert "ready" in held.stdout, held.stdout
    assert box.commands.run("cat /root/state").stdout == "kept"

    # Below what is in use: refused, naming it; nothing changes.
    with pytest.raises(SandboxError, match=r"uses \d+ MB of memory now"):
        box.resize(memory_mb=256)
    assert box.get_info().memory_mb == 768
    held.kill()

    info = box.resize(cpu=0.25)
    assert (info.cpu, info.memory_mb) == (0.25, 768)


def test_refusals(local_stack: Any, boxes: list[Sandbox]) -> None:
    box = create(local_stack, boxes, isolation="container", memory_mb=128)
    with pytest.raises(InvalidArgumentError, match="memory_mb must be between"):
        box.resize(memory_mb=10)
    with pytest.raises(InvalidArgumentError):
        box.resize()
    node = next(
        n for n in Nodes.list(api_key=local_stack.api_key, endpoint=local_stack.endpoint) if box.id in n.own_sandbox_ids
    )
    too_much = 128 + node.memory_mb_free + 64
    if too_much <= 65536:
        with pytest.raises(ResourceExhaustedError, match="MB free"):
            box.resize(memory_mb=too_much)
    assert box.get_info().memory_mb == 128
    box.kill()
    with pytest.raises(SandboxError, match="not running"):
        box.resize(memory_mb=256)


def test_a_resized_sandbox_keeps_its_size_across_pause_and_resume(local_stack: Any, boxes: list[Sandbox]) -> None:
    box = create(local_stack, boxes, isolation="container", cpu=0.5, memory_mb=128)
    box.resize(cpu=1.5, memory_mb=320)
    paused = Sandbox.pause(box.id, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    assert (paused.state, paused.memory_mb) == ("paused", 320)
    resumed = Sandbox.resume(box.id, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    assert (resumed.state, resumed.cpu, resumed.memory_mb) == ("running", 1.5, 320)
    # The node that runs it again holds the new size.
    node = next(
        n for n in Nodes.list(api_key=local_stack.api_key, endpoint=local_stack.endpoint) if box.id in n.own_sandbox_ids
    )
    assert node.memory_mb_allocated >= 320


def test_resize_nodes_and_list_from_the_command_line(local_stack: Any, boxes: list[Sandbox]) -> None:
    tag = uuid.uuid4().hex[:8]
    box = create(local_stack, boxes, isolation="container", memory_mb=128, metadata={"suite": tag})
    before = {n["id"]: n for n in json.loads(ok(local_stack, "nodes", "--json"))}

    info = json.loads(ok(local_stack, "sandbox", "resize", box.id, "--cpu", "2", "--memory-mb", "384", "--json"))
    assert (info["cpu"], info["memory_mb"]) == (2.0, 384)
    assert ok(local_stack, "sandbox", "resize", box.id, "--memory-mb", "256").split() == [
        box.id,
        "2",
        "vCPU",
        "256",
        "MiB",
    ]
    failed = hutch(local_stack, "sandbox", "resize", box.id)
    assert failed.returncode == 2 and "--cpu" in failed.stderr

    nodes = json.loads(ok(local_stack, "nodes", "--json"))
    mine = [n for n in nodes if box.id in n["own_sandbox_ids"]]
    assert len(mine) == 1
    node = mine[0]
    assert node["alive"] and "container" in node["isolation_classes"]
    assert node["memory_mb_free"] == node["memory_mb_total"] - node["memory_mb_allocated"]
    # The heartbeat follows the resize (other sandboxes may come and go meanwhile, so only roughly).
    assert node["memory_mb_allocated"] >= 256 and node["cpu_allocated"] >= 2
    assert node["id"] in before
    table = ok(local_stack, "nodes")
    assert node["id"] in table and "HEARTBEAT" in table

    listed = json.loads(ok(local_stack, "sandbox", "list", "--metadata", f"suite={tag}", "--json"))
    assert [(s["id"], s["memory_mb"], s["cpu"]) for s in listed] == [(box.id, 256, 2.0)]
    table = ok(local_stack, "sandbox", "list", "--metadata", f"suite={tag}")
    for column in ("STATE", "NODE", "CLASS", "CPU", "MEMORY", "UP"):
        assert column in table
    assert box.id in table and node["id"] in table and "256 MiB" in table
    assert json.loads(ok(local_stack, "sandbox", "list", "--metadata", f"suite=other-{tag}", "--json")) == []
