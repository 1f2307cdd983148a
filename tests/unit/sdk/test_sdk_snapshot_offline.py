"""The SDK's and CLI's snapshot pieces that need no gateway: conversions, argument checks, usage errors."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch import InvalidArgumentError, SandboxInfo, SandboxState, Snapshot, SnapshotInfo
from hutch._convert import create_request
from hutch.cli._waiting import size
from hutch.cli.main import main
from hutch.v1 import sandbox_pb2, snapshot_pb2


def test_a_snapshot_message_becomes_a_snapshot_info() -> None:
    created = Timestamp()
    created.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    message = snapshot_pb2.Snapshot(
        id="snap-1", name="deps", sandbox_id="sb-1", kind=snapshot_pb2.SNAPSHOT_KIND_MEMORY,
        purpose=snapshot_pb2.SNAPSHOT_PURPOSE_PAUSE, template="base", isolation="gvisor", size_bytes=10,
        stored_bytes=4, created_at=created, labels={"a": "b"},
    )  # fmt: skip
    info = SnapshotInfo.from_proto(message)
    assert (info.id, info.name, info.kind, info.purpose, info.isolation) == (
        "snap-1",
        "deps",
        "memory",
        "pause",
        "gvisor",
    )
    assert (info.size_bytes, info.stored_bytes, info.labels) == (10, 4, {"a": "b"})
    assert info.created_at == datetime(2026, 1, 2, tzinfo=UTC)
    bare = SnapshotInfo.from_proto(snapshot_pb2.Snapshot(id="snap-2"))
    assert (bare.name, bare.kind, bare.purpose, bare.created_at) == (None, "unspecified", "unspecified", None)


def test_a_paused_sandbox_says_what_holds_it() -> None:
    message = sandbox_pb2.Sandbox(
        id="sb-1", state=sandbox_pb2.SANDBOX_STATE_PAUSED, paused_snapshot="snap-p", source_snapshot="snap-s",
        forked_from="sb-0",
    )  # fmt: skip
    info = SandboxInfo.from_proto(message)
    assert info.state is SandboxState.PAUSED and info.state == "paused"
    assert (info.paused_snapshot, info.source_snapshot, info.forked_from) == ("snap-p", "snap-s", "sb-0")
    plain = SandboxInfo.from_proto(sandbox_pb2.Sandbox(id="sb-2"))
    assert (plain.paused_snapshot, plain.source_snapshot, plain.forked_from) == (None, None, None)


def test_a_create_from_a_snapshot_leaves_what_is_not_given_to_the_snapshot() -> None:
    request = create_request(
        template=None, cpu=None, memory=None, name=None, metadata=None, envs=None, timeout=None, snapshot="deps"
    )
    assert (request.snapshot, request.template) == ("deps", "")
    assert (request.resources.cpu_millis, request.resources.memory_mb) == (0, 0)
    given = create_request(
        template="base", cpu=0.5, memory=256, name=None, metadata=None, envs=None, timeout=None, snapshot="deps"
    )
    assert (given.template, given.resources.cpu_millis, given.resources.memory_mb) == ("base", 500, 256)


def test_unknown_purposes_are_refused_before_any_call() -> None:
    with pytest.raises(InvalidArgumentError, match="user, pause, fork"):
        Snapshot.list(purposes=["nightly"], api_key="hk_any", endpoint="127.0.0.1:1")


def test_sizes_read_like_people_write_them() -> None:
    assert [size(n) for n in (0, 1023, 1536, 5 * 2**30)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HUTCH_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("HUTCH_API_KEY", "hk_any")
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize(
    "args",
    [
        ["sandbox", "fork", "sb-1", "--count", "0"],
        ["sandbox", "fork", "sb-1", "--count", "101"],
        ["snapshot", "create", "sb-1", "--label", "novalue"],
        ["snapshot", "list", "--purpose", "nightly"],
    ],
)
def test_bad_snapshot_command_lines_exit_2(endpoint: None, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    capsys.readouterr()
