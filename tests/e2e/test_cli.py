"""The `hutch` command against the whole local stack, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
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

MiB = 1024 * 1024


def _executable() -> str:
    # The console script next to this interpreter, so the test runs the hutch this checkout installed.
    found = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert found, "the hutch console script is not installed"
    return found


def hutch(
    local_stack: Any, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs `hutch ARGS...` against the local stack; stdin is /dev/null unless data is given."""
    return subprocess.run(
        [_executable(), *args],
        env=env if env is not None else local_stack.env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=180,
    )


def _kill_quietly(sandbox_id: str, local_stack: Any) -> None:
    try:
        Sandbox.kill(sandbox_id, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    except (NotFoundError, SandboxError):
        pass


@pytest.fixture(scope="module")
def sandbox_id(local_stack: Any) -> Iterator[str]:
    """A sandbox for the exec and files tests, made through the SDK and killed afterwards."""
    box = Sandbox.create(metadata={"suite": "e2e-cli"}, api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    box.close()
    try:
        yield box.id
    finally:
        _kill_quietly(box.id, local_stack)


def test_help_lists_commands_and_exit_statuses(local_stack: Any) -> None:
    ran = hutch(local_stack, "--help")
    assert ran.returncode == 0
    for word in (b"sandbox", b"exec", b"shell", b"ps", b"attach", b"kill-process", b"preview", b"files", b"local"):
        assert word in ran.stdout
    for word in (b"Exit status",):
        assert word in ran.stdout


def test_sandbox_lifecycle(local_stack: Any) -> None:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    created = hutch(
        local_stack,
        *("sandbox", "create", "--name", name, "--metadata", f"run={name}", "-m", "team=cli"),
        *("-e", "GREETING=hi", "--cpu", "0.5"),
    )
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.decode().strip()
    try:
        assert sandbox_id.startswith("sb-")

        got = json.loads(hutch(local_stack, "sandbox", "get", name, "--json").stdout)
        assert (got["id"], got["name"], got["state"], got["cpu"]) == (sandbox_id, name, "running", 0.5)
        assert got["metadata"] == {"run": name, "team": "cli"}
        described = hutch(local_stack, "sandbox", "get", sandbox_id)
        assert described.returncode == 0
        assert b"running" in described.stdout and name.encode() in described.stdout
        assert hutch(local_stack, "exec", name, "--", "echo $GREETING").stdout == b"hi\n"

        listed = json.loads(hutch(local_stack, "sandbox", "list", "--metadata", f"run={name}", "--json").stdout)
        assert [entry["id"] for entry in listed] == [sandbox_id]
        table = hutch(local_stack, "sandbox", "list").stdout
        assert sandbox_id.encode() in table and name.encode() in table

        killed = hutch(local_stack, "sandbox", "kill", sandbox_id)
        assert (killed.returncode, killed.stdout.decode().strip()) == (0, sandbox_id)
        # One error line per sandbox that could not be killed; it goes on past the first.
        again = hutch(local_stack, "sandbox", "kill", sandbox_id, "sb-doesnotexist")
        assert again.returncode == 1
        lines = again.stderr.decode().splitlines()
        assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
        assert "already killed" in lines[0] and "sb-doesnotexist" in lines[1]
        assert b"Traceback" not in again.stderr
        all_states = json.loads(hutch(local_stack, "sandbox", "list", "--all", "--json").stdout)
        assert {entry["id"]: entry["state"] for entry in all_states}[sandbox_id] == "killed"
    finally:
        _kill_quietly(sandbox_id, local_stack)


def test_errors_are_one_clean_line(local_stack: Any) -> None:
    missing = hutch(local_stack, "sandbox", "get", "sb-nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"error: get sandbox sb-nope:")
    assert missing.stderr.count(b"\n") == 1
    assert b"Traceback" not in missing.stderr


def test_exec_output_and_exit_status(local_stack: Any, sandbox_id: str) -> None:
    ran = hutch(local_stack, "exec", sandbox_id, "--", "echo", "hello")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"hello\n", b"")
    assert hutch(local_stack, "exec", sandbox_id, "--", "sh", "-c", "exit 7").returncode == 7
    streams = hutch(local_stack, "exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 1")
    assert (streams.returncode, streams.stdout, streams.stderr) == (1, b"out\n", b"err\n"), streams.stderr
    assert hutch(local_stack, "exec", sandbox_id, "--", "echo $((6 * 7)) | cat").stdout == b"42\n"


def test_exec_options(local_stack: Any, sandbox_id: str) -> None:
    options = ["--cwd", "/tmp", "--user", "nobody", "--env", "GREETING=hi"]
    ran = hutch(local_stack, "exec", *options, sandbox_id, "--", "sh", "-c", "pwd; id -un; echo $GREETING")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().split() == ["/tmp", "nobody", "hi"]
    short = hutch(
        local_stack, "exec", "-w", "/tmp", "-u", "nobody", "-e", "X=y", sandbox_id, "--", "echo $X; pwd; id -un"
    )
    assert (short.returncode, short.stdout.decode().split()) == (0, ["y", "/tmp", "nobody"]), short.stderr


def test_exec_passes_stdin_and_binary_output_through(local_stack: Any, sandbox_id: str) -> None:
    data = os.urandom(3 * MiB)
    ran = hutch(local_stack, "exec", sandbox_id, "--", "cat", stdin=data)
    assert ran.returncode == 0
    assert ran.stdout == data


def test_exec_timeout_and_failures(local_stack: Any, sandbox_id: str) -> None:
    timed_out = hutch(local_stack, "exec", "--timeout", "1", sandbox_id, "--", "sleep", "60")
    assert timed_out.returncode == 124
    assert timed_out.stderr.startswith(b"error: ")
    missing = hutch(local_stack, "exec", "sb-doesnotexist", "--", "true")
    assert missing.returncode == 125
    assert missing.stderr.startswith(b"error: ")
    assert b"Traceback" not in missing.stderr
    signalled = hutch(local_stack, "exec", sandbox_id, "--", "sh", "-c", "kill -9 $$")
    assert signalled.returncode == 128 + 9


def test_files(local_stack: Any, sandbox_id: str, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    data = os.urandom(3 * MiB + 7)
    local.write_bytes(data)
    directory = f"/tmp/cli-{uuid.uuid4().hex[:10]}"

    assert hutch(local_stack, "files", "mkdir", sandbox_id, directory).returncode == 0
    put = hutch(local_stack, "files", "put", sandbox_id, str(local), f"{directory}/")
    assert put.returncode == 0, put.stderr

    listing = json.loads(hutch(local_stack, "files", "ls", sandbox_id, directory, "--json").stdout)
    assert [(entry["name"], entry["size"], entry["type"]) for entry in listing] == [("payload.bin", len(data), "file")]
    assert b"payload.bin" in hutch(local_stack, "files", "ls", sandbox_id, directory).stdout

    assert hutch(local_stack, "files", "cat", sandbox_id, f"{directory}/payload.bin").stdout == data
    downloaded = tmp_path / "downloaded.bin"
    got = hutch(local_stack, "files", "get", sandbox_id, f"{directory}/payload.bin", str(downloaded))
    assert got.returncode == 0, got.stderr
    assert downloaded.read_bytes() == data
    into = tmp_path / "into"
    into.mkdir()
    assert hutch(local_stack, "files", "get", sandbox_id, f"{directory}/payload.bin", str(into)).returncode == 0
    assert [(path.name, path.read_bytes() == data) for path in into.iterdir()] == [("payload.bin", True)]

    piped = hutch(local_stack, "files", "put", sandbox_id, "-", f"{directory}/from-stdin", stdin=b"piped \x00\xff")
    assert piped.returncode == 0, piped.stderr
    assert hutch(local_stack, "files", "cat", sandbox_id, f"{directory}/from-stdin").stdout == b"piped \x00\xff"

    refused = hutch(local_stack, "files", "rm", sandbox_id, directory)
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"error: ")
    assert hutch(local_stack, "files", "rm", "-r", sandbox_id, directory).returncode == 0
    missing = hutch(local_stack, "files", "cat", sandbox_id, f"{directory}/payload.bin")
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"error: ")
    nowhere = tmp_path / "never-written.bin"
    not_got = hutch(local_stack, "files", "get", sandbox_id, f"{directory}/payload.bin", str(nowhere))
    assert not_got.returncode == 1
    assert not_got.stderr.startswith(b"error: ")
    assert not nowhere.exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith("hutch-partial")] == []


def test_wrong_api_key_exits_3(local_stack: Any) -> None:
    env = {**local_stack.env, "HUTCH_API_KEY": "hk_" + "x" * 32}
    ran = hutch(local_stack, "sandbox", "list", env=env)
    assert ran.returncode == 3
    assert ran.stderr.startswith(b"error: ")
    assert ran.stderr.count(b"\n") == 1


def test_tenant_b_cannot_reach_tenant_a(local_stack: Any, sandbox_id: str) -> None:
    env = {**local_stack.env, "HUTCH_API_KEY": local_stack.create_tenant(f"cli-b-{uuid.uuid4().hex[:8]}")}
    assert hutch(local_stack, "sandbox", "get", sandbox_id, env=env).returncode == 1
    assert hutch(local_stack, "exec", sandbox_id, "--", "true", env=env).returncode == 125
    assert hutch(local_stack, "files", "ls", sandbox_id, "/", env=env).returncode == 1
    assert hutch(local_stack, "sandbox", "kill", sandbox_id, env=env).returncode == 1
    assert hutch(local_stack, "exec", sandbox_id, "--", "true").returncode == 0
