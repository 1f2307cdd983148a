"""The supervisor's long-lived operations without a sandbox: output buffers, the process table,
inotify events (parsed, and turned into changes on this host's own kernel), terminal keys and the
addresses a TCP relay accepts.
"""

from __future__ import annotations

import os
import signal
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch_node_agent.supervisor import protocol
from hutch_node_agent.supervisor import sandbox_supervisor as supervisor
from hutch_node_agent.supervisor.client import FsEvent, ProcessInfo

STDOUT, STDERR = protocol.STDOUT, protocol.STDERR

# Output buffers ----------------------------------------------------------------------------------


def test_output_keeps_its_order_and_streams() -> None:
    buffer = supervisor.OutputBuffer(1024)
    buffer.append(STDOUT, b"one ")
    buffer.append(STDOUT, b"two ")
    buffer.append(STDERR, b"oops ")
    buffer.append(STDOUT, b"three")

    assert buffer.read(0) == (0, [(STDOUT, b"one two "), (STDERR, b"oops "), (STDOUT, b"three")], 18)
    assert (buffer.start, buffer.end, buffer.size) == (0, 18, 18)


def test_the_oldest_output_goes_first_and_is_counted() -> None:
    buffer = supervisor.OutputBuffer(10)
    buffer.append(STDOUT, b"aaaaaa")
    buffer.append(STDERR, b"bbbbbb")

    assert buffer.read(0) == (2, [(STDOUT, b"aaaa"), (STDERR, b"bbbbbb")], 12)
    buffer.append(STDOUT, b"cccc")
    assert buffer.read(0) == (6, [(STDERR, b"bbbbbb"), (STDOUT, b"cccc")], 16)
    assert buffer.start == 6


def test_a_cursor_stays_valid_while_data_is_dropped_in_front_of_it() -> None:
    buffer = supervisor.OutputBuffer(8)
    buffer.append(STDOUT, b"01234")
    skipped, chunks, cursor = buffer.read(0, max_bytes=3)
    assert (skipped, chunks, cursor) == (0, [(STDOUT, b"012")], 3)

    buffer.append(STDOUT, b"56789")  # drops "01": still behind the cursor
    assert buffer.read(cursor) == (0, [(STDOUT, b"3456789")], 10)
    buffer.append(STDERR, b"abcdefgh")  # drops everything the cursor had not read
    assert buffer.read(cursor) == (7, [(STDERR, b"abcdefgh")], 18)


def test_reads_are_at_most_max_bytes_and_continue_where_they_stopped() -> None:
    buffer = supervisor.OutputBuffer(1 << 20)
    for index in range(10):
        buffer.append(STDOUT if index % 2 else STDERR, bytes([65 + index]) * 100)

    cursor, pieces = 0, []
    while cursor < buffer.end:
        _, chunks, cursor = buffer.read(cursor, max_bytes=150)
        assert sum(len(data) for _, data in chunks) <= 150
        pieces += chunks

    assert b"".join(data for _, data in pieces) == b"".join(bytes([65 + index]) * 100 for index in range(10))


