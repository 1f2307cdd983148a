"""Interactive terminals against the whole local stack: `sandbox.pty` through the SDK, and `hutch shell`
driven through tmux the way a person would use it.

Commands typed into a terminal are checked through output the terminal's echo cannot contain: `echo
$((6*7))` echoes as typed and prints 42. Every sandbox a test creates is killed afterwards.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import AsyncSandbox, ConnectionLostError, NotFoundError, Sandbox, SandboxError
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the local stack."""
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module", params=["container", "gvisor"])
def sandbox(request: pytest.FixtureRequest, connection: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox per isolation class: terminals must behave the same under both."""
    box = Sandbox.create(metadata={"suite": "e2e-terminals"}, isolation=request.param, **connection)
    try:
        yield box
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


# Escape sequences (colours, bracketed paste mode, window titles) and carriage returns: what the
# patterns below look past, so they can match whole lines.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")


class Screen:
    """Collects a terminal's output from the handle's callback thread and waits for patterns in its
    text, with escape sequences and carriage returns taken out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            self._data.extend(data)

    @property
    def text(self) -> str:
        with self._lock:
            return _CONTROL.sub("", self._data.decode("utf-8", errors="replace"))

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str] | None:
        return eventually_sync(
            lambda: re.search(pattern, self.text),
            timeout=timeout,
            message=f"{pattern!r} never appeared; the terminal showed:\n{self.text[-2000:]}",
        )


def test_a_login_shell_runs_commands_and_exit_ends_it_with_its_status(sandbox: Sandbox) -> None:
    screen = Screen()
    terminal = sandbox.pty.create(on_data=screen)
    screen.wait_for(r"[#$] $")
    terminal.send_input("echo $((6*7)); echo $0; tty\r")
    screen.wait_for(r"(?m)^42$")
    # A login shell (argv[0] starts with "-"), on a terminal of its own.
    screen.wait_for(r"(?m)^-?(/bin/)?bash\n/dev/pts/\d+$")
    assert any(info.pid == terminal.pid and info.pty and info.running for info in sandbox.commands.list())
    terminal.send_input("exit 7\r")
    assert terminal.wait() == 7
    assert terminal.exit_code == 7


def test_resize_reaches_the_programs_in_the_terminal(sandbox: Sandbox) -> None:
    screen = Screen()
    terminal = sandbox.pty.create(cols=80, rows=24, on_data=screen)
    try:
        terminal.send_input("stty size; echo $TERM\r")
        screen.wait_for(r"(?m)^24 80\nxterm-256color$")
        terminal.resize(cols=132, rows=43)
        terminal.send_input("stty size\r")
        screen.wait_for(r"(?m)^43 132$")
    finally:
        terminal.kill()


def test_an_interactive_cat_echoes_and_ctrl_d_ends_it(sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    if sandbox.get_info().isolation == "gvisor":
        request.applymarker(
            pytest.mark.xfail(
                reason="gVisor's terminals ignore Ctrl-D (VEOF) on an empty line: cat never reads end of file",
                strict=True,
            )
        )
    screen = Screen()
    terminal = sandbox.pty.create(cmd=["cat"], on_data=screen)
    try:
        terminal.send_input(b"hello\r")
        # Once echoed by the terminal, once written back by cat.
        screen.wait_for(r"(?m)^hello\nhello$")
        terminal.send_input(b"\x04")
        eventually_sync(lambda: terminal.exit_code is not None, timeout=10, message="cat did not end on Ctrl-D")
        assert terminal.wait() == 0
    finally:
        terminal.kill()


def test_ctrl_c_interrupts_the_foreground_program(sandbox: Sandbox) -> None:
    screen = Screen()
    terminal = sandbox.pty.create(on_data=screen)
    try:
        terminal.send_input("sleep 100\r")
        screen.wait_for(r"sleep 100\n")
        time.sleep(0.5)
        started = time.monotonic()
        terminal.send_input(b"\x03")
        terminal.send_input("echo after-$((1+1))\r")
        screen.wait_for(r"(?m)^after-2$", timeout=20)
        assert time.monotonic() - started < 20
    finally:
        terminal.kill()


def test_a_terminal_outlives_its_client_and_can_be_taken_up_again(sandbox: Sandbox, connection: dict[str, str]) -> None:
    mark = uuid.uuid4().hex[:8]
    screen = Screen()
    terminal = sandbox.pty.create(on_data=screen)
    terminal.send_input(f"MARK={mark}; echo set-$((2+3))\r")
    screen.wait_for(r"(?m)^set-5$")
    terminal.disconnect()
    with pytest.raises(ConnectionLostError, match=rf"pty\.connect\({terminal.pid}\)"):
        terminal.wait()

    # Another connection, as another program would make it.
    other = Sandbox.connect(sandbox.id, **connection)
    try:
        again_screen = Screen()
        again = other.pty.connect(terminal.pid, on_data=again_screen)
        # What the terminal showed before is replayed, then it answers as before.
        again_screen.wait_for(r"set-5")
        again.resize(100, 30)
        again.send_input("echo $MARK\r")
        again_screen.wait_for(rf"(?m)^{mark}$")
        assert again.kill()
        assert again.wait() == 128 + 9
    finally:
        other.close()


def test_iterating_a_terminal_without_a_handler(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(cmd="printf 'one\\ntwo\\n'")
    output = b"".join(terminal)
    assert output == b"one\r\ntwo\r\n"
    assert terminal.wait() == 0


def test_a_terminal_for_another_user_in_another_directory(sandbox: Sandbox) -> None:
    screen = Screen()
    # nobody's login shell is nologin: the terminal falls back to bash.
    terminal = sandbox.pty.create(on_data=screen, user="nobody", cwd="/tmp", envs={"GREETING": "hi"})
    terminal.send_input("echo $(id -un):$(pwd):$GREETING:$((1+1))\r")
    screen.wait_for(r"(?m)^nobody:/tmp:hi:2$")
    terminal.send_input("exit\r")
    assert terminal.wait() == 0


async def test_the_async_api(connection: dict[str, str]) -> None:
    box = await AsyncSandbox.create(**connection)
    try:
        received = bytearray()

        async def on_data(data: bytes) -> None:
            received.extend(data)

        terminal = await box.pty.create(cols=90, rows=20, on_data=on_data)
        await terminal.send_input("stty size; exit 3\r")
        assert await terminal.wait() == 3
        assert b"20 90\r\n" in received
    finally:
        await box.kill()


# `hutch shell`, driven through tmux: a real terminal on this side too.


def _executable() -> str:
    found = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert found, "the hutch console script is not installed"
    return found


class Tmux:
    """A tmux server of the test's own (its own socket), so no user configuration or session leaks in."""

    def __init__(self, env: dict[str, str]) -> None:
        self._socket = f"hutch-test-{uuid.uuid4().hex[:8]}"
        self._env = env

    def __call__(self, *args: str) -> str:
        ran = subprocess.run(
            ["tmux", "-L", self._socket, "-f", "/dev/null", *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return ran.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "main")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str] | None:
        return eventually_sync(
            lambda: re.search(pattern, self.screen()),
            timeout=timeout,
            interval=0.2,
            message=f"{pattern!r} never appeared in the tmux pane:\n{self.screen()}",
        )

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "main", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self._socket, "kill-server"], capture_output=True, timeout=30, check=False)


