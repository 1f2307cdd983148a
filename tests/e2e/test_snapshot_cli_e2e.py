"""`hutch snapshot` and `hutch sandbox pause|resume|fork|create --snapshot`, run as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import NotFoundError, Sandbox, SandboxError

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
    assert result.stderr == ""  # no progress display when stderr is not a terminal
    return result.stdout


@pytest.fixture
def sandbox_ids(local_stack: Any) -> Iterator[list[str]]:
    """Ids of sandboxes the test made; all killed when it ends."""
    made: list[str] = []
    yield made
    for sandbox_id in made:
        try:
            Sandbox.kill(sandbox_id, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
        except (NotFoundError, SandboxError):
            pass


def test_snapshots_pauses_and_forks_from_the_command_line(local_stack: Any, sandbox_ids: list[str]) -> None:
    box = Sandbox.create(
        isolation="container", memory_mb=128, api_key=local_stack.api_key, endpoint=local_stack.endpoint
    )
    sandbox_ids.append(box.id)
    box.files.write("/root/hello.txt", "hello from the cli test")
    box.close()
    name = f"cli-{uuid.uuid4().hex[:8]}"

    snap = json.loads(ok(local_stack, "snapshot", "create", box.id, "--name", name, "--label", "via=cli", "--json"))
    assert (snap["name"], snap["sandbox_id"], snap["labels"], snap["kind"]) == (
        name,
        box.id,
        {"via": "cli"},
        "filesystem",
    )
    listed = json.loads(ok(local_stack, "snapshot", "list", "--sandbox", box.id, "--json"))
    assert [s["id"] for s in listed] == [snap["id"]]
    assert snap["id"] in ok(local_stack, "snapshot", "get", name)

    copy = json.loads(ok(local_stack, "sandbox", "create", "--snapshot", name, "--json"))
    sandbox_ids.append(copy["id"])
    assert (copy["state"], copy["source_snapshot"], copy["memory_mb"]) == ("running", snap["id"], 128)

    assert ok(local_stack, "sandbox", "pause", box.id).strip() == box.id
    assert json.loads(ok(local_stack, "sandbox", "get", box.id, "--json"))["state"] == "paused"
    assert ok(local_stack, "sandbox", "resume", box.id).strip() == box.id

    children = json.loads(ok(local_stack, "sandbox", "fork", box.id, "--count", "2", "--json"))
    sandbox_ids.extend(child["id"] for child in children)
    assert [child["forked_from"] for child in children] == [box.id, box.id]

    assert ok(local_stack, "snapshot", "delete", name).strip() == name
    again = hutch(local_stack, "snapshot", "delete", name)
    assert again.returncode == 1 and again.stderr.startswith("error: ")
    usage = json.loads(ok(local_stack, "snapshot", "usage", "--json"))
    assert set(usage) == {"snapshots", "logical_bytes", "stored_bytes", "cached_bytes"}
