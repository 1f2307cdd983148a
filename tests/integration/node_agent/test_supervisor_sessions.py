"""Long-lived sessions with the supervisor of a real sandbox, under both isolation classes: background
processes (process table, attach, stdin, signals), terminals, file watches, TCP relays into the
sandbox and transfer checksums. The template is busybox only, as in test_supervisor.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import node_options, running_node

from hutch.core import errors
from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.supervisor import protocol
from hutch_node_agent.supervisor.client import (
    Dropped,
    ExecEvent,
    ExecSession,
    Exited,
    FsEvent,
    Output,
    ProcessInfo,
    Started,
    SupervisorClient,
    TcpStream,
    WatchSession,
)

pytestmark = pytest.mark.integration

# Generous: every step goes through a real sandbox, and gVisor's ptrace platform is slow.
WAIT_S = 10.0
TERMINAL = {"cols": 80, "rows": 24}
_PORTS = itertools.count(8100)


@dataclass
class Sandbox:
    client: SupervisorClient
    isolation: str


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def sandbox(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
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
        yield Sandbox(node.manager.supervisor(sandbox_id), request.param)


# Helpers -------------------------------------------------------------------------------------------


class Follower:
    """Collects a session's events in a task, so that a test can wait for output while it sends."""

    def __init__(self, session: ExecSession) -> None:
        self.session = session
        self.events: list[ExecEvent] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.session:
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    @property
    def output(self) -> bytes:
        return b"".join(event.data for event in self.events if isinstance(event, Output))

    async def wait_for(self, text: bytes, after: int = 0) -> int:
        """Waits until `text` shows in the output at or after offset `after`; returns where it ends."""
        async with asyncio.timeout(WAIT_S), self._changed:
            while (found := self.output.find(text, after)) < 0:
                if self._task.done():
                    raise AssertionError(f"{text!r} never came; output: {self.output!r}")
                await self._changed.wait()
        return found + len(text)

    async def exited(self) -> Exited:
        async with asyncio.timeout(WAIT_S):
            await self._task
        last = self.events[-1]
        assert isinstance(last, Exited), self.events
        return last

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.session.close()


async def collect(session: ExecSession) -> list[ExecEvent]:
    async with session, asyncio.timeout(WAIT_S):
        return [event async for event in session]


def output_of(events: list[ExecEvent]) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Output))


async def shell(sandbox: Sandbox, cmd: str) -> str:
    """Runs a shell line in the foreground; it must succeed. Returns its stdout."""
    events = await collect(await sandbox.client.exec({"cmd": cmd}))
    assert events[-1] == Exited(0, 0, False), output_of(events)
    return output_of(events).decode()


async def start_background(sandbox: Sandbox, cmd: str, **request: Any) -> int:
    """Starts a background process and leaves it running; returns its pid."""
    session = await sandbox.client.exec({"cmd": cmd, "background": True, **request})
    await session.close()
    return session.pid


async def listed(sandbox: Sandbox, pid: int) -> ProcessInfo:
    return next(process for process in await sandbox.client.processes() if process.pid == pid)


async def until_exited(sandbox: Sandbox, pid: int) -> ProcessInfo:
    async with asyncio.timeout(WAIT_S):
        while True:
            info = await listed(sandbox, pid)
            if info.state == "exited":
                return info
            await asyncio.sleep(0.02)


async def is_alive(sandbox: Sandbox, pid: int) -> bool:
    events = await collect(await sandbox.client.exec({"args": ["kill", "-0", str(pid)]}))
    last = events[-1]
    assert isinstance(last, Exited)
    return last.exit_code == 0


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 100_000):
        yield data[start : start + 100_000]


def unique(name: str) -> str:
    return f"/tmp/{name}-{uuid.uuid4().hex[:8]}"


async def supervisor_resources(sandbox: Sandbox) -> tuple[int, int]:
    """(open fds, threads) of the supervisor, PID 1."""
    # A glob rather than ls, which fails on an fd closed between listing and looking at it.
    counts = await shell(sandbox, "set -- /proc/1/fd/*; echo $#; set -- /proc/1/task/*; echo $#")
    fds, threads = (int(line) for line in counts.split())
    return fds, threads


