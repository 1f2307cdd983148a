"""The new `hutch` commands where no gateway is needed: argument parsing, help, what they print for
given values, and the local terminal handling of `hutch shell`."""

from __future__ import annotations

import os
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from hutch import FilesystemEvent, ProcessInfo
from hutch.cli._terminal import clamp_size, raw_mode, window_size, write_all
from hutch.cli.files import describe_event
from hutch.cli.main import main
from hutch.cli.processes import describe_command, describe_state, parse_signal
from hutch.cli.sandbox import parse_lifetime


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def hutch(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """Runs `hutch ARGS...` in this process and returns its exit status and output."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    code = exited.value.code
    return Ran(code if isinstance(code, int) else 1, captured.out, captured.err)


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A gateway address nothing listens on, so a command that got past its arguments fails with 1."""
    monkeypatch.setenv("HUTCH_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("HUTCH_API_KEY", "hk_any")
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path / "home"))
    return "127.0.0.1:9"


def _info(**fields: object) -> ProcessInfo:
    base: dict[str, object] = {
        "pid": 7,
        "args": ["/bin/bash", "-c", "sleep 100"],
        "cmd": "sleep 100",
        "user": "root",
        "cwd": "/root",
        "started_at": None,
        "running": True,
        "exit_code": None,
        "signal": 0,
        "pty": False,
        "dropped_bytes": 0,
    }
    base.update(fields)
    return ProcessInfo(**base)  # type: ignore[arg-type]


def test_process_states_in_words() -> None:
    assert describe_state(_info()) == "running"
    assert describe_state(_info(running=False, exit_code=3)) == "exited 3"
    assert describe_state(_info(running=False, exit_code=128 + 15, signal=15)) == "killed by SIGTERM"
    assert describe_state(_info(running=False, exit_code=128 + 63, signal=63)).startswith("killed by")


def test_process_commands_prefer_the_shell_line() -> None:
    assert describe_command(_info()) == "sleep 100"
    assert describe_command(_info(cmd=None, args=["python3", "-m", "http.server"])) == "python3 -m http.server"


def test_events_in_words() -> None:
    assert describe_event(FilesystemEvent("create", "/root/a")) == "create  /root/a"
    assert describe_event(FilesystemEvent("delete", "/root/d", is_dir=True)) == "delete  /root/d/"
    assert describe_event(FilesystemEvent("rename", "/root/b", old_path="/root/a")) == "rename  /root/a -> /root/b"


@pytest.mark.parametrize(("given", "number"), [("KILL", 9), ("sigterm", 15), ("2", 2)])
def test_signals_on_the_command_line(given: str, number: int) -> None:
    assert parse_signal(given) == number


def test_an_unknown_signal_is_a_usage_error() -> None:
    with pytest.raises(typer.BadParameter, match="unknown signal"):
        parse_signal("NOPE")


@pytest.mark.parametrize(
    ("given", "seconds"), [("none", None), ("NONE", None), ("off", None), ("0", None), ("90", 90.0), ("1.5", 1.5)]
)
def test_lifetimes_on_the_command_line(given: str, seconds: float | None) -> None:
    assert parse_lifetime(given) == seconds


@pytest.mark.parametrize("given", ["-3", "banana", "", "inf", "nan"])
def test_bad_lifetimes_are_usage_errors(given: str) -> None:
    with pytest.raises(typer.BadParameter, match="seconds"):
        parse_lifetime(given)


@pytest.mark.parametrize(
    "args",
    [
        ("kill-process", "sb-1", "12", "--signal", "NOPE"),
        ("kill-process", "sb-1", "not-a-pid"),
        ("sandbox", "set-timeout", "sb-1", "soon"),
        ("preview", "sb-1", "70000"),
        ("preview", "sb-1", "8080", "--expires", "0"),
        ("shell", "sb-1", "--attach", "12", "--cmd", "vi"),
        ("attach", "sb-1"),
        ("files", "watch", "sb-1"),
    ],
)
def test_bad_command_lines_exit_2(endpoint: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    ran = hutch(capsys, *args)
    assert ran.code == 2, ran.stderr


def test_good_command_lines_get_as_far_as_the_gateway(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ("ps", "sb-1"),
        ("kill-process", "sb-1", "12", "-s", "TERM"),
        ("sandbox", "set-timeout", "sb-1", "none"),
        ("preview", "sb-1", "8080", "--public"),
        ("files", "watch", "sb-1", "/root", "-r"),
    ):
        ran = hutch(capsys, *args)
        assert ran.code == 1, (args, ran.stderr)
        assert ran.stderr.startswith("error: ") and endpoint in ran.stderr


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("shell", ("--attach", "Ctrl-C", "exit")),
        ("exec", ("--background", "hutch attach")),
        ("attach", ("Ctrl-C", "detaches", "running")),
        ("kill-process", ("SIGKILL", "--signal")),
        ("ps", ("terminals",)),
        ("preview", ("--public", "--private", "--expires")),
    ],
)
def test_help_explains_the_new_commands(
    capsys: pytest.CaptureFixture[str], command: str, words: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text, (command, word)


def test_terminal_sizes_are_kept_in_range() -> None:
    assert clamp_size(120, 40) == (120, 40)
    assert clamp_size(0, 0) == (80, 24)
    assert clamp_size(5000, 3) == (1000, 3)


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A real pseudo-terminal pair on this machine: (controller, the terminal end)."""
    controller, end = os.openpty()
    try:
        yield controller, end
    finally:
        os.close(controller)
        os.close(end)


def test_window_size_comes_from_the_first_terminal(terminal: tuple[int, int]) -> None:
    _, end = terminal
    termios.tcsetwinsize(end, (33, 111))
    with open(os.devnull, "rb") as devnull:
        assert window_size(devnull.fileno(), end) == (111, 33)
        assert window_size(devnull.fileno()) == (80, 24)


def test_raw_mode_passes_keys_through_and_restores_the_terminal(terminal: tuple[int, int]) -> None:
    _, end = terminal
    before = termios.tcgetattr(end)
    with raw_mode(end) as interactive:
        assert interactive
        modes = termios.tcgetattr(end)
        # No echo, no line editing, and no signals from Ctrl-C: every key reaches the sandbox.
        assert not modes[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
    assert termios.tcgetattr(end) == before


def test_raw_mode_restores_the_terminal_after_an_error(terminal: tuple[int, int]) -> None:
    _, end = terminal
    before = termios.tcgetattr(end)
    with pytest.raises(RuntimeError), raw_mode(end):
        raise RuntimeError("boom")
    assert termios.tcgetattr(end) == before


def test_raw_mode_leaves_a_non_terminal_alone(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as plain, raw_mode(plain.fileno()) as interactive:
        assert not interactive


def test_write_all_writes_everything() -> None:
    read_end, write_end = os.pipe()
    try:
        data = os.urandom(100_000)
        received = bytearray()

        def drain() -> None:
            while len(received) < len(data):
                received.extend(os.read(read_end, 65536))

        reader = threading.Thread(target=drain)
        reader.start()
        write_all(write_end, data)
        reader.join(10)
        assert bytes(received) == data
    finally:
        os.close(read_end)
        os.close(write_end)
