"""Python arguments to request messages, and request messages' replies to Python values."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch import EntryInfo, FileType, InvalidArgumentError, SandboxInfo, SandboxState
from hutch._convert import (
    cpu_millis,
    create_request,
    describe_command,
    lifetime_seconds,
    memory_mb,
    process_config,
    sandbox_states,
    timeout_ms,
)
from hutch.v1 import files_pb2, sandbox_pb2


@pytest.mark.parametrize(("cpu", "millis"), [(1, 1000), (0.5, 500), (2.25, 2250), (0.001, 1), (16, 16000)])
def test_cpu_becomes_thousandths_of_a_vcpu(cpu: float, millis: int) -> None:
    assert cpu_millis(cpu) == millis


@pytest.mark.parametrize("cpu", [0, -1, 0.0004, math.nan, math.inf, 5_000_000])
def test_cpu_out_of_range_is_an_invalid_argument(cpu: float) -> None:
    with pytest.raises(InvalidArgumentError, match="cpu"):
        cpu_millis(cpu)


def test_memory_must_be_a_positive_whole_number_that_fits() -> None:
    assert memory_mb(512) == 512
    for bad in (0, -1, 2**32, True):
        with pytest.raises(InvalidArgumentError, match="memory_mb"):
            memory_mb(bad)


@pytest.mark.parametrize(("timeout", "seconds"), [(None, 0), (0, 0), (10, 10), (1.2, 2), (3600, 3600)])
def test_sandbox_lifetime_rounds_up_to_whole_seconds(timeout: float | None, seconds: int) -> None:
    assert lifetime_seconds(timeout) == seconds


@pytest.mark.parametrize(("timeout", "millis"), [(None, 0), (0, 0), (60, 60000), (1.5, 1500), (0.0001, 1)])
def test_command_timeout_becomes_milliseconds(timeout: float | None, millis: int) -> None:
    assert timeout_ms(timeout) == millis


@pytest.mark.parametrize("convert", [lifetime_seconds, timeout_ms])
@pytest.mark.parametrize("timeout", [-1, math.inf, 1e12])
def test_timeouts_out_of_range_are_invalid_arguments(convert: Callable[[float], int], timeout: float) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout"):
        convert(timeout)


def test_a_string_command_runs_through_the_shell() -> None:
    config = process_config("sb-1", "echo $HOME | wc -c")
    assert config.cmd == "echo $HOME | wc -c"
    assert list(config.args) == []


@pytest.mark.parametrize("argv", [["printf", "%s", "a b"], ("printf", "%s", "a b")])
def test_a_list_command_is_an_argv(argv: list[str] | tuple[str, ...]) -> None:
    config = process_config("sb-1", argv)
    assert list(config.args) == ["printf", "%s", "a b"]
    assert config.cmd == ""


@pytest.mark.parametrize("cmd", ["", "   ", []])
def test_an_empty_command_is_an_invalid_argument(cmd: str | list[str]) -> None:
    with pytest.raises(InvalidArgumentError):
        process_config("sb-1", cmd)


def test_process_options_are_carried_over() -> None:
    config = process_config("sb-1", "true", envs={"A": "1"}, cwd="/tmp", user="nobody", timeout=2.5, stdin=True)
    assert config.sandbox == "sb-1"
    assert dict(config.envs) == {"A": "1"}
    assert (config.cwd, config.user, config.timeout_ms, config.stdin) == ("/tmp", "nobody", 2500, True)
    defaults = process_config("sb-1", "true")
    assert (defaults.cwd, defaults.user, defaults.timeout_ms, defaults.stdin) == ("", "", 0, False)


def test_create_request_carries_every_argument() -> None:
    request = create_request(
        template="python",
        cpu=0.5,
        memory=1024,
        name="agent-7",
        metadata={"team": "a"},
        envs={"TOKEN": "x"},
        timeout=300,
    )
    assert request.template == "python"
    assert (request.resources.cpu_millis, request.resources.memory_mb) == (500, 1024)
    assert request.name == "agent-7"
    assert dict(request.metadata) == {"team": "a"}
    assert dict(request.envs) == {"TOKEN": "x"}
    assert request.timeout_seconds == 300
    bare = create_request(template="base", cpu=1, memory=512, name=None, metadata=None, envs=None, timeout=None)
    assert (bare.name, bare.timeout_seconds, dict(bare.metadata)) == ("", 0, {})


def test_state_names_become_states() -> None:
    assert sandbox_states(["running", SandboxState.KILLED]) == [SandboxState.RUNNING, SandboxState.KILLED]
    assert sandbox_states(None) == []
    with pytest.raises(InvalidArgumentError, match="pending"):
        sandbox_states(["sleeping"])


def test_commands_are_described_as_a_shell_would_read_them() -> None:
    assert describe_command("ls | wc") == "ls | wc"
    assert describe_command(["echo", "a b"]) == "echo 'a b'"


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_sandbox_info_from_proto() -> None:
    created = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = sandbox_pb2.Sandbox(
        id="sb-1",
        name="agent",
        template="base",
        state=sandbox_pb2.SANDBOX_STATE_RUNNING,
        resources=sandbox_pb2.Resources(cpu_millis=1500, memory_mb=2048),
        metadata={"k": "v"},
        created_at=_stamp(created),
        timeout_seconds=600,
        region="local",
    )
    info = SandboxInfo.from_proto(message)
    assert info == SandboxInfo(
        id="sb-1",
        name="agent",
        template="base",
        state=SandboxState.RUNNING,
        cpu=1.5,
        memory_mb=2048,
        metadata={"k": "v"},
        created_at=created,
        started_at=None,
        ended_at=None,
        timeout=600,
        state_reason=None,
        region="local",
    )
    assert info.state == "running"
    assert info.created_at is not None and info.created_at.tzinfo is not None


def test_sandbox_info_empty_fields_become_none() -> None:
    info = SandboxInfo.from_proto(
        sandbox_pb2.Sandbox(id="sb-2", state=sandbox_pb2.SANDBOX_STATE_KILLED, state_reason="timed out")
    )
    assert (info.name, info.timeout, info.created_at) == (None, None, None)
    assert (info.state, info.state_reason) == (SandboxState.KILLED, "timed out")


def test_every_state_round_trips_and_unknown_numbers_are_unspecified() -> None:
    for state in SandboxState:
        assert SandboxState.from_proto(state.to_proto()) is state
    assert SandboxState.from_proto(99) is SandboxState.UNSPECIFIED


def test_entry_info_from_proto() -> None:
    modified = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    message = files_pb2.FileInfo(
        path="/root/link",
        name="link",
        type=files_pb2.FILE_TYPE_SYMLINK,
        size=11,
        mode=0o777,
        modified_at=_stamp(modified),
        owner="root",
        group="wheel",
        symlink_target="/etc/hosts",
    )
    assert EntryInfo.from_proto(message) == EntryInfo(
        path="/root/link",
        name="link",
        type=FileType.SYMLINK,
        size=11,
        mode=0o777,
        modified_at=modified,
        owner="root",
        group="wheel",
        symlink_target="/etc/hosts",
    )


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (files_pb2.FILE_TYPE_FILE, "file"),
        (files_pb2.FILE_TYPE_DIRECTORY, "dir"),
        (files_pb2.FILE_TYPE_SYMLINK, "symlink"),
        (files_pb2.FILE_TYPE_OTHER, "other"),
        (files_pb2.FILE_TYPE_UNSPECIFIED, "other"),
    ],
)
def test_file_types(number: int, kind: str) -> None:
    info = EntryInfo.from_proto(files_pb2.FileInfo(path="/x", name="x", type=number))  # type: ignore[arg-type]
    assert info.type == kind
    assert info.modified_at is None
    assert info.symlink_target is None