async def settles_at(sandbox: Sandbox, baseline: tuple[int, int]) -> tuple[int, int]:
    """The supervisor's resources once back at `baseline` (connections end a moment after their
    client closes), or what they are after a few seconds.
    """
    deadline = time.monotonic() + 5
    while True:
        now = await supervisor_resources(sandbox)
        if now <= baseline or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


# Background processes --------------------------------------------------------------------------------


async def test_background_process_outlives_its_connection_and_is_listed(sandbox: Sandbox) -> None:
    before = time.time()
    pid = await start_background(sandbox, "sleep 30")

    assert await is_alive(sandbox, pid)
    info = await listed(sandbox, pid)
    assert (info.state, info.cmd, info.user, info.cwd, info.pty) == ("running", "sleep 30", "root", "/root", False)
    assert info.args[1:] == ("-c", "sleep 30")
    assert before - 1 < info.started_at < time.time() + 1
    assert (info.exit_code, info.signal, info.ended_at) == (None, None, None)

    await sandbox.client.signal(pid, signal.SIGTERM)

    finished = await until_exited(sandbox, pid)
    assert (finished.exit_code, finished.signal) == (-1, signal.SIGTERM)
    assert finished.ended_at is not None and finished.ended_at >= finished.started_at


async def test_attach_replays_then_follows(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "for i in 1 2 3; do echo $i; sleep 0.2; done")
    await asyncio.sleep(0.1)  # the first line is out, the others are still to come

    events = await collect(await sandbox.client.attach(pid))

    assert events[0] == Started(pid, dropped_bytes=0)
    assert output_of(events) == b"1\n2\n3\n"
    assert events[-1] == Exited(0, 0, False)


async def test_the_starting_call_follows_a_background_process_too(sandbox: Sandbox) -> None:
    events = await collect(await sandbox.client.exec({"cmd": "echo out; echo err >&2; exit 3", "background": True}))

    assert [(event.stream, event.data) for event in events if isinstance(event, Output)] == [
        ("stdout", b"out\n"),
        ("stderr", b"err\n"),
    ]
    assert events[-1] == Exited(3, 0, False)


async def test_attach_to_an_exited_process_replays_and_reports_its_exit(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "echo done; exit 4")
    await until_exited(sandbox, pid)

    events = await collect(await sandbox.client.attach(pid))

    assert output_of(events) == b"done\n"
    assert events[-1] == Exited(4, 0, False)


async def test_attach_without_replay_sees_only_what_comes_next(sandbox: Sandbox) -> None:
    flag = unique("go")
    pid = await start_background(sandbox, f"echo old; while [ ! -e {flag} ]; do sleep 0.02; done; echo new")
    await asyncio.sleep(0.2)

    follower = Follower(await sandbox.client.attach(pid, replay=False))
    await asyncio.sleep(0.1)  # attached before the flag appears
    await shell(sandbox, f"touch {flag}")

    assert await follower.exited() == Exited(0, 0, False)
    assert follower.output == b"new\n"
    await follower.close()


async def test_streams_keep_their_order_in_the_buffer(sandbox: Sandbox) -> None:
    script = "for i in 1 2 3; do echo o$i; sleep 0.05; echo e$i >&2; sleep 0.05; done"
    pid = await start_background(sandbox, script)
    await until_exited(sandbox, pid)

    events = await collect(await sandbox.client.attach(pid))

    expected = [("stdout" if kind == "o" else "stderr", f"{kind}{i}\n".encode()) for i in (1, 2, 3) for kind in "oe"]
    assert [(event.stream, event.data) for event in events if isinstance(event, Output)] == expected


