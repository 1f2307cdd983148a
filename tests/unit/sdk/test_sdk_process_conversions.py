"""Background processes, terminals and watches where no gateway is needed: the values the SDK builds
from messages, the requests it builds from arguments, and the checks that refuse bad arguments."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch import (
    AsyncSandbox,
    EntryInfo,
    FilesystemEvent,
    InvalidArgumentError,
    ProcessInfo,
    SandboxInfo,
    SandboxState,
)
from hutch._config import resolve
from hutch._connection import Connection
from hutch._convert import port_number, process_config, signal_number, terminal_size
from hutch.commands import _stdin_parts
from hutch.pty import LOGIN_SHELL
from hutch.v1 import files_pb2, process_pb2, sandbox_pb2


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_running_process_has_no_exit_code() -> None:
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = process_pb2.ProcessInfo(
        pid=42,
        args=["/bin/bash", "-c", "sleep 5"],
        cmd="sleep 5",
        user="root",
        cwd="/root",
        started_at=_stamp(started),
        running=True,
        pty=False,
        dropped_bytes=7,
    )
    info = ProcessInfo.from_proto(message)
    assert info == ProcessInfo(
        pid=42,
        args=["/bin/bash", "-c", "sleep 5"],
        cmd="sleep 5",
        user="root",
        cwd="/root",
        started_at=started,
        running=True,
        exit_code=None,
        signal=0,
        pty=False,
        dropped_bytes=7,
    )


def test_an_ended_process_reports_its_status_and_a_signal_as_128_plus_n() -> None:
    exited = ProcessInfo.from_proto(process_pb2.ProcessInfo(pid=1, args=["true"], exit_code=3))
    assert (exited.running, exited.exit_code, exited.signal, exited.cmd, exited.started_at) == (
        False,
        3,
        0,
        None,
        None,
    )
    killed = ProcessInfo.from_proto(process_pb2.ProcessInfo(pid=2, exit_code=-1, signal=signal.SIGTERM, pty=True))
    assert (killed.exit_code, killed.signal, killed.pty) == (128 + 15, 15, True)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (files_pb2.FILESYSTEM_EVENT_TYPE_CREATE, "create"),
        (files_pb2.FILESYSTEM_EVENT_TYPE_MODIFY, "modify"),
        (files_pb2.FILESYSTEM_EVENT_TYPE_DELETE, "delete"),
        (files_pb2.FILESYSTEM_EVENT_TYPE_RENAME, "rename"),
    ],
)
def test_filesystem_events_convert(kind: int, expected: str) -> None:
    message = files_pb2.FilesystemEvent(type=kind, path="/root/a", is_dir=True)  # type: ignore[arg-type]
    assert FilesystemEvent.from_proto(message) == FilesystemEvent(expected, "/root/a", True, None)  # type: ignore[arg-type]


def test_a_rename_keeps_where_it_came_from() -> None:
    message = files_pb2.FilesystemEvent(
        type=files_pb2.FILESYSTEM_EVENT_TYPE_RENAME, path="/root/new", old_path="/root/old"
    )
    assert FilesystemEvent.from_proto(message) == FilesystemEvent("rename", "/root/new", False, "/root/old")


@pytest.mark.parametrize(
    "kind", [files_pb2.FILESYSTEM_EVENT_TYPE_WATCHING, files_pb2.FILESYSTEM_EVENT_TYPE_UNSPECIFIED, 99]
)
def test_the_watching_marker_and_unknown_types_are_not_events(kind: int) -> None:
    assert FilesystemEvent.from_proto(files_pb2.FilesystemEvent(type=kind, path="/x")) is None  # type: ignore[arg-type]


def test_sandbox_info_carries_public_ports_and_expiry() -> None:
    expires = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    message = sandbox_pb2.Sandbox(id="sb-1", state=sandbox_pb2.SANDBOX_STATE_RUNNING, public_ports=[8080, 3000])
    message.expires_at.CopyFrom(_stamp(expires))
    info = SandboxInfo.from_proto(message)
    assert (info.public_ports, info.expires_at, info.state) == ([3000, 8080], expires, SandboxState.RUNNING)
    bare = SandboxInfo.from_proto(sandbox_pb2.Sandbox(id="sb-2"))
    assert (bare.public_ports, bare.expires_at) == ([], None)


def test_terminal_sizes_are_checked() -> None:
    assert terminal_size(80, 24) == process_pb2.TerminalSize(cols=80, rows=24)
    assert terminal_size(1, 1000) == process_pb2.TerminalSize(cols=1, rows=1000)
    for cols, rows in [(0, 24), (80, 0), (1001, 24), (80, -1), (True, 24), (80.5, 24)]:
        with pytest.raises(InvalidArgumentError, match="from 1 to 1000"):
            terminal_size(cols, rows)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "number"),
    [(9, 9), (signal.SIGTERM, 15), ("TERM", 15), ("sigterm", 15), ("SIGHUP", 1), (" int ", 2), ("15", 15), (64, 64)],
)
def test_signals_by_number_member_or_name(given: int | str, number: int) -> None:
    assert signal_number(given) == number


@pytest.mark.parametrize("given", [0, 65, -9, "BOGUS", "SIG", "", "1.5", True, "SIG_DFL"])
def test_unknown_signals_are_refused(given: int | str) -> None:
    with pytest.raises(InvalidArgumentError, match="signal"):
        signal_number(given)


def test_ports_are_checked() -> None:
    assert port_number(8080) == 8080
    for bad in (0, 65536, -1, True):
        with pytest.raises(InvalidArgumentError, match="port"):
            port_number(bad)


def test_background_and_terminal_configs() -> None:
    background = process_config("sb-1", "python3 -m http.server", background=True)
    assert (background.background, background.stdin, background.HasField("pty")) == (True, False, False)
    terminal = process_config("sb-1", ["vi"], pty=terminal_size(100, 30), envs={"TERM": "xterm"})
    # A terminal is always in the background, and its keys travel on stdin.
    assert (terminal.background, terminal.stdin, terminal.pty.cols, terminal.pty.rows) == (True, True, 100, 30)
    assert list(terminal.args) == ["vi"]
    foreground = process_config("sb-1", "true")
    assert (foreground.background, foreground.HasField("pty")) == (False, False)


def test_stdin_true_keeps_stdin_open_only_in_the_background() -> None:
    assert _stdin_parts(True, background=True) == (True, None)
    assert _stdin_parts(b"data", background=True) == (True, b"data")
    assert _stdin_parts(None, background=True) == (False, None)
    assert _stdin_parts(False, background=False) == (False, None)
    with pytest.raises(InvalidArgumentError, match="background=True"):
        _stdin_parts(True, background=False)


async def test_bad_arguments_fail_before_any_call() -> None:
    # Nothing listens at this endpoint: a request that got as far as the network would fail otherwise.
    connection = Connection(resolve(api_key="hk_any", endpoint="127.0.0.1:9"))
    sandbox = AsyncSandbox(
        SandboxInfo(id="sb-1", name=None, template="base", state=SandboxState.RUNNING, cpu=1, memory_mb=512), connection
    )
    try:
        with pytest.raises(InvalidArgumentError, match="cols"):
            await sandbox.pty.create(cols=0)
        with pytest.raises(InvalidArgumentError, match="signal"):
            await sandbox.commands.kill(1, "NOPE")
        with pytest.raises(InvalidArgumentError, match="port"):
            await sandbox.get_preview_url(0)
        with pytest.raises(InvalidArgumentError, match="expires_in"):
            await sandbox.get_preview_url(8080, expires_in=0)
        with pytest.raises(InvalidArgumentError, match="timeout"):
            await sandbox.set_timeout(-5)
        with pytest.raises(InvalidArgumentError, match="background=True"):
            await sandbox.commands.run("cat", stdin=True)  # type: ignore[call-overload]
    finally:
        await connection.close()


def _login_shell_of(user: str) -> str:
    """Runs the SDK's default terminal command here, as `user` would get it, and reports which
    program it ended up executing (the shell reads its commands from stdin, not a terminal)."""
    ran = subprocess.run(
        list(LOGIN_SHELL),
        input="readlink -f /proc/$$/exe\n",
        env={"USER": user, "PATH": os.defpath, "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return ran.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not Path("/proc/self/exe").exists(), reason="needs /proc")
def test_the_default_terminal_runs_the_users_login_shell() -> None:
    root_shell = pwd.getpwnam("root").pw_shell
    assert _login_shell_of("root") == os.path.realpath(root_shell)


@pytest.mark.skipif(shutil.which("bash") is None or not Path("/proc/self/exe").exists(), reason="needs bash and /proc")
def test_users_who_may_not_log_in_and_unknown_users_get_bash() -> None:
    bash = os.path.realpath("/bin/bash")
    assert _login_shell_of(f"no-such-user-{os.getpid()}") == bash
    nologin = [entry.pw_name for entry in pwd.getpwall() if entry.pw_shell.endswith(("nologin", "false"))]
    if nologin:
        assert _login_shell_of(nologin[0]) == bash


def test_a_write_answer_carries_the_checksum() -> None:
    digest = "AB" * 32
    info = EntryInfo.from_proto(files_pb2.FileInfo(path="/root/f", name="f", sha256=digest))
    assert info.sha256 == digest.lower()
    assert EntryInfo.from_proto(files_pb2.FileInfo(path="/root/f")).sha256 is None