def test_chunks_never_outgrow_a_frame() -> None:
    buffer = supervisor.OutputBuffer(4 << 20)
    for _ in range(3):
        buffer.append(STDOUT, b"x" * (protocol.CHUNK // 2 + 1))

    _, chunks, _ = buffer.read(0, max_bytes=4 << 20)
    assert all(len(data) <= protocol.CHUNK for _, data in chunks)


def test_tiny_interleaved_writes_cannot_make_the_bookkeeping_outgrow_the_data() -> None:
    buffer = supervisor.OutputBuffer(4096)
    for index in range(10_000):
        buffer.append(STDOUT if index % 2 else STDERR, b"x")

    _, chunks, _ = buffer.read(0, max_bytes=1 << 20)
    assert len(chunks) <= buffer.max_chunks == 16
    assert buffer.start + buffer.size == buffer.end == 10_000


def test_clearing_counts_as_dropped() -> None:
    buffer = supervisor.OutputBuffer(100)
    buffer.append(STDOUT, b"abc")
    buffer.clear()

    assert buffer.read(0) == (3, [], 3)


# The process table -------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[supervisor.BackgroundProcess]]:
    made: list[supervisor.BackgroundProcess] = []
    yield made
    for process in made:
        process.child.notice.close()


def finished_process(pid: int, output: bytes, made: list[supervisor.BackgroundProcess]) -> supervisor.BackgroundProcess:
    """A background process that exited with `output`, without forking anything."""
    child = supervisor.Child(pid, -1, -1, -1, supervisor.ExitNotice())
    spec = supervisor.ExecSpec(["true"], {}, "/", supervisor.find_account("root"), 0, False, background=True)
    process = supervisor.BackgroundProcess(child, spec, supervisor.TerminalSupport())
    process.output = supervisor.OutputBuffer(len(output) or 1)
    process.output.append(STDOUT, output)
    process.status = 0
    made.append(process)
    return process


def test_the_table_keeps_the_last_hundred_that_exited(processes: list[supervisor.BackgroundProcess]) -> None:
    table = supervisor.ProcessTable()
    for pid in range(1, 151):
        process = finished_process(pid, b"x", processes)
        table.add(process)
        table.finished(process)

    assert [process.pid for process in table.all()] == list(range(51, 151))
    with pytest.raises(supervisor.OpError, match="no process 50 in this sandbox"):
        table.get(50)


def test_the_oldest_output_of_exited_processes_goes_when_there_is_too_much(
    processes: list[supervisor.BackgroundProcess],
) -> None:
    table = supervisor.ProcessTable()
    four_mib = b"x" * (4 << 20)
    for pid in range(1, 7):
        process = finished_process(pid, four_mib, processes)
        table.add(process)
        table.finished(process)

    sizes = [process.output.size for process in table.all()]
    assert sizes == [0, 0, 4 << 20, 4 << 20, 4 << 20, 4 << 20]
    assert table.get(1).info()["dropped_bytes"] == 4 << 20


def test_a_new_process_with_a_reused_pid_replaces_the_old_entry(processes: list[supervisor.BackgroundProcess]) -> None:
    table = supervisor.ProcessTable()
    old = finished_process(7, b"old", processes)
    table.add(old)
    table.finished(old)
    new = finished_process(7, b"new", processes)
    new.status = None

    table.add(new)

    assert table.get(7) is new
    assert table.all() == [new]


def test_process_info_reads_back_from_the_wire(processes: list[supervisor.BackgroundProcess]) -> None:
    process = finished_process(12, b"out", processes)
    process.status = 9  # killed by SIGKILL
    process.ended_at = time.time()

    info = ProcessInfo.from_wire(process.info())

    assert (info.pid, info.args, info.cmd, info.user, info.cwd) == (12, ("true",), None, "root", "/")
    assert (info.state, info.exit_code, info.signal, info.pty, info.dropped_bytes) == ("exited", -1, 9, False, 0)


# Exec requests -----------------------------------------------------------------------------------


def test_a_terminal_runs_in_the_background_with_a_default_term() -> None:
    spec = supervisor.parse_exec_request({"args": ["sh"], "pty": {"cols": 120, "rows": 40}}, "root")

    assert (spec.terminal, spec.background, spec.stdin) == ((120, 40), True, True)
    assert spec.env["TERM"] == "xterm-256color"
    own = supervisor.parse_exec_request(
        {"args": ["sh"], "pty": {"cols": 1, "rows": 1}, "env": {"TERM": "dumb"}}, "root"
    )
    assert own.env["TERM"] == "dumb"


@pytest.mark.parametrize(
    "size", [{"cols": 0, "rows": 1}, {"cols": 1, "rows": 1001}, {"cols": True, "rows": 1}, {"rows": 5}, "80x24"]
)
def test_terminal_sizes_are_checked(size: object) -> None:
    with pytest.raises(supervisor.OpError) as raised:
        supervisor.parse_exec_request({"args": ["sh"], "pty": size}, "root")

    assert raised.value.code == "invalid_argument"


def test_background_buffers_are_bounded() -> None:
    assert supervisor.parse_exec_request({"args": ["x"]}, "root").buffer_bytes == 256 * 1024
    assert supervisor.parse_exec_request({"args": ["x"], "buffer_bytes": 4 << 20}, "root").buffer_bytes == 4 << 20
    for size in (0, (4 << 20) + 1):
        with pytest.raises(supervisor.OpError):
            supervisor.parse_exec_request({"args": ["x"], "buffer_bytes": size}, "root")


# Terminal keys -----------------------------------------------------------------------------------


def test_signal_keys_are_cut_out_of_terminal_input() -> None:
    keys = {3: int(signal.SIGINT), 28: int(signal.SIGQUIT)}

    assert supervisor.split_terminal_input(b"abc\x03def", keys) == [b"abc", signal.SIGINT, b"def"]
    assert supervisor.split_terminal_input(b"\x03\x03", keys) == [signal.SIGINT, signal.SIGINT]
    assert supervisor.split_terminal_input(b"\x1cx", keys) == [signal.SIGQUIT, b"x"]
    assert supervisor.split_terminal_input(b"plain", keys) == [b"plain"]


def test_signal_keys_follow_the_terminals_settings() -> None:
    master, slave = supervisor.open_terminal(80, 24)
    try:
        assert supervisor.signal_keys(master) == {3: signal.SIGINT, 28: signal.SIGQUIT, 26: signal.SIGTSTP}
        attributes = termios.tcgetattr(slave)
        attributes[3] &= ~termios.ISIG  # raw mode, as an editor sets it
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        assert supervisor.signal_keys(master) == {}
    finally:
        supervisor.close_fds(master, slave)


# TCP relay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "localhost", "::1"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    supervisor.loopback_family(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "10.1.2.3", "::", "::ffff:127.0.0.1", "sandbox.local", "127.1"])
def test_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(supervisor.OpError, match="loopback"):
        supervisor.loopback_family(host)


# Inotify -----------------------------------------------------------------------------------------


def inotify_event(wd: int, mask: int, cookie: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


def test_inotify_events_are_parsed_with_their_names() -> None:
    data = inotify_event(1, supervisor.IN_CREATE, 0, b"file.txt") + inotify_event(2, supervisor.IN_DELETE_SELF, 0, b"")
    data += inotify_event(1, supervisor.IN_MOVED_FROM, 77, "é".encode() * 9)

    assert supervisor.parse_inotify_events(data) == [
        (1, supervisor.IN_CREATE, 0, "file.txt"),
        (2, supervisor.IN_DELETE_SELF, 0, ""),
        (1, supervisor.IN_MOVED_FROM, 77, "é" * 9),
    ]


def test_a_truncated_event_is_left_out() -> None:
    assert supervisor.parse_inotify_events(inotify_event(1, supervisor.IN_CREATE, 0, b"x")[:10]) == []


class Changes:
    """A DirectoryWatch of a folder on this host, read without a connection."""

    def __init__(self, root: Path, recursive: bool = True) -> None:
        self.watch = supervisor.DirectoryWatch(str(root), recursive)

    def take(self) -> list[FsEvent]:
        self.watch.read_events()
        self.watch.expire_moves(time.monotonic() + supervisor.MOVE_PAIR_WINDOW_S)
        return [FsEvent.from_wire(event) for event in self.watch.take_events()]


@pytest.fixture
def changes(tmp_path: Path) -> Iterator[Changes]:
    watched = Changes(tmp_path)
    yield watched
    watched.watch.close()


def test_files_are_created_modified_renamed_and_deleted(tmp_path: Path, changes: Changes) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one")
    with path.open("a") as file:
        file.write("two")
        file.flush()
        file.write("three")
    path.rename(tmp_path / "b.txt")
    (tmp_path / "b.txt").unlink()

    assert changes.take() == [
        FsEvent("create", str(path), False),
        FsEvent("modify", str(path), False),  # the writes of one read are one event
        FsEvent("rename", str(tmp_path / "b.txt"), False, old_path=str(path)),
        FsEvent("delete", str(tmp_path / "b.txt"), False),
    ]


def test_a_new_directory_is_watched_and_what_it_already_holds_is_reported_once(
    tmp_path: Path, changes: Changes
) -> None:
    (tmp_path / "new" / "deeper").mkdir(parents=True)
    (tmp_path / "new" / "deeper" / "file").write_text("x")
    first = changes.take()
    (tmp_path / "new" / "deeper" / "later").write_text("y")

    assert first == [
        FsEvent("create", str(tmp_path / "new"), True),
        FsEvent("create", str(tmp_path / "new" / "deeper"), True),
        FsEvent("create", str(tmp_path / "new" / "deeper" / "file"), False),
    ]
    assert [(event.type, event.path) for event in changes.take()] == [
        ("create", str(tmp_path / "new" / "deeper" / "later")),
        ("modify", str(tmp_path / "new" / "deeper" / "later")),
    ]


def test_a_renamed_directory_reports_under_its_new_name(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    watched = Changes(tmp_path)
    try:
        (tmp_path / "old").rename(tmp_path / "new")
        (tmp_path / "new" / "inside").touch()

        assert watched.take() == [
            FsEvent("rename", str(tmp_path / "new"), True, old_path=str(tmp_path / "old")),
            FsEvent("create", str(tmp_path / "new" / "inside"), False),
        ]
    finally:
        watched.watch.close()


def test_a_move_out_of_the_tree_is_a_delete_and_is_no_longer_watched(tmp_path: Path) -> None:
    (tmp_path / "watched" / "dir").mkdir(parents=True)
    (tmp_path / "file").touch()
    watched = Changes(tmp_path / "watched")
    try:
        (tmp_path / "watched" / "dir").rename(tmp_path / "gone")
        (tmp_path / "gone" / "unseen").touch()
        (tmp_path / "file").rename(tmp_path / "watched" / "arrived")

        assert watched.take() == [
            FsEvent("delete", str(tmp_path / "watched" / "dir"), True),
            FsEvent("create", str(tmp_path / "watched" / "arrived"), False),
        ]
    finally:
        watched.watch.close()


def test_a_watch_that_is_not_recursive_ignores_subdirectories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    watched = Changes(tmp_path, recursive=False)
    try:
        (tmp_path / "sub" / "deep").touch()
        (tmp_path / "top").touch()

        assert watched.take() == [FsEvent("create", str(tmp_path / "top"), False)]
    finally:
        watched.watch.close()


def test_removing_the_watched_directory_ends_the_watch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    watched = Changes(root)
    try:
        root.rmdir()
        with pytest.raises(supervisor.OpError) as raised:
            watched.take()
        assert raised.value.code == "not_found"
    finally:
        watched.watch.close()


def inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass  # the fd of the listing itself, closed by now
    return count


def test_watching_needs_an_existing_directory(tmp_path: Path) -> None:
    before = inotify_instances()
    with pytest.raises(supervisor.OpError) as raised:
        supervisor.DirectoryWatch(str(tmp_path / "missing"), recursive=True)

    assert raised.value.code == "not_found"
    assert inotify_instances() == before  # the instance was closed again