async def test_the_buffer_drops_the_oldest_output_and_says_how_much(sandbox: Sandbox) -> None:
    everything = "".join(f"{n}\n" for n in range(1, 3001)).encode()
    pid = await start_background(sandbox, "seq 1 3000", buffer_bytes=1000)
    info = await until_exited(sandbox, pid)

    events = await collect(await sandbox.client.attach(pid))

    assert info.dropped_bytes == len(everything) - 1000
    assert events[0] == Started(pid, dropped_bytes=len(everything) - 1000)
    assert output_of(events) == everything[-1000:]
    assert events[-1] == Exited(0, 0, False)


async def test_a_reader_that_falls_behind_is_told_what_it_missed(sandbox: Sandbox) -> None:
    flag = unique("go")
    # Far more than the socket and the client's reader hold, so most of it cannot wait for the reader.
    pid = await start_background(
        sandbox, f"while [ ! -e {flag} ]; do sleep 0.02; done; seq 1 1500000", buffer_bytes=4096
    )
    session = await sandbox.client.attach(pid)
    assert await anext(session) == Started(pid, 0)
    await shell(sandbox, f"touch {flag}")
    await until_exited(sandbox, pid)  # all of it was written while no client read any of it

    events = await collect(session)

    dropped = sum(event.dropped_bytes for event in events if isinstance(event, Dropped))
    everything = sum(len(f"{n}\n") for n in range(1, 1500001))
    assert dropped > 0
    assert dropped + len(output_of(events)) == everything
    assert output_of(events).endswith(b"1499999\n1500000\n")


async def test_several_attached_sessions_each_get_all_output(sandbox: Sandbox) -> None:
    flag = unique("go")
    pid = await start_background(sandbox, f"while [ ! -e {flag} ]; do sleep 0.02; done; seq 1 5")
    followers = [Follower(await sandbox.client.attach(pid)) for _ in range(3)]
    await asyncio.sleep(0.1)

    await shell(sandbox, f"touch {flag}")

    for follower in followers:
        assert await follower.exited() == Exited(0, 0, False)
        assert follower.output == b"1\n2\n3\n4\n5\n"
        await follower.close()


async def test_detaching_never_stops_the_process(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "while true; do echo tick; sleep 0.05; done")
    for _ in range(3):
        follower = Follower(await sandbox.client.attach(pid))
        await follower.wait_for(b"tick\n")
        await follower.close()

    assert await is_alive(sandbox, pid)
    await sandbox.client.signal(pid, signal.SIGKILL)
    assert (await until_exited(sandbox, pid)).signal == signal.SIGKILL


async def test_attached_session_sends_stdin_eof_and_signals(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "cat; echo cat-done; sleep 30", stdin=True)
    follower = Follower(await sandbox.client.attach(pid))

    await follower.session.send_stdin(b"typed\n")
    await follower.wait_for(b"typed\n")
    await follower.session.close_stdin()
    await follower.wait_for(b"cat-done\n")
    await follower.session.send_signal(signal.SIGTERM)

    assert await follower.exited() == Exited(-1, signal.SIGTERM, False)
    await follower.close()


async def test_stdin_op_feeds_a_background_process(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "cat", stdin=True, buffer_bytes=protocol.MAX_FRAME)

    await sandbox.client.send_stdin(pid, b"first\n")
    await sandbox.client.send_stdin(pid, b"x" * (3 * protocol.CHUNK) + b"\n", eof=True)

    events = await collect(await sandbox.client.attach(pid))
    assert output_of(events) == b"first\n" + b"x" * (3 * protocol.CHUNK) + b"\n"
    assert events[-1] == Exited(0, 0, False)
    with pytest.raises(errors.FailedPrecondition, match=f"process {pid} has exited"):
        await sandbox.client.send_stdin(pid, b"late\n")


async def test_stdin_op_needs_an_open_stdin(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "sleep 30")

    with pytest.raises(errors.FailedPrecondition, match="is closed"):
        await sandbox.client.send_stdin(pid, b"nobody reads this\n")
    await sandbox.client.signal(pid, signal.SIGKILL)


async def test_signal_and_stdin_of_an_exited_process_are_refused(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "true")
    await until_exited(sandbox, pid)

    with pytest.raises(errors.FailedPrecondition, match="has exited"):
        await sandbox.client.signal(pid, signal.SIGTERM)


