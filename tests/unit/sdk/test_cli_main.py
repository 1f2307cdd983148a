"""The `hutch` CLI against the fake gateway: output, errors and exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from hutch import Sandbox
from hutch.cli import execute, local
from hutch.cli.main import app as cli_app
from hutch.cli.main import main


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


Hutch = Callable[..., Ran]


@pytest.fixture
def hutch(hutch_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Iterator[Hutch]:
    """Runs `hutch ARGS...` in this process and returns its exit status and output."""

    def run(*args: str) -> Ran:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        code = exited.value.code
        return Ran(code if isinstance(code, int) else 1, captured.out, captured.err)

    yield run


def _subprocess(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hutch.cli", *args],
        env=env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def sandbox_id(connection: dict[str, str]) -> Iterator[str]:
    with Sandbox.create(**connection) as box:
        yield box.id


def test_help_documents_exit_statuses(hutch: Hutch) -> None:
    ran = hutch("--help")
    assert ran.code == 0
    for words in ("Exit status", "124", "125", "130"):
        assert words in ran.stdout


def test_sandbox_lifecycle(hutch: Hutch) -> None:
    created = hutch("sandbox", "create", "--name", "cli-box", "-m", "team=cli", "-e", "A=1", "--cpu", "0.5")
    assert created.code == 0, created.stderr
    sandbox_id = created.stdout.strip()
    assert sandbox_id.startswith("sb-")

    listed = hutch("sandbox", "list", "--metadata", "team=cli", "--json")
    assert [entry["id"] for entry in json.loads(listed.stdout)] == [sandbox_id]
    table = hutch("sandbox", "list")
    assert sandbox_id in table.stdout and "cli-box" in table.stdout

    got = hutch("sandbox", "get", "cli-box", "--json")
    info = json.loads(got.stdout)
    assert (info["id"], info["state"], info["cpu"], info["metadata"]) == (sandbox_id, "running", 0.5, {"team": "cli"})
    assert "running" in hutch("sandbox", "get", sandbox_id).stdout

    killed = hutch("sandbox", "kill", sandbox_id)
    assert (killed.code, killed.stdout.strip()) == (0, sandbox_id)
    again = hutch("sandbox", "kill", sandbox_id, "sb-missing")
    assert again.code == 1
    assert again.stderr.count("error: ") == 2
    assert sandbox_id in hutch("sandbox", "list", "--all", "--json").stdout


def test_errors_are_one_clean_line(hutch: Hutch, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = hutch("sandbox", "get", "sb-nope")
    assert missing.code == 1
    assert missing.stderr.startswith("error: get sandbox sb-nope:")
    assert "Traceback" not in missing.stderr

    monkeypatch.setenv("HUTCH_API_KEY", "hk_wrong")
    rejected = hutch("sandbox", "list")
    assert (rejected.code, rejected.stderr.count("\n")) == (3, 1)

    monkeypatch.delenv("HUTCH_API_KEY")
    no_key = hutch("sandbox", "list")
    assert no_key.code == 3
    assert "hutch local up" in no_key.stderr

    monkeypatch.setenv("HUTCH_API_KEY", "hk_any")
    monkeypatch.setenv("HUTCH_ENDPOINT", "127.0.0.1:1")
    unreachable = hutch("sandbox", "list")
    assert unreachable.code == 1
    assert "hutch local status" in unreachable.stderr


def test_bad_key_value_is_a_usage_error(hutch: Hutch) -> None:
    ran = hutch("sandbox", "create", "--metadata", "no-equals-sign")
    assert ran.code == 2
    assert "KEY=VALUE" in ran.stderr


def test_files_commands(hutch: Hutch, sandbox_id: str, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    local.write_bytes(data)
    assert hutch("files", "mkdir", sandbox_id, "/tmp/up").code == 0
    assert hutch("files", "put", sandbox_id, str(local), "/tmp/up/").code == 0

    listing = json.loads(hutch("files", "ls", sandbox_id, "/tmp/up", "--json").stdout)
    assert [(entry["name"], entry["size"], entry["type"]) for entry in listing] == [("payload.bin", len(data), "file")]
    assert "payload.bin" in hutch("files", "ls", sandbox_id, "/tmp/up").stdout

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    assert hutch("files", "get", sandbox_id, "/tmp/up/payload.bin", str(downloads)).code == 0
    assert (downloads / "payload.bin").read_bytes() == data
    assert [path.name for path in downloads.iterdir()] == ["payload.bin"]

    assert hutch("files", "rm", sandbox_id, "/tmp/up").code == 1
    assert hutch("files", "rm", "-r", sandbox_id, "/tmp/up").code == 0
    assert hutch("files", "get", sandbox_id, "/tmp/up/payload.bin", str(tmp_path / "x")).code == 1
    assert not (tmp_path / "x").exists()


def test_files_cat_writes_raw_bytes(hutch_env: dict[str, str], connection: dict[str, str]) -> None:
    data = bytes(range(256)) * 100
    with Sandbox.create(**connection) as box:
        box.files.write("/tmp/raw", data)
        ran = _subprocess(hutch_env, "files", "cat", box.id, "/tmp/raw")
        assert (ran.returncode, ran.stdout) == (0, data)
        put = _subprocess(hutch_env, "files", "put", box.id, "-", "/tmp/from-stdin", stdin=b"piped")
        assert put.returncode == 0, put.stderr
        assert box.files.read("/tmp/from-stdin") == "piped"


def test_exec(hutch_env: dict[str, str], sandbox_id: str) -> None:
    ran = _subprocess(hutch_env, "exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"out\n", b"err\n")
    assert _subprocess(hutch_env, "exec", sandbox_id, "--", "sh", "-c", "exit 7").returncode == 7
    assert _subprocess(hutch_env, "exec", sandbox_id, "--", "echo $((6 * 7))").stdout == b"42\n"
    options = _subprocess(hutch_env, "exec", "-w", "/tmp", "-e", "X=y", sandbox_id, "--", "sh", "-c", "echo $X; pwd")
    assert options.stdout.decode().splitlines()[0] == "y"
    assert options.stdout.decode().splitlines()[1].endswith("/tmp")


def test_exec_passes_binary_stdin_and_output_through(hutch_env: dict[str, str], sandbox_id: str) -> None:
    data = os.urandom(2 * 1024 * 1024)
    ran = _subprocess(hutch_env, "exec", sandbox_id, "--", "cat", stdin=data)
    assert ran.returncode == 0
    assert ran.stdout == data


def test_exec_failures(hutch_env: dict[str, str], sandbox_id: str) -> None:
    timed_out = _subprocess(hutch_env, "exec", "--timeout", "0.5", sandbox_id, "--", "sleep", "30")
    assert timed_out.returncode == 124
    assert b"error: " in timed_out.stderr
    missing = _subprocess(hutch_env, "exec", "sb-missing", "--", "true")
    assert missing.returncode == 125
    assert missing.stderr.startswith(b"error: ")
    assert b"Traceback" not in missing.stderr
    killed = _subprocess(hutch_env, "exec", sandbox_id, "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + 9


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