@pytest.fixture
def tmux(local_stack: Any) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    server = Tmux({**local_stack.env, "TERM": "xterm-256color"})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def shell_sandbox(connection: dict[str, str]) -> Iterator[Sandbox]:
    box = Sandbox.create(metadata={"suite": "e2e-hutch-shell"}, **connection)
    try:
        yield box
    finally:
        box.kill()
        box.close()


def test_hutch_shell_in_a_real_terminal(tmux: Tmux, shell_sandbox: Sandbox) -> None:
    # The outer shell checks that hutch restored the terminal's modes and reports hutch's status,
    # then stays, so the pane can still be read.
    script = (
        f"before=$(stty -g); {_executable()} shell {shell_sandbox.id}; code=$?; "
        '[ "$before" = "$(stty -g)" ] && echo TERMINAL-RESTORED; echo "HUTCH-EXITED-$code"; sleep 600'
    )
    tmux("new-session", "-d", "-s", "main", "-x", "100", "-y", "30", "sh", "-c", script)
    tmux.wait_for(r"(?m)[#$]\s*$")

    tmux.keys("echo $((6*7))", "Enter")
    tmux.wait_for(r"(?m)^42$")

    # The remote terminal has the local window's size, and follows it when it changes.
    tmux.keys("stty size", "Enter")
    tmux.wait_for(r"(?m)^30 100$")
    tmux("resize-window", "-t", "main", "-x", "120", "-y", "40")
    tmux.keys("clear; stty size", "Enter")
    tmux.wait_for(r"(?m)^40 120$")

    # A full-screen program draws, and leaves.
    tmux.keys("clear; vi /tmp/notes.txt", "Enter")
    tmux.wait_for(r"(?m)^~\s*$")
    tmux.keys("Escape", ":q!", "Enter")
    # Typed only once vi has gone and the shell prompts again: keys sent while vi is still
    # restoring the terminal can be discarded with its unread input.
    tmux.wait_for(r"(?m)\A(?![\s\S]*^~\s*$)[\s\S]*[#$]\s*\Z")
    tmux.keys("clear; echo back-$((3*3))", "Enter")
    tmux.wait_for(r"(?m)^back-9$")

    # Ctrl-C goes to the remote program, not to hutch.
    tmux.keys("sleep 100", "Enter")
    time.sleep(1)
    tmux.keys("C-c")
    tmux.keys("echo interrupted-$((5*5))", "Enter")
    tmux.wait_for(r"(?m)^interrupted-25$", timeout=15)

    tmux.keys("exit 3", "Enter")
    tmux.wait_for(r"HUTCH-EXITED-3")
    assert "TERMINAL-RESTORED" in tmux.screen()


def test_hutch_shell_attach_takes_up_a_running_terminal(tmux: Tmux, shell_sandbox: Sandbox) -> None:
    screen = Screen()
    terminal = shell_sandbox.pty.create(on_data=screen)
    terminal.send_input("PS1='attached> '; echo ready-$((4*4))\r")
    screen.wait_for(r"ready-16")
    terminal.disconnect()

    script = f'{_executable()} shell {shell_sandbox.id} --attach {terminal.pid}; echo "HUTCH-EXITED-$?"; sleep 600'
    tmux("new-session", "-d", "-s", "main", "-x", "90", "-y", "25", "sh", "-c", script)
    tmux.keys("stty size; echo still-$((2*21))", "Enter")
    tmux.wait_for(r"(?m)^still-42$")
    assert re.search(r"(?m)^25 90$", tmux.screen())
    tmux.keys("exit 4", "Enter")
    tmux.wait_for(r"HUTCH-EXITED-4")