async def test_signal_reaches_a_foreground_process_too(sandbox: Sandbox) -> None:
    async with await sandbox.client.exec({"args": ["sleep", "30"]}) as session:
        await sandbox.client.signal(session.pid, signal.SIGTERM)
        events = [event async for event in session]

    assert events[-1] == Exited(-1, signal.SIGTERM, False)


async def test_unknown_pids_are_not_found(sandbox: Sandbox) -> None:
    message = "no process 4000000 in this sandbox"
    with pytest.raises(errors.NotFound, match=message):
        await sandbox.client.attach(4000000)
    with pytest.raises(errors.NotFound, match=message):
        await sandbox.client.signal(4000000, signal.SIGTERM)
    with pytest.raises(errors.NotFound, match=message):
        await sandbox.client.send_stdin(4000000, b"x")


async def test_a_background_process_has_its_timeout(sandbox: Sandbox) -> None:
    events = await collect(await sandbox.client.exec({"args": ["sleep", "30"], "background": True, "timeout_ms": 200}))

    assert events[-1] == Exited(-1, signal.SIGKILL, True)


@pytest.mark.parametrize("size", [0, protocol.MAX_FRAME + 1, "big"])
async def test_buffer_bytes_out_of_range_are_invalid(sandbox: Sandbox, size: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="buffer_bytes"):
        await sandbox.client.exec({"args": ["true"], "background": True, "buffer_bytes": size})


async def test_attach_cycles_leak_nothing(sandbox: Sandbox) -> None:
    pid = await start_background(sandbox, "while true; do echo tick; sleep 0.1; done")
    await asyncio.sleep(0.2)
    baseline = await supervisor_resources(sandbox)

    for _ in range(100):
        session = await sandbox.client.attach(pid)
        await anext(session)
        await session.close()

    assert await settles_at(sandbox, baseline) <= baseline
    await sandbox.client.signal(pid, signal.SIGKILL)


# Terminals -------------------------------------------------------------------------------------------


async def terminal(sandbox: Sandbox, *args: str, **request: Any) -> Follower:
    return Follower(await sandbox.client.exec({"args": list(args) or ["sh"], "pty": TERMINAL, **request}))


async def test_a_terminal_is_a_real_tty_of_the_requested_size(sandbox: Sandbox) -> None:
    follower = await terminal(sandbox, "sh", "-c", "tty; stty size; echo $TERM")

    assert await follower.exited() == Exited(0, 0, False)
    tty, size, term = follower.output.decode().split("\r\n")[:3]
    assert tty.startswith("/dev/pts/")
    assert (size, term) == ("24 80", "xterm-256color")
    assert (await listed(sandbox, follower.session.pid)).pty


async def test_a_terminal_belongs_to_its_user(sandbox: Sandbox) -> None:
    script = "id -u; stat -c %u $(tty)"
    if sandbox.isolation == "container":  # gVisor (this runsc) has only a stub /dev/tty
        script += "; echo via-tty > /dev/tty"
    follower = await terminal(sandbox, "sh", "-c", script, user="user")

    assert await follower.exited() == Exited(0, 0, False), follower.output
    assert follower.output.startswith(b"1000\r\n1000\r\n")
    assert follower.output.endswith(b"via-tty\r\n") == (sandbox.isolation == "container")


async def test_resize_sets_the_size_and_signals_the_program(sandbox: Sandbox) -> None:
    script = 'trap "stty size" WINCH; echo ready; while true; do sleep 0.05; done'
    follower = await terminal(sandbox, "sh", "-c", script)
    await follower.wait_for(b"ready\r\n")

    await follower.session.send_resize(100, 30)

    await follower.wait_for(b"30 100\r\n")
    await follower.session.send_signal(signal.SIGKILL)
    await follower.exited()
    await follower.close()


