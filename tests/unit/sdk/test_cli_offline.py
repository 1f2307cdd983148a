"""The `hutch` CLI where no gateway is needed: help, usage errors, configuration and plumbing.

Every command here runs in-process against a closed loopback port, so one that tried to reach a
gateway would fail with exit status 1 instead of the status a test expects.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from hutch.cli import execute, local
from hutch.cli.main import app as cli_app
from hutch.cli.main import main


def closed_port() -> int:
    """A loopback port nothing listens on: bound once to pick it, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Points the CLI at a closed port, with an empty HUTCH_HOME so no real config leaks in."""
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HUTCH_ENDPOINT", address)
    monkeypatch.setenv("HUTCH_API_KEY", "hk_any")
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HUTCH_INSECURE", raising=False)
    return address


def hutch(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """Runs `hutch ARGS...` in this process and returns its exit status and output."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    code = exited.value.code
    return Ran(code if isinstance(code, int) else 1, captured.out, captured.err)


def test_help_documents_exit_statuses(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    ran = hutch(capsys, "--help")
    assert ran.code == 0
    for words in ("Exit status", "124", "125", "130"):
        assert words in ran.stdout


def test_bad_key_value_is_a_usage_error(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    ran = hutch(capsys, "sandbox", "create", "--metadata", "no-equals-sign")
    assert ran.code == 2
    assert "KEY=VALUE" in ran.stderr


def test_missing_key_exits_3_and_says_where_to_get_one(
    endpoint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUTCH_API_KEY")
    ran = hutch(capsys, "sandbox", "list")
    assert ran.code == 3
    assert ran.stderr.startswith("error: ") and ran.stderr.count("\n") == 1
    assert "hutch local up" in ran.stderr


def test_unreachable_gateway_is_one_line_pointing_at_local_status(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = hutch(capsys, "sandbox", "list")
    assert ran.code == 1
    assert ran.stderr.startswith("error: ") and ran.stderr.count("\n") == 1
    assert endpoint in ran.stderr and "hutch local status" in ran.stderr
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("failure", "explanation"),
    [
        (ModuleNotFoundError("No module named 'hutch.local'", name="hutch.local"), "pip install hutch-local"),
        (ImportError("cannot import name 'x'"), "could not be loaded"),
    ],
)
def test_local_explains_itself_when_hutch_local_cannot_be_imported(
    failure: ImportError, explanation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(name: str) -> ModuleType:
        raise failure

    monkeypatch.setattr(local.importlib, "import_module", fail)
    app = typer.Typer()
    app.command("version")(lambda: None)
    local.mount(app)
    ran = CliRunner().invoke(app, ["local", "up", "--anything"])
    assert ran.exit_code == 1
    assert explanation in ran.output


def test_local_mounts_hutch_local_when_installed() -> None:
    pytest.importorskip("hutch.local.cli")
    ran = CliRunner().invoke(cli_app, ["local", "--help"])
    assert ran.exit_code == 0
    assert "up" in ran.output


def test_exec_passes_stdin_only_when_it_can_carry_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        assert execute._stdin_to_pass() is None
    piped = tmp_path / "input.txt"
    piped.write_text("data")
    with piped.open() as source:
        monkeypatch.setattr(sys, "stdin", source)
        assert execute._stdin_to_pass() is source.buffer
    monkeypatch.setattr(sys, "stdin", None)
    assert execute._stdin_to_pass() is None
