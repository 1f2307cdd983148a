"""The `hutch` commands for background processes, watches, previews and lifetimes against the whole
local stack, run as subprocesses like a user would run them."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import NotFoundError, Sandbox, SandboxError, SandboxState
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


def _executable() -> str:
    # The console script next to this interpreter, so the test runs the hutch this checkout installed.
    found = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert found, "the hutch console script is not installed"
    return found


def hutch(local_stack: Any, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Runs `hutch ARGS...` against the local stack with stdin from /dev/null."""
    return subprocess.run(
        [_executable(), *args],
        env=local_stack.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def sandbox(local_stack: Any) -> Iterator[Sandbox]:
    box = Sandbox.create(
        metadata={"suite": "e2e-cli-processes"}, api_key=local_stack.api_key, endpoint=local_stack.endpoint
    )
    try:
        yield box
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        box.close()


def test_exec_background_ps_attach_and_kill_process(local_stack: Any, sandbox: Sandbox) -> None:
    go = f"/tmp/go-{uuid.uuid4().hex[:8]}"
    started = hutch(
        local_stack,
        *("exec", "--background", sandbox.id, "--"),
        f"echo early; echo oops >&2; while [ ! -e {go} ]; do sleep 0.05; done; echo late; exit 6",
    )
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())

    listed = hutch(local_stack, "ps", sandbox.id)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if re.search(rf"\b{pid}\b", line))
    assert "running" in row and "echo early" in row
    as_json = json.loads(hutch(local_stack, "ps", sandbox.id, "--json").stdout)
    assert {entry["pid"]: entry["running"] for entry in as_json}[pid] is True

    # attach replays what ran before it, then follows until the command exits with its status.
    follower = subprocess.Popen(
        [_executable(), "attach", sandbox.id, str(pid)],
        env=local_stack.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        sandbox.files.write(go, "")
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert (follower.returncode, out, err) == (6, "early\nlate\n", "oops\n")

    sleeper = int(hutch(local_stack, "exec", "-b", sandbox.id, "--", "sleep", "300").stdout.strip())
    killed = hutch(local_stack, "kill-process", sandbox.id, str(sleeper), "--signal", "TERM")
    assert killed.returncode == 0, killed.stderr
    ended = eventually_sync(
        lambda: next(p for p in sandbox.commands.list() if p.pid == sleeper and not p.running),
        retry_on=(StopIteration,),
    )
    assert ended.signal == signal.SIGTERM
    assert "killed by SIGTERM" in hutch(local_stack, "ps", sandbox.id).stdout
    missing = hutch(local_stack, "kill-process", sandbox.id, "999999")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")


def test_ctrl_c_detaches_attach_and_leaves_the_command_running(local_stack: Any, sandbox: Sandbox) -> None:
    pid = int(hutch(local_stack, "exec", "-b", sandbox.id, "--", "while true; do echo tick; sleep 0.2; done").stdout)
    try:
        follower = subprocess.Popen(
            [_executable(), "attach", sandbox.id, str(pid)],
            env=local_stack.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        assert follower.stdout.readline() == "tick\n"
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
        assert follower.returncode == 130
        assert "keeps running" in err
        assert next(p for p in sandbox.commands.list() if p.pid == pid).running
    finally:
        sandbox.commands.kill(pid)


def test_files_watch_prints_events_as_they_happen(local_stack: Any, sandbox: Sandbox) -> None:
    directory = f"/tmp/cli-watch-{uuid.uuid4().hex[:8]}"
    sandbox.files.make_dir(directory)
    watcher = subprocess.Popen(
        [_executable(), "files", "watch", sandbox.id, directory, "--recursive"],
        env=local_stack.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def collect() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        # The watch is in place some time after hutch starts: create probes until one is reported.
        probes = iter(range(1000))

        def probed() -> str | None:
            sandbox.commands.run(f"touch {directory}/probe-{next(probes)}")
            return next((line.split()[-1] for line in lines if line.startswith(f"create  {directory}/probe-")), None)

        probe = eventually_sync(probed, timeout=60, interval=0.5)
        sandbox.commands.run(f"mkdir {directory}/sub")
        # A move into a directory the watch has not reached yet would be a delete and a create.
        eventually_sync(lambda: f"create  {directory}/sub/" in lines, timeout=30)
        sandbox.commands.run(f"mv {probe} {directory}/sub/moved")
        eventually_sync(lambda: f"rename  {probe} -> {directory}/sub/moved" in lines, timeout=30)
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
        assert watcher.returncode == 130
    finally:
        watcher.kill()
        reader.join(10)


def test_preview_prints_a_url(local_stack: Any, sandbox: Sandbox) -> None:
    private = hutch(local_stack, "preview", sandbox.id, "8080", "--expires", "60")
    assert private.returncode == 0, private.stderr
    assert re.fullmatch(rf"http://8080-{sandbox.id}\.localhost(:\d+)?/\?hutch_token=\S+\n", private.stdout)
    public = hutch(local_stack, "preview", sandbox.id, "8080", "--public")
    assert public.returncode == 0, public.stderr
    assert "hutch_token" not in public.stdout
    assert 8080 in sandbox.get_info().public_ports
    assert "8080" in hutch(local_stack, "sandbox", "get", sandbox.id).stdout
    again = hutch(local_stack, "preview", sandbox.id, "8080", "--private")
    assert "hutch_token" in again.stdout
    assert 8080 not in sandbox.get_info().public_ports


def test_sandbox_set_timeout(local_stack: Any) -> None:
    box = Sandbox.create(api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    try:
        kept = hutch(local_stack, "sandbox", "set-timeout", box.id, "600")
        assert kept.returncode == 0, kept.stderr
        assert kept.stdout.startswith(f"{box.id} expires ")
        assert box.get_info().expires_at is not None
        forever = hutch(local_stack, "sandbox", "set-timeout", box.id, "none")
        assert forever.stdout == f"{box.id} lives until killed\n"
        assert box.get_info().expires_at is None
        assert hutch(local_stack, "sandbox", "set-timeout", box.id, "2").returncode == 0
        eventually_sync(lambda: box.get_info().state == SandboxState.KILLED, timeout=30)
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        box.close()