async def test_ctrl_c_interrupts_the_foreground_job_and_the_shell_lives_on(sandbox: Sandbox) -> None:
    follower = await terminal(sandbox)
    prompt = await follower.wait_for(b"# ")

    await follower.session.send_stdin(b"sleep 100\n")
    await asyncio.sleep(0.5)  # sleep is running
    await follower.session.send_stdin(b"\x03")
    await follower.session.send_stdin(b"echo $((6 * 7))\n")

    await follower.wait_for(b"42\r\n", after=prompt)  # the shell ran it: sleep is gone
    await follower.session.send_stdin(b"exit\n")
    assert await follower.exited() == Exited(0, 0, False)
    await follower.close()


async def test_ctrl_d_ends_the_shell(sandbox: Sandbox) -> None:
    follower = await terminal(sandbox)
    await follower.wait_for(b"# ")

    await follower.session.send_stdin(b"\x04")

    assert await follower.exited() == Exited(0, 0, False)
    await follower.close()


async def test_a_terminal_survives_its_client_and_can_be_reattached(sandbox: Sandbox) -> None:
    first = await terminal(sandbox)
    await first.wait_for(b"# ")
    await first.session.send_stdin(b"MARK=4$((1 + 1))\n")
    await first.close()

    second = Follower(await sandbox.client.attach(first.session.pid))
    replayed = await second.wait_for(b"MARK=4$((1 + 1))")  # the replay shows what happened before
    await second.session.send_stdin(b"echo $MARK\n")
    await second.wait_for(b"42\r\n", after=replayed)
    await second.session.send_stdin(b"exit\n")

    assert await second.exited() == Exited(0, 0, False)
    await second.close()


async def test_vi_draws_and_edits_on_a_terminal(sandbox: Sandbox) -> None:
    path = unique("vi")
    follower = await terminal(sandbox, "vi", path)
    await follower.wait_for(b"~")  # the empty lines of a new file are drawn

    await follower.session.send_stdin(b"ihello from vi\x1b")
    await asyncio.sleep(0.3)  # vi waits a moment to tell a lone Escape from an escape sequence
    await follower.session.send_stdin(b":wq\r")

    assert await follower.exited() == Exited(0, 0, False)
    assert b"\x1b[" in follower.output  # it drew with escape sequences
    assert await shell(sandbox, f"cat {path}") == "hello from vi\n"
    await follower.close()


@pytest.mark.parametrize("size", [{"cols": 0, "rows": 24}, {"cols": 80, "rows": 1001}, {"cols": 80}, [80, 24]])
async def test_terminal_sizes_out_of_range_are_invalid(sandbox: Sandbox, size: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="pty"):
        await sandbox.client.exec({"args": ["sh"], "pty": size})


# Watching files --------------------------------------------------------------------------------------


class Watcher:
    def __init__(self, session: WatchSession) -> None:
        self.session = session
        self.events: list[FsEvent] = []

    async def next_events(self, count: int) -> list[FsEvent]:
        """The next `count` events. Modifications of a file right after one another count once: how
        many writes make one event depends on when the supervisor read them.
        """
        found: list[FsEvent] = []
        async with asyncio.timeout(WAIT_S):
            while len(found) < count:
                event = await anext(self.session)
                if not (event.type == "modify" and self.events and self.events[-1] == event):
                    found.append(event)
                    self.events.append(event)
        return found


async def test_watch_reports_changes_in_order_including_new_subdirectories(sandbox: Sandbox) -> None:
    root = unique("watched")
    await shell(sandbox, f"mkdir {root}")
    async with await sandbox.client.watch(root, recursive=True) as session:
        watcher = Watcher(session)

        await shell(sandbox, f"mkdir {root}/sub")
        assert await watcher.next_events(1) == [FsEvent("create", f"{root}/sub", True)]
        await shell(sandbox, f"echo a > {root}/sub/f")
        assert (await watcher.next_events(1))[0] == FsEvent("create", f"{root}/sub/f", False)
        await shell(sandbox, f"echo b >> {root}/sub/f")
        assert await watcher.next_events(1) == [FsEvent("modify", f"{root}/sub/f", False)]
        await shell(sandbox, f"mv {root}/sub/f {root}/g")
        assert await watcher.next_events(1) == [FsEvent("rename", f"{root}/g", False, old_path=f"{root}/sub/f")]
        await shell(sandbox, f"rm {root}/g")
        assert await watcher.next_events(1) == [FsEvent("delete", f"{root}/g", False)]


