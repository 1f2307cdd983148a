"""The sandbox supervisor as PID 1 of a real crun container, driven through SupervisorClient.

The container's root file system is busybox and nothing else: no Python, no shared libraries. The
supervisor runs on the bundled runtime mounted at /.hutch/rt, which proves the bundle carries all
it needs and reads nothing from the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import node_options, running_node

from hutch.core import errors
from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.supervisor import protocol
from hutch_node_agent.supervisor.bundle import SupervisorRuntime, build_runtime
from hutch_node_agent.supervisor.client import ExecEvent, Exited, Output, Started, SupervisorClient

pytestmark = pytest.mark.integration


@dataclass
class Sandbox:
    client: SupervisorClient
    socket_path: Path
    rootfs: Path


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def sandbox(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    """A sandbox from a busybox-only template, started by a real node's SandboxManager, once per
    isolation class: everything the supervisor offers must behave the same under both."""
    options = node_options(tmp_path_factory.mktemp("node"))
    async with running_node(options) as node:
        sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
        wanted = SandboxRequest(
            sandbox_id=sandbox_id,
            tenant_id="t",
            template="busybox",
            cpu_millis=1000,
            memory_mb=256,
            isolation=request.param,
        )
        try:
            await node.manager.create(wanted)
        except errors.HutchError:
            log = node.layout.sandbox(sandbox_id).log
            pytest.fail(f"the sandbox did not start; supervisor output:\n{log.read_text(errors='replace')}")
        paths = node.layout.sandbox(sandbox_id)
        yield Sandbox(node.manager.supervisor(sandbox_id), paths.socket, paths.rootfs)


# Helpers -------------------------------------------------------------------------------------------


@dataclass
class ExecResult:
    events: list[ExecEvent] = field(default_factory=list)

    @property
    def stdout(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, Output) and e.stream == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, Output) and e.stream == "stderr")

    @property
    def exited(self) -> Exited:
        last = self.events[-1]
        assert isinstance(last, Exited), f"the last event is {last!r}"
        return last


async def run(sandbox: Sandbox, **request: Any) -> ExecResult:
    result = ExecResult()
    async with await sandbox.client.exec(request) as session:
        async for event in session:
            result.events.append(event)
    return result


async def shell(sandbox: Sandbox, cmd: str, **request: Any) -> str:
    """Runs a shell line that must succeed and returns its stdout."""
    result = await run(sandbox, cmd=cmd, **request)
    assert result.exited == Exited(0, 0, False), result.stderr
    return result.stdout.decode()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(sandbox: Sandbox, path: str) -> tuple[dict[str, Any], bytes]:
    info, chunks = await sandbox.client.read_file(path)
    return info, b"".join([chunk async for chunk in chunks])


async def write(sandbox: Sandbox, path: str, data: bytes, **options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"mode": 0, "user": "", "max_bytes": 0, **options}
    return await sandbox.client.write_file(path, chunks_of(data, 100_000), **settings)


async def process_gone(sandbox: Sandbox, pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await run(sandbox, args=["kill", "-0", str(pid)])).exited.exit_code != 0:
            return True
        await asyncio.sleep(0.05)
    return False


def unique(name: str) -> str:
    return f"/tmp/{name}-{uuid.uuid4().hex[:8]}"


# Runtime -------------------------------------------------------------------------------------------


def test_runtime_is_built_once_per_version(tmp_path: Path) -> None:
    first = build_runtime(tmp_path)
    second = build_runtime(tmp_path)

    assert first == second
    assert [path.name for path in tmp_path.iterdir()] == [first.host_dir.name]  # no staging left over
    for part in ("bin/python3", f"lib/{first.loader}", "sandbox_supervisor.pyc", "protocol.py"):
        assert (first.host_dir / part).is_file(), part
    assert first.argv()[0] == f"{SupervisorRuntime.MOUNT_POINT}/lib/{first.loader}"


async def test_supervisor_runs_entirely_from_the_bundle(sandbox: Sandbox) -> None:
    maps = await shell(sandbox, "cat /proc/1/maps")
    mapped_files = {line.split()[5] for line in maps.splitlines() if len(line.split()) > 5}
    files = {name for name in mapped_files if name.startswith("/")}

    assert files, maps
    assert all(name.startswith(f"{SupervisorRuntime.MOUNT_POINT}/") for name in files), files


# Processes -----------------------------------------------------------------------------------------


async def test_ping_answers_from_pid_1(sandbox: Sandbox) -> None:
    assert await sandbox.client.ping() == {"pid": 1, "version": 2}


async def test_exec_with_args_passes_arguments_verbatim(sandbox: Sandbox) -> None:
    result = await run(sandbox, args=["echo", "two  spaces", "$HOME", "*"])

    assert isinstance(result.events[0], Started)
    assert result.stdout == b"two  spaces $HOME *\n"
    assert result.exited == Exited(exit_code=0, signal=0, timed_out=False)


async def test_exec_with_cmd_runs_a_shell_line(sandbox: Sandbox) -> None:
    result = await run(sandbox, cmd="echo $((6 * 7)) | tr 4 X; exit 5")

    assert result.stdout == b"X2\n"
    assert result.exited.exit_code == 5


async def test_stdout_and_stderr_are_separate_and_in_order(sandbox: Sandbox) -> None:
    result = await run(sandbox, cmd="for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done")

    assert result.stdout == b"".join(b"out%d\n" % i for i in range(1, 6))
    assert result.stderr == b"".join(b"err%d\n" % i for i in range(1, 6))


@pytest.mark.parametrize("code", [0, 1, 42, 255])
async def test_exit_code_is_reported(sandbox: Sandbox, code: int) -> None:
    assert (await run(sandbox, args=["sh", "-c", f"exit {code}"])).exited == Exited(code, 0, False)


async def test_env_and_cwd_are_the_requests_only(sandbox: Sandbox) -> None:
    result = await run(sandbox, args=["/bin/env"], env={"GREETING": "hi"}, cwd="/tmp")
    environment = result.stdout.decode().splitlines()

    assert "GREETING=hi" in environment
    assert not [line for line in environment if line.startswith(("PYTHON", "HUTCH_"))], environment
    assert await shell(sandbox, "pwd", cwd="/tmp") == "/tmp\n"


async def test_started_process_has_default_signal_dispositions(sandbox: Sandbox) -> None:
    # The supervisor ignores SIGINT, SIGTERM and SIGHUP itself. A shell cannot undo a disposition
    # it inherited as ignored, so if one leaked, the shell would survive its own signal.
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        result = await run(sandbox, args=["sh", "-c", f"kill -{int(number)} $$; echo survived"])
        assert result.exited.signal == number and b"survived" not in result.stdout
    status = (await run(sandbox, args=["cat", "/proc/self/status"])).stdout.decode()
    masks = dict(line.split(":\t") for line in status.splitlines() if line.startswith(("SigIgn", "SigBlk")))
    if masks:  # gVisor's /proc does not show them
        standard_signals = (1 << 31) - 1  # 32 and up are real-time signals the C library reserves
        assert int(masks["SigIgn"], 16) & standard_signals == 0
        assert int(masks["SigBlk"], 16) == 0


async def test_stdin_round_trips_through_cat(sandbox: Sandbox) -> None:
    data = os.urandom(3 * protocol.CHUNK + 777)
    received = bytearray()
    async with await sandbox.client.exec({"args": ["cat"], "stdin": True}) as session:

        async def feed() -> None:
            for start in range(0, len(data), 50_000):
                await session.send_stdin(data[start : start + 50_000])
            await session.close_stdin()

        feeder = asyncio.create_task(feed())
        async for event in session:
            if isinstance(event, Output):
                received += event.data
            if isinstance(event, Exited):
                assert event == Exited(0, 0, False)
        await feeder

    assert bytes(received) == data


async def test_stdin_needs_to_be_requested(sandbox: Sandbox) -> None:
    async with await sandbox.client.exec({"args": ["cat"]}) as session:
        with pytest.raises(errors.FailedPrecondition):
            await session.send_stdin(b"ignored")
        events = [event async for event in session]

    assert events[-1] == Exited(0, 0, False)  # cat saw end-of-file at once


async def test_signal_reaches_the_process(sandbox: Sandbox) -> None:
    script = "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done"
    output = b""
    async with await sandbox.client.exec({"cmd": script}) as session:
        async for event in session:
            if isinstance(event, Output) and event.stream == "stdout":
                output += event.data
                if output == b"ready\n":
                    await session.send_signal(15)
            if isinstance(event, Exited):
                assert event.exit_code == 7

    assert output == b"ready\ngot-term\n"


async def test_process_killed_by_a_signal_reports_it(sandbox: Sandbox) -> None:
    async with await sandbox.client.exec({"args": ["sleep", "30"]}) as session:
        events = []
        async for event in session:
            events.append(event)
            if isinstance(event, Started):
                await session.send_signal(9)

    assert events[-1] == Exited(exit_code=-1, signal=9, timed_out=False)


async def test_timeout_kills_the_process(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await run(sandbox, args=["sleep", "30"], timeout_ms=200)

    assert result.exited == Exited(exit_code=-1, signal=9, timed_out=True)
    assert time.monotonic() - started < 5


async def test_closing_the_connection_kills_the_process_group(sandbox: Sandbox) -> None:
    session = await sandbox.client.exec({"cmd": "sleep 1000 & echo $!; wait"})
    pids = []
    async for event in session:
        if isinstance(event, Started):
            pids.append(event.pid)
        if isinstance(event, Output):
            pids.append(int(event.data))
            break
    await session.close()

    for pid in pids:
        assert await process_gone(sandbox, pid), f"process {pid} survived its closed call"


async def test_closing_while_stdin_is_backed_up_kills_the_process(sandbox: Sandbox) -> None:
    session = await sandbox.client.exec({"args": ["sleep", "1000"], "stdin": True})
    feeder = asyncio.create_task(session.send_stdin(b"x" * (8 * 1024 * 1024)))
    await asyncio.sleep(0.3)
    assert not feeder.done(), "the supervisor kept reading stdin that the process does not take"

    feeder.cancel()
    await session.close()

    assert await process_gone(sandbox, session.pid)


async def test_background_grandchild_does_not_hold_the_call_open(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await run(sandbox, cmd="sleep 30 & echo started")

    assert result.stdout == b"started\n"
    assert result.exited == Exited(0, 0, False)
    assert time.monotonic() - started < 5


async def test_runs_as_the_requested_user(sandbox: Sandbox) -> None:
    assert await shell(sandbox, "id -u; id -g; pwd", user="user") == "1000\n1000\n/home/user\n"
    assert await shell(sandbox, "id -u", user="1000") == "1000\n"
    assert await shell(sandbox, "id -u") == "0\n"


async def test_missing_executable_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(errors.NotFound, match="executable 'no-such-program' not found in PATH"):
        await sandbox.client.exec({"args": ["no-such-program"]})


async def test_missing_user_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(errors.NotFound, match="user 'nobody-here'"):
        await sandbox.client.exec({"args": ["true"], "user": "nobody-here"})


async def test_a_numeric_uid_without_an_account_runs_as_that_uid(sandbox: Sandbox) -> None:
    result = await run(sandbox, args=["id"], user="4321")
    assert result.stdout.decode().startswith("uid=4321 gid=4321")


async def test_missing_working_directory_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(errors.NotFound, match="working directory '/no/such/dir'"):
        await sandbox.client.exec({"args": ["true"], "cwd": "/no/such/dir"})


async def test_many_concurrent_execs_all_complete(sandbox: Sandbox) -> None:
    results = await asyncio.gather(*(run(sandbox, args=["echo", str(i)]) for i in range(50)))

    assert [result.stdout for result in results] == [b"%d\n" % i for i in range(50)]
    assert all(result.exited == Exited(0, 0, False) for result in results)


async def test_orphans_are_reaped(sandbox: Sandbox) -> None:
    await asyncio.gather(*(run(sandbox, cmd="sleep 0.1 & exit 0") for _ in range(20)))
    deadline = time.monotonic() + 5
    while True:
        states = await shell(sandbox, "cat /proc/[0-9]*/stat 2>/dev/null; true")
        zombies = [line for line in states.splitlines() if line.rpartition(")")[2].split()[0] == "Z"]
        if not zombies or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)

    assert zombies == []


# Files ---------------------------------------------------------------------------------------------


async def test_binary_file_round_trip(sandbox: Sandbox) -> None:
    path = unique("blob")
    data = os.urandom(4 * protocol.CHUNK + 12345)

    info = await write(sandbox, path, data, user="user", mode=0o640)
    read_info, content = await read_all(sandbox, path)

    assert content == data
    assert (info["size"], info["mode"], info["owner"], info["group"]) == (len(data), 0o640, "user", "user")
    assert read_info["size"] == len(data)


async def test_write_replaces_and_creates_parents(sandbox: Sandbox) -> None:
    path = unique("deep") + "/a/b/file.txt"
    await write(sandbox, path, b"first")

    info = await write(sandbox, path, b"second")

    assert (await read_all(sandbox, path))[1] == b"second"
    assert info["mode"] == 0o644
    assert info["path"] == path


async def test_relative_paths_start_at_the_default_users_home(sandbox: Sandbox) -> None:
    info = await write(sandbox, "notes/../relative.txt", b"x")

    assert info["path"] == "/root/relative.txt"


async def test_write_over_max_bytes_leaves_the_target_untouched(sandbox: Sandbox) -> None:
    directory = unique("limit")
    path = f"{directory}/file"
    await write(sandbox, path, b"original")

    with pytest.raises(errors.ResourceExhausted, match="limit of 1000 bytes"):
        await write(sandbox, path, os.urandom(3 * protocol.CHUNK), max_bytes=1000)

    assert (await read_all(sandbox, path))[1] == b"original"
    listing = await sandbox.client.call("list", path=directory)
    assert [entry["name"] for entry in listing["entries"]] == ["file"]


async def test_reading_a_directory_is_invalid(sandbox: Sandbox) -> None:
    with pytest.raises(errors.InvalidArgument, match="is a directory"):
        await sandbox.client.read_file("/etc")


async def test_reading_a_missing_file_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(errors.NotFound, match="no such file"):
        await sandbox.client.read_file("/no/such/file")


async def test_list_respects_depth_and_does_not_follow_symlinks(sandbox: Sandbox) -> None:
    root = unique("tree")
    await shell(sandbox, f"mkdir -p {root}/a/b/c && touch {root}/top {root}/a/mid {root}/a/b/low")
    await shell(sandbox, f"ln -s /etc {root}/a/etc-link")

    one = await sandbox.client.call("list", path=root, depth=1)
    two = await sandbox.client.call("list", path=root, depth=2)
    everything = await sandbox.client.call("list", path=root, depth=10)

    assert [e["path"] for e in one["entries"]] == [f"{root}/a", f"{root}/top"]
    assert [e["path"][len(root) :] for e in two["entries"]] == ["/a", "/a/b", "/a/etc-link", "/a/mid", "/top"]
    by_path = {e["path"][len(root) :]: e for e in everything["entries"]}
    assert set(by_path) == {"/a", "/a/b", "/a/b/c", "/a/b/low", "/a/etc-link", "/a/mid", "/top"}
    assert (by_path["/a/etc-link"]["type"], by_path["/a/etc-link"]["symlink_target"]) == ("symlink", "/etc")
    assert by_path["/a/b"]["type"] == "dir"
    assert by_path["/top"]["type"] == "file"


async def test_list_over_max_entries_asks_for_less(sandbox: Sandbox) -> None:
    root = unique("many")
    await shell(sandbox, f"mkdir -p {root} && cd {root} && touch $(seq 1 20)")

    with pytest.raises(errors.ResourceExhausted, match="list a subdirectory or lower the depth"):
        await sandbox.client.call("list", path=root, max_entries=10)


async def test_stat_reports_a_symlink_as_a_symlink(sandbox: Sandbox) -> None:
    link = unique("link")
    await shell(sandbox, f"ln -s /etc/passwd {link}")

    info = await sandbox.client.call("stat", path=link)

    assert info["type"] == "symlink"
    assert info["symlink_target"] == "/etc/passwd"
    assert info["name"] == link.rsplit("/", 1)[1]


async def test_remove_needs_recursive_for_a_non_empty_directory(sandbox: Sandbox) -> None:
    root = unique("rm")
    outside = unique("keep")
    await shell(sandbox, f"mkdir -p {root}/sub {outside} && touch {root}/sub/f {outside}/precious")
    await shell(sandbox, f"ln -s {outside} {root}/sub/link-to-outside")

    with pytest.raises(errors.FailedPrecondition, match="directory not empty; pass recursive=True"):
        await sandbox.client.call("remove", path=root)
    await sandbox.client.call("remove", path=root, recursive=True)

    with pytest.raises(errors.NotFound):
        await sandbox.client.call("stat", path=root)
    assert (await sandbox.client.call("stat", path=f"{outside}/precious"))["type"] == "file"


async def test_remove_refuses_the_root(sandbox: Sandbox) -> None:
    with pytest.raises(errors.InvalidArgument):
        await sandbox.client.call("remove", path="/", recursive=True)


async def test_rename_moves_into_new_directories(sandbox: Sandbox) -> None:
    source = unique("src")
    destination = unique("dst") + "/nested/renamed"
    await write(sandbox, source, b"payload")

    info = await sandbox.client.call("rename", source=source, destination=destination)

    assert (info["path"], info["size"]) == (destination, 7)
    assert (await read_all(sandbox, destination))[1] == b"payload"
    with pytest.raises(errors.NotFound):
        await sandbox.client.call("stat", path=source)


async def test_mkdir_reports_whether_it_created(sandbox: Sandbox) -> None:
    path = unique("made") + "/x/y"

    first = await sandbox.client.call("mkdir", path=path)
    second = await sandbox.client.call("mkdir", path=path)

    assert (first["created"], second["created"]) == (True, False)
    assert first["info"]["type"] == "dir"
    with pytest.raises(errors.AlreadyExists):
        await sandbox.client.call("mkdir", path="/etc/passwd")


async def test_paths_stay_inside_the_container(sandbox: Sandbox) -> None:
    link = unique("passwd-link")
    await shell(sandbox, f"ln -s /etc/passwd {link}")

    through_link = (await read_all(sandbox, link))[1]
    through_dots = (await read_all(sandbox, "/../../../etc/passwd"))[1]
    relative = (await read_all(sandbox, "../../../../../etc/passwd"))[1]

    assert through_link == through_dots == relative == (sandbox.rootfs / "etc" / "passwd").read_bytes()
    assert through_link != Path("/etc/passwd").read_bytes()


# Robustness ----------------------------------------------------------------------------------------


def raw_exchange(socket_path: Path, data: bytes) -> tuple[int, dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(socket_path))
        conn.sendall(data)
        header = conn.recv(protocol.HEADER.size, socket.MSG_WAITALL)
        frame_type, length = protocol.parse_header(header)
        return frame_type, json.loads(conn.recv(length, socket.MSG_WAITALL))


@pytest.mark.parametrize(
    "data",
    [
        protocol.encode(protocol.REQUEST, b"not json"),
        protocol.encode_json(protocol.REQUEST, ["not", "an", "object"]),
        protocol.encode_json(protocol.REQUEST, {"op": "format-the-disk"}),
        protocol.encode(protocol.DATA, b"no request first"),
        protocol.HEADER.pack(protocol.MAX_FRAME + 2, protocol.REQUEST),
    ],
    ids=["not-json", "not-object", "unknown-op", "no-request", "oversized"],
)
async def test_malformed_requests_get_invalid_argument(sandbox: Sandbox, data: bytes) -> None:
    frame_type, error = await asyncio.to_thread(raw_exchange, sandbox.socket_path, data)

    assert (frame_type, error["code"]) == (protocol.ERROR, "invalid_argument")
    assert await sandbox.client.ping() == {"pid": 1, "version": 2}


async def test_closing_stdin_as_the_process_exits_never_loses_the_exit(sandbox: Sandbox) -> None:
    # A late STDIN_EOF used to arrive after the supervisor had closed the connection, and the
    # kernel then reported a reset to the node-agent instead of the EXIT frame.
    for _ in range(150):
        async with await sandbox.client.exec({"args": ["true"], "stdin": True}) as session:
            await session.close_stdin()
            events = [event async for event in session]
        assert isinstance(events[-1], Exited) and events[-1].exit_code == 0
