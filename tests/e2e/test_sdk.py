"""The Python SDK against the whole local stack: sandboxes, commands, files, errors and isolation.

Every sandbox a test creates is killed by a fixture finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch import (
    AlreadyExistsError,
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    EntryInfo,
    FileType,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxError,
    SandboxInfo,
    SandboxState,
)
from hutch._config import resolve
from hutch._connection import Connection

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def _kill_quietly(sandbox: Sandbox) -> None:
    try:
        sandbox.kill()
    except (NotFoundError, SandboxError):
        pass
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the local stack."""
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module")
def sandbox(connection: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox shared by the tests that only run commands and touch files."""
    box = Sandbox.create(metadata={"suite": "e2e-sdk"}, envs={"FROM_SANDBOX": "yes"}, **connection)
    try:
        yield box
    finally:
        _kill_quietly(box)


@pytest.fixture
def make_sandbox(connection: dict[str, str]) -> Iterator[Callable[..., Sandbox]]:
    """Creates sandboxes of the test's own and kills them all when the test ends."""
    created: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox.create(**connection, **kwargs)
        created.append(box)
        return box

    yield make
    for box in created:
        _kill_quietly(box)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Commands


def test_create_and_echo(sandbox: Sandbox) -> None:
    info = sandbox.get_info()
    assert info.state == SandboxState.RUNNING
    assert info.id == sandbox.id and info.id.startswith("sb-")
    assert (info.template, info.cpu, info.memory_mb) == ("base", 1.0, 512)
    assert info.metadata == {"suite": "e2e-sdk"}
    result = sandbox.commands.run("echo hello")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hello\n", "", 0, None)


def test_non_zero_exit_raises_with_output(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as caught:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert isinstance(caught.value, SandboxError)
    assert (caught.value.exit_code, caught.value.stdout, caught.value.stderr) == (3, "partial\n", "broken\n")


def test_stderr_and_streaming_callbacks(sandbox: Sandbox) -> None:
    stdout: list[str] = []
    stderr: list[str] = []
    result = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done", on_stdout=stdout.append, on_stderr=stderr.append
    )
    assert result.stdout == "".join(stdout) == "out1\nout2\nout3\n"
    assert result.stderr == "".join(stderr) == "err1\nerr2\nerr3\n"


def test_large_output(sandbox: Sandbox) -> None:
    assert len(sandbox.commands.run("yes hutch | head -n 500000").stdout) == 500000 * len("hutch\n")


def test_environment_variables(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo $FROM_SANDBOX $FROM_RUN", envs={"FROM_RUN": "also"})
    assert result.stdout == "yes also\n"
    assert sandbox.commands.run("echo $FROM_SANDBOX", envs={"FROM_SANDBOX": "over"}).stdout == "over\n"


def test_working_directory(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("pwd").stdout == "/root\n"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_user(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("id -u").stdout == "0\n"
    nobody = sandbox.commands.run("id -un; id -u", user="nobody").stdout.split()
    assert nobody[0] == "nobody" and nobody[1] != "0"
    # uid 1000 is the base template's own unprivileged account.
    assert sandbox.commands.run("id -u", user="1000").stdout == "1000\n"


def test_argv_runs_without_a_shell(sandbox: Sandbox) -> None:
    assert sandbox.commands.run(["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"


def test_stdin(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", stdin="line one\nline two\n").stdout == "line one\nline two\n"
    data = os.urandom(3 * MiB + 5)
    digest = sandbox.commands.run("sha256sum", stdin=data).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert sandbox.commands.run("wc -c", stdin=io.BytesIO(b"12345")).stdout.strip() == "5"


def test_without_stdin_the_command_reads_end_of_file(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", timeout=10).stdout == ""


def test_timeout(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(hutch.TimeoutError):
        sandbox.commands.run("sleep 60", timeout=2)
    assert time.monotonic() - started < 30
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


async def test_async_sandbox(connection: dict[str, str]) -> None:
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    async with await AsyncSandbox.create(metadata={"suite": "e2e-sdk-async"}, **connection) as box:
        result = await box.commands.run("echo one; echo two", on_stdout=collect)
        assert result.stdout == "".join(chunks) == "one\ntwo\n"
        await box.files.write("/tmp/async.bin", b"\x00\x01\x02")
        assert await box.files.read("/tmp/async.bin", format="bytes") == b"\x00\x01\x02"
        with pytest.raises(CommandExitError):
            await box.commands.run("exit 5")
        sandbox_id = box.id
    info = await AsyncSandbox.get_info(sandbox_id, **connection)
    assert info.state == SandboxState.KILLED


async def test_cancelling_a_command_passes_cancellation_through(connection: dict[str, str]) -> None:
    async with await AsyncSandbox.create(**connection) as box:
        task = asyncio.create_task(box.commands.run("sleep 60"))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await box.commands.run("echo after")).stdout == "after\n"


# Files


def test_binary_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(6 * MiB + 123)
    info = sandbox.files.write("/tmp/blob.bin", data)
    assert (info.path, info.size, info.type) == ("/tmp/blob.bin", len(data), FileType.FILE)
    assert sandbox.files.read("/tmp/blob.bin", format="bytes") == data
    assert b"".join(sandbox.files.read("/tmp/blob.bin", format="stream")) == data
    inside = sandbox.commands.run("sha256sum /tmp/blob.bin").stdout.split()[0]
    assert inside == hashlib.sha256(data).hexdigest()


def test_text_and_file_object_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.files.write("/tmp/text.txt", "héllo ✓\n")
    assert sandbox.files.read("/tmp/text.txt") == "héllo ✓\n"
    assert sandbox.commands.run("cat /tmp/text.txt").stdout == "héllo ✓\n"
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(2 * MiB))
    with local.open("rb") as source:
        sandbox.files.write("/tmp/upload.bin", source, mode=0o600)
    assert sandbox.files.read("/tmp/upload.bin", format="bytes") == local.read_bytes()
    assert sandbox.files.get_info("/tmp/upload.bin").mode == 0o600


def test_relative_paths_start_at_root_home(sandbox: Sandbox) -> None:
    info = sandbox.files.write("relative.txt", "r")
    assert info.path == "/root/relative.txt"
    assert sandbox.commands.run("cat /root/relative.txt").stdout == "r"


def test_directory_operations(sandbox: Sandbox) -> None:
    base = f"/tmp/{_unique('dir')}"
    assert sandbox.files.make_dir(f"{base}/sub") is True
    assert sandbox.files.make_dir(f"{base}/sub") is False
    sandbox.files.write(f"{base}/sub/a.txt", "a")
    sandbox.files.write(f"{base}/b.txt", "bb")

    assert {entry.name for entry in sandbox.files.list(base)} == {"sub", "b.txt"}
    deep = {entry.path: entry for entry in sandbox.files.list(base, depth=2)}
    assert set(deep) == {f"{base}/sub", f"{base}/sub/a.txt", f"{base}/b.txt"}
    assert deep[f"{base}/sub"].type == FileType.DIR
    assert deep[f"{base}/b.txt"].size == 2

    stat = sandbox.files.get_info(f"{base}/b.txt")
    assert isinstance(stat, EntryInfo) and stat.name == "b.txt" and stat.owner == "root"
    assert stat.modified_at is not None

    moved = sandbox.files.rename(f"{base}/b.txt", f"{base}/sub/c.txt")
    assert moved.path == f"{base}/sub/c.txt"
    assert not sandbox.files.exists(f"{base}/b.txt")
    assert sandbox.files.read(f"{base}/sub/c.txt") == "bb"

    with pytest.raises(SandboxError, match="not empty"):
        sandbox.files.remove(f"{base}/sub")
    sandbox.files.remove(f"{base}/sub/c.txt")
    assert not sandbox.files.exists(f"{base}/sub/c.txt")
    sandbox.files.remove(base, recursive=True)
    assert not sandbox.files.exists(base)
    with pytest.raises(NotFoundError):
        sandbox.files.get_info(base)
    with pytest.raises(NotFoundError):
        sandbox.files.read(f"{base}/sub/a.txt")


def test_symlinks_are_described_not_followed(sandbox: Sandbox) -> None:
    sandbox.commands.run("ln -sfn /etc/hostname /root/hostname-link")
    info = sandbox.files.get_info("/root/hostname-link")
    assert (info.type, info.symlink_target) == (FileType.SYMLINK, "/etc/hostname")


# Sandboxes


def test_connect_by_name(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    name = _unique("named")
    box = make_sandbox(name=name)
    assert box.name == name
    connected = Sandbox.connect(name, **connection)
    try:
        assert connected.id == box.id
        assert connected.commands.run("echo via name").stdout == "via name\n"
    finally:
        connected.close()


def test_list_filters_by_metadata(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    run = _unique("run")
    first = make_sandbox(metadata={"run": run, "n": "1"})
    second = make_sandbox(metadata={"run": run, "n": "2"})
    assert {info.id for info in Sandbox.list(metadata={"run": run}, **connection)} == {first.id, second.id}
    assert [info.id for info in Sandbox.list(metadata={"run": run, "n": "1"}, **connection)] == [first.id]
    assert Sandbox.list(metadata={"run": _unique("nothing")}, **connection) == []
    running = Sandbox.list(metadata={"run": run}, states=["running"], **connection)
    assert all(isinstance(info, SandboxInfo) and info.state == "running" for info in running)


def test_kill(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    box = make_sandbox(metadata={"suite": "e2e-kill"})
    assert box.is_running()
    final = box.kill()
    assert final.state == SandboxState.KILLED
    assert final.ended_at is not None
    assert not box.is_running()
    with pytest.raises(SandboxError):
        box.kill()
    with pytest.raises(SandboxError):
        Sandbox.kill(box.id, **connection)
    with pytest.raises(SandboxError):
        box.commands.run("echo too late")
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED
    assert box.id not in {info.id for info in Sandbox.list(**connection)}
    assert box.id in {info.id for info in Sandbox.list(states=["killed"], **connection)}


def test_kill_by_id(make_sandbox: Callable[..., Sandbox], connection: dict[str, str]) -> None:
    box = make_sandbox()
    assert Sandbox.kill(box.id, **connection).state == SandboxState.KILLED
    assert not box.is_running()


def test_context_manager_kills(connection: dict[str, str]) -> None:
    with Sandbox.create(**connection) as box:
        assert box.commands.run("echo inside").stdout == "inside\n"
    assert Sandbox.get_info(box.id, **connection).state == SandboxState.KILLED


def test_lifetime_timeout_is_recorded(make_sandbox: Callable[..., Sandbox]) -> None:
    assert make_sandbox(timeout=600, cpu=0.5, memory_mb=256).get_info().timeout == 600


# Bad input


def test_unknown_template(connection: dict[str, str]) -> None:
    with pytest.raises(NotFoundError, match="no-such-template"):
        Sandbox.create(template="no-such-template", **connection)


@pytest.mark.parametrize("arguments", [{"cpu": -1}, {"memory_mb": 10**9}, {"name": "Bad Name!"}])
def test_invalid_arguments(connection: dict[str, str], arguments: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(**arguments, **connection)


def test_duplicate_name(make_sandbox: Callable[..., Sandbox]) -> None:
    name = _unique("dup")
    make_sandbox(name=name)
    with pytest.raises(AlreadyExistsError):
        make_sandbox(name=name)


def test_wrong_api_key(local_stack: Any) -> None:
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_key="hk_" + "x" * 32, endpoint=local_stack.endpoint)
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_key="not-a-hutch-key", endpoint=local_stack.endpoint)


def test_missing_api_key(local_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUTCH_API_KEY", raising=False)
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path))
    with pytest.raises(AuthenticationError, match="hutch local up"):
        Sandbox.create(endpoint=local_stack.endpoint)


# Paths never lead out of the sandbox


def test_dot_dot_and_symlinks_stay_inside_the_sandbox(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox()
    # A fresh token in the sandbox's own /etc/shadow: reading it back proves which file was read,
    # since the host's /etc/shadow cannot contain it.
    token = uuid.uuid4().hex
    box.commands.run(f"echo {token} > /etc/shadow")
    for path in ("../../etc/shadow", "/root/../../../../etc/shadow", "../../../../../../../etc/shadow"):
        assert box.files.read(path) == f"{token}\n", path

    box.commands.run("ln -s /etc/shadow /root/shadow-link && ln -s / /root/root-link")
    assert box.files.read("/root/shadow-link") == f"{token}\n"
    assert box.files.read("/root/root-link/etc/shadow") == f"{token}\n"
    box.files.write("/root/root-link/tmp/through-link", "landed inside")
    assert box.commands.run("cat /tmp/through-link").stdout == "landed inside"

    inside = set(box.commands.run("ls -A /").stdout.split())
    assert {entry.name for entry in box.files.list("../../..")} == inside


# Tenants


def test_tenant_isolation(make_sandbox: Callable[..., Sandbox], local_stack: Any) -> None:
    name = _unique("tenant-a")
    victim = make_sandbox(name=name)
    victim.files.write("/root/secret.txt", "tenant A's secret")
    other = {"api_key": local_stack.create_tenant(_unique("tenant-b")), "endpoint": local_stack.endpoint}

    for ref in (victim.id, name):
        with pytest.raises(NotFoundError):
            Sandbox.get_info(ref, **other)
        with pytest.raises(NotFoundError):
            Sandbox.connect(ref, **other)
        with pytest.raises(NotFoundError):
            Sandbox.kill(ref, **other)
    every_state = [state for state in SandboxState if state is not SandboxState.UNSPECIFIED]
    assert victim.id not in {info.id for info in Sandbox.list(states=every_state, **other)}

    # A handle forged from tenant A's id, as tenant B would hold after learning the id.
    forged_info = SandboxInfo(
        id=victim.id, name=None, template="base", state=SandboxState.RUNNING, cpu=1, memory_mb=512
    )
    forged = Sandbox(AsyncSandbox(forged_info, Connection(resolve(**other))))
    try:
        with pytest.raises(NotFoundError):
            forged.commands.run("cat /root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.read("/root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.write("/root/secret.txt", "overwritten by B")
        with pytest.raises(NotFoundError):
            forged.files.remove("/root/secret.txt")
        with pytest.raises(NotFoundError):
            forged.files.list("/root")
        with pytest.raises(NotFoundError):
            forged.kill()
    finally:
        forged.close()

    assert victim.is_running()
    assert victim.files.read("/root/secret.txt") == "tenant A's secret"
    assert victim.commands.run("echo unaffected").stdout == "unaffected\n"