async def test_watch_reports_what_a_new_directory_already_holds_once(sandbox: Sandbox) -> None:
    root = unique("watched")
    await shell(sandbox, f"mkdir {root}")
    async with await sandbox.client.watch(root, recursive=True) as session:
        await shell(sandbox, f"mkdir -p {root}/a/b/c && touch {root}/a/b/c/f {root}/a/top")
        await shell(sandbox, f"touch {root}/last")
        events = await Watcher(session).next_events(6)

    assert {(event.type, event.path) for event in events} == {
        ("create", f"{root}/{name}") for name in ("a", "a/b", "a/b/c", "a/b/c/f", "a/top", "last")
    }
    assert events[-1] == FsEvent("create", f"{root}/last", False)  # nothing was reported twice


async def test_moves_out_of_and_into_the_tree_are_deletes_and_creates(sandbox: Sandbox) -> None:
    root, outside = unique("watched"), unique("outside")
    await shell(sandbox, f"mkdir -p {root}/dir {outside} && touch {outside}/incoming")
    async with await sandbox.client.watch(root, recursive=True) as session:
        watcher = Watcher(session)

        await shell(sandbox, f"mv {root}/dir {outside}/dir")
        assert await watcher.next_events(1) == [FsEvent("delete", f"{root}/dir", True)]
        await shell(sandbox, f"touch {outside}/dir/unseen && mv {outside}/incoming {root}/arrived")
        assert await watcher.next_events(1) == [FsEvent("create", f"{root}/arrived", False)]


async def test_a_watch_that_is_not_recursive_stays_at_its_level(sandbox: Sandbox) -> None:
    root = unique("watched")
    await shell(sandbox, f"mkdir -p {root}/sub")
    async with await sandbox.client.watch(root) as session:
        await shell(sandbox, f"touch {root}/sub/deep {root}/top")

        assert await Watcher(session).next_events(1) == [FsEvent("create", f"{root}/top", False)]


async def test_deleting_the_watched_directory_ends_the_watch(sandbox: Sandbox) -> None:
    root = unique("watched")
    await shell(sandbox, f"mkdir {root}")
    async with await sandbox.client.watch(root) as session:
        await shell(sandbox, f"rmdir {root}")

        with pytest.raises(errors.NotFound, match="was deleted or moved away"):
            async with asyncio.timeout(WAIT_S):
                async for _ in session:
                    pass


async def test_watching_a_missing_path_or_a_file_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(errors.NotFound):
        await sandbox.client.watch("/no/such/dir")
    with pytest.raises(errors.InvalidArgument, match="not a directory"):
        await sandbox.client.watch("/etc/passwd")


async def test_watches_leak_nothing(sandbox: Sandbox) -> None:
    root = unique("watched")
    await shell(sandbox, f"mkdir -p {root}/a/b")
    baseline = await supervisor_resources(sandbox)

    for _ in range(20):
        session = await sandbox.client.watch(root, recursive=True)
        await session.close()

    assert await settles_at(sandbox, baseline) <= baseline


# TCP relay -------------------------------------------------------------------------------------------


async def connect_when_listening(sandbox: Sandbox, port: int) -> TcpStream:
    """Connects once the server started in the background listens."""
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                return await sandbox.client.tcp(port)
            except errors.Unavailable:
                await asyncio.sleep(0.05)


async def receive_all(stream: TcpStream) -> bytes:
    async with asyncio.timeout(WAIT_S):
        return b"".join([chunk async for chunk in stream])


