"""Frames, limits and the supervisor's pure logic, without a sandbox."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from hutch.core import errors
from hutch_node_agent.supervisor import protocol
from hutch_node_agent.supervisor import sandbox_supervisor as supervisor
from hutch_node_agent.supervisor.client import SupervisorClient

# Frames ------------------------------------------------------------------------------------------


def test_frame_header_round_trips() -> None:
    frame = protocol.encode(protocol.STDOUT, b"hello")

    assert protocol.parse_header(frame[: protocol.HEADER.size]) == (protocol.STDOUT, 5)
    assert frame[protocol.HEADER.size :] == b"hello"


def test_empty_frame_has_a_payload_length_of_zero() -> None:
    assert protocol.parse_header(protocol.encode(protocol.END)) == (protocol.END, 0)


def test_json_frames_are_compact() -> None:
    frame = protocol.encode_json(protocol.RESULT, {"a": [1, 2]})

    assert frame[protocol.HEADER.size :] == b'{"a":[1,2]}'


@pytest.mark.parametrize("length", [0, protocol.MAX_FRAME + 2, 2**32 - 1])
def test_lengths_out_of_range_are_refused(length: int) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_header(protocol.HEADER.pack(length, protocol.DATA))


def test_the_largest_frame_is_accepted() -> None:
    header = protocol.HEADER.pack(protocol.MAX_FRAME + 1, protocol.DATA)

    assert protocol.parse_header(header) == (protocol.DATA, protocol.MAX_FRAME)


def test_frames_survive_being_split_across_reads() -> None:
    left, right = socket.socketpair()
    with left, right:
        frame = protocol.encode(protocol.DATA, b"x" * 1000)
        for start in range(0, len(frame), 7):
            left.sendall(frame[start : start + 7])
        left.close()

        assert supervisor.receive_frame(right) == (protocol.DATA, b"x" * 1000)
        with pytest.raises(supervisor.ConnectionClosed):
            supervisor.receive_frame(right)


def test_answers_larger_than_a_frame_are_refused() -> None:
    left, right = socket.socketpair()
    with left, right, pytest.raises(supervisor.OpError) as raised:
        supervisor.send_json(left, protocol.RESULT, {"entries": ["x" * protocol.MAX_FRAME]})

    assert raised.value.code == "resource_exhausted"


# Requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/etc/passwd", "/etc/passwd"),
        ("notes.txt", "/home/user/notes.txt"),
        ("a/../../../../etc", "/etc"),
        ("/../..", "/"),
        ("//srv//data/.", "/srv/data"),
    ],
)
def test_paths_are_absolute_and_normal(raw: str, expected: str) -> None:
    assert supervisor.resolve_path(raw, "/home/user") == expected


@pytest.mark.parametrize("raw", ["", "a\0b", None, 7, "\ud800"])
def test_unusable_paths_are_invalid(raw: object) -> None:
    with pytest.raises(supervisor.OpError) as raised:
        supervisor.resolve_path(raw, "/")

    assert raised.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("number", "code", "words"),
    [
        (errno.ENOENT, "not_found", "no such file or directory"),
        (errno.EEXIST, "already_exists", "already exists"),
        (errno.ENOTDIR, "invalid_argument", "not a directory"),
        (errno.EISDIR, "invalid_argument", "is a directory"),
        (errno.ELOOP, "invalid_argument", "symbolic links"),
        (errno.EACCES, "permission_denied", "permission denied"),
        (errno.EROFS, "permission_denied", "read-only"),
        (errno.ENOSPC, "resource_exhausted", "no space left"),
        (errno.ENOTEMPTY, "failed_precondition", "not empty"),
        (errno.EIO, "internal", "input/output error"),
    ],
)
def test_os_errors_become_domain_codes_with_plain_messages(number: int, code: str, words: str) -> None:
    error = supervisor.fs_error(OSError(number, os.strerror(number)), "read '/srv/x'")

    assert error.code == code
    assert error.message.startswith("cannot read '/srv/x': ")
    assert words in error.message


def test_every_error_code_is_a_domain_error_code() -> None:
    for code in set(supervisor.ERRNO_CODES.values()):
        assert errors.error_for_code(code, "m").code == code


def test_exec_needs_exactly_one_of_args_and_cmd() -> None:
    assert supervisor.parse_argv({"args": ["ls", "-l"]}) == ["ls", "-l"]
    assert supervisor.parse_argv({"cmd": "ls | wc"})[1:] == ["-c", "ls | wc"]
    malformed: list[dict[str, object]] = [
        {},
        {"args": ["ls"], "cmd": "ls"},
        {"args": "ls"},
        {"args": ["a\0b"]},
        {"args": [1]},
    ]
    for request in malformed:
        with pytest.raises(supervisor.OpError):
            supervisor.parse_argv(request)


@pytest.mark.parametrize("env", [{"": "x"}, {"A=B": "x"}, {"A": 1}, {"A": "x\0y"}, ["A=B"]])
def test_malformed_environments_are_invalid(env: object) -> None:
    with pytest.raises(supervisor.OpError):
        supervisor.parse_env({"env": env})


def test_exit_status_of_a_normal_exit_and_of_a_signal() -> None:
    assert supervisor.exit_report(3 << 8, timed_out=False) == {"exit_code": 3, "signal": 0, "timed_out": False}
    assert supervisor.exit_report(9, timed_out=True) == {"exit_code": -1, "signal": 9, "timed_out": True}


def test_start_failures_say_what_was_missing() -> None:
    spec = supervisor.ExecSpec(["tool"], {}, "/work", supervisor.find_account("root"), 0, stdin=False)
    missing = FileNotFoundError(errno.ENOENT, "No such file")

    assert supervisor.describe_start_failure("exec", missing, spec) == (
        "not_found",
        "executable 'tool' not found in PATH",
    )
    assert supervisor.describe_start_failure("cwd", missing, spec)[1].startswith("cannot use working directory '/work'")
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert supervisor.describe_start_failure("exec", denied, spec)[0] == "permission_denied"


def test_search_path_is_the_requests_or_the_default() -> None:
    root = supervisor.find_account("root")

    assert supervisor.ExecSpec(["ls"], {"PATH": "/opt/bin"}, "/", root, 0, False).search_path == "/opt/bin"
    assert supervisor.ExecSpec(["ls"], {}, "/", root, 0, False).search_path == supervisor.DEFAULT_PATH


# Files -------------------------------------------------------------------------------------------


def test_make_directories_reports_creation_and_refuses_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"

    assert supervisor.make_directories(str(target)) is True
    assert supervisor.make_directories(str(target)) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        supervisor.make_directories(str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError):
        supervisor.make_directories(str(tmp_path / "file" / "below"))


def test_remove_tree_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    (tree / "sub" / "link").symlink_to(outside)
    parent_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        supervisor.remove_tree(parent_fd, "tree")
    finally:
        os.close(parent_fd)

    assert not tree.exists()
    assert (outside / "keep").read_text() == "x"


# Client without a supervisor ---------------------------------------------------------------------


async def test_missing_socket_is_unavailable(tmp_path: Path) -> None:
    client = SupervisorClient(tmp_path / "missing.sock")

    with pytest.raises(errors.Unavailable, match="not answering"):
        await client.ping()
    with pytest.raises(errors.Unavailable, match="did not answer"):
        await client.wait_ready(timeout_s=0.05)


async def test_socket_without_a_listener_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))

    with pytest.raises(errors.Unavailable, match="not answering"):
        await SupervisorClient(path).ping()


async def test_call_refuses_operations_that_stream(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument):
        await SupervisorClient(tmp_path / "unused.sock").call("read", path="/etc/passwd")
