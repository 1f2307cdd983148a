"""`hutch local up --regions 2` from the command line: `up`, `status` and `down` of a two-region stack
of servers only. The full two-region stack (services and all) is checked in tests/e2e/test_regions_e2e.py,
beside the cross-region tests that use it, so that it starts once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.local import stack
from hutch.testing.local_stack import missing_services

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_services()), reason="services not installed yet"),
]

ALL_FREE = ",".join(f"{name}=0" for name in stack.default_ports())


@pytest.fixture
def home(server_tmp_path: Path) -> Iterator[Path]:
    """A HUTCH_HOME whose stack is always brought down at the end, whatever the test did."""
    yield server_tmp_path
    stack.down(server_tmp_path)


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUTCH_HOME": str(home), "HUTCH_LOCAL_PORTS": ALL_FREE, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hutch.local", *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_up_status_down_of_two_regions_from_the_command_line(home: Path) -> None:
    up = run_cli(home, "up", "--detach", "--no-services", "--regions", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "region local-2" in up.stdout and "hutch_local_2" in up.stdout
    second_home = home / "local" / "regions" / "local-2"
    states = [stack.read_state(home), stack.read_state(second_home)]
    assert [state.region for state in states if state is not None] == ["local", "local-2"]
    pids = [c.pid for state in states if state is not None for c in state.components if c.pid is not None]
    assert len(pids) == 4  # NATS, PostgreSQL and S3 of the first region, NATS of the second

    again = run_cli(home, "up", "--detach", "--no-services", "--regions", "2")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

    status = run_cli(home, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "region local\n" in status.stdout and "region local-2" in status.stdout
    assert status.stdout.count("healthy") == 6

    down = run_cli(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.index("local-2/nats") < down.stdout.index("postgres")
    assert not (home / "local" / "stack.json").exists()
    assert not (second_home / "local" / "stack.json").exists()
    assert not any(pid_running(pid) for pid in pids)
    assert run_cli(home, "status").returncode == 3