async def test_tcp_round_trip_with_our_half_close(sandbox: Sandbox) -> None:
    port = next(_PORTS)
    await start_background(sandbox, f"nc -l -p {port} -e sh -c 'cat; echo bye'")
    async with await connect_when_listening(sandbox, port) as stream:
        await stream.send(b"hello\n")
        await stream.send_eof()  # cat sees end of file; the server still answers after it

        assert await receive_all(stream) == b"hello\nbye\n"


async def test_tcp_server_half_close_leaves_our_direction_open(sandbox: Sandbox) -> None:
    port, received = next(_PORTS), unique("received")
    # nc shuts down its sending side at the end of its stdin and reads on until we are done.
    pid = await start_background(sandbox, f"echo greeting | nc -l -p {port} > {received}")
    async with await connect_when_listening(sandbox, port) as stream:
        assert await receive_all(stream) == b"greeting\n"
        await stream.send(b"after your end\n")
        await stream.send_eof()
        await until_exited(sandbox, pid)

    assert await shell(sandbox, f"cat {received}") == "after your end\n"


async def test_tcp_relays_http_and_long_responses(sandbox: Sandbox) -> None:
    port, www = next(_PORTS), unique("www")
    body = os.urandom(3 * 1024 * 1024)
    await sandbox.client.write_file(f"{www}/big.bin", chunks_of(body), mode=0o644, user="", max_bytes=0)
    pid = await start_background(sandbox, f"httpd -f -p 127.0.0.1:{port} -h {www}")
    async with await connect_when_listening(sandbox, port) as stream:
        await stream.send(b"GET /big.bin HTTP/1.0\r\nHost: sandbox\r\n\r\n")
        response = await receive_all(stream)

    head, _, content = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    assert content == body
    await sandbox.client.signal(pid, signal.SIGKILL)


async def test_tcp_to_a_closed_port_is_unavailable(sandbox: Sandbox) -> None:
    with pytest.raises(errors.Unavailable, match="nothing listens on port 9 in the sandbox"):
        await sandbox.client.tcp(9)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "example.com", "::ffff:127.0.0.1", ""])
async def test_tcp_only_reaches_loopback(sandbox: Sandbox, host: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="loopback"):
        await sandbox.client.tcp(8080, host=host)


@pytest.mark.parametrize("port", [0, 65536])
async def test_tcp_ports_out_of_range_are_invalid(sandbox: Sandbox, port: int) -> None:
    with pytest.raises(errors.InvalidArgument, match="port"):
        await sandbox.client.tcp(port)


async def test_tcp_relays_leak_nothing(sandbox: Sandbox) -> None:
    port = next(_PORTS)
    pid = await start_background(sandbox, f"httpd -f -p 127.0.0.1:{port} -h /etc")
    await (await connect_when_listening(sandbox, port)).close()
    baseline = await supervisor_resources(sandbox)

    for _ in range(20):
        async with await sandbox.client.tcp(port) as stream:
            await stream.send(b"GET /passwd HTTP/1.0\r\n\r\n")
            assert b"root:" in await receive_all(stream)

    assert await settles_at(sandbox, baseline) <= baseline
    await sandbox.client.signal(pid, signal.SIGKILL)


# Checksums -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * protocol.CHUNK + 17])
async def test_transfers_carry_the_sha256_of_their_bytes(sandbox: Sandbox, size: int) -> None:
    data = os.urandom(size)
    path = unique("sum")

    written = await sandbox.client.write_file(path, chunks_of(data), mode=0, user="", max_bytes=0)
    _, chunks = await sandbox.client.read_file(path)
    content = b"".join([chunk async for chunk in chunks])

    assert content == data
    assert written["sha256"] == chunks.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_read_closed_early_has_no_checksum(sandbox: Sandbox) -> None:
    path = unique("sum")
    await sandbox.client.write_file(path, chunks_of(os.urandom(3 * protocol.CHUNK)), mode=0, user="", max_bytes=0)
    _, chunks = await sandbox.client.read_file(path)

    await anext(chunks)
    await chunks.aclose()

    assert chunks.sha256 is None
    assert [chunk async for chunk in chunks] == []
