"""Snapshot rules: creating from a snapshot, names and labels, forks, and what pause and resume do."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hutch.core import errors
from hutch_gateway.domain import CreateRequest, Limits, SandboxRecord, State, validate_create
from hutch_gateway.snapshot_rules import (
    SnapshotSpec,
    Step,
    check_labels,
    check_snapshot_name,
    fork_count,
    fork_metadata,
    not_running,
    parse_spec,
    pause_step,
    restore_request,
    resume_step,
)

LIMITS = Limits(max_cpu_millis=8000, max_memory_mb=16384)
SPEC = SnapshotSpec("tn-1/web", "container", 2000, 1024, {"A": "1", "B": "2"}, memory=False)
GVISOR_SPEC = SnapshotSpec("base", "gvisor", 1000, 1024, {}, memory=True)


def asked(**fields: object) -> CreateRequest:
    args: dict[str, object] = {
        "template": "",
        "name": "",
        "cpu_millis": 0,
        "memory_mb": 0,
        "metadata": {},
        "envs": {},
        "timeout_seconds": 0,
        "limits": LIMITS,
        "snapshot": "snap-1",
    }
    args.update(fields)
    return validate_create(**args)  # type: ignore[arg-type]


def record(state: State, **fields: object) -> SandboxRecord:
    base = SandboxRecord(
        id="sb-1", tenant_id="tn-1", name="", template="base", state=state, cpu_millis=1000, memory_mb=512,
        metadata={}, timeout_seconds=0, region="r", node_id="n1", error_code="", state_reason="",
        created_at=datetime.now(UTC), started_at=None, ended_at=None,
    )  # fmt: skip
    return replace(base, **fields)  # type: ignore[arg-type]


def test_the_spec_a_node_wrote_is_read() -> None:
    raw = json.dumps({"template": "tn-1/web", "isolation": "gvisor", "cpu_millis": 500, "memory_mb": 256,
                      "envs": {"K": "v"}, "metadata": {}, "uid_shift": 100000}).encode()  # fmt: skip
    spec = parse_spec(raw, memory=True, snapshot_id="snap-1")
    assert (spec.template, spec.template_key, spec.isolation) == ("web", "tn-1/web", "gvisor")
    assert (spec.cpu_millis, spec.memory_mb, spec.envs, spec.memory) == (500, 256, {"K": "v"}, True)


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"isolation": "container"}'])
def test_an_unreadable_spec_is_internal(raw: bytes) -> None:
    with pytest.raises(errors.Internal, match="snap-1"):
        parse_spec(raw, memory=False, snapshot_id="snap-1")


def test_without_a_snapshot_validation_still_fills_in_defaults() -> None:
    request = asked(snapshot="")
    assert (request.template, request.cpu_millis, request.memory_mb) == ("base", 1000, 512)


def test_what_the_request_leaves_empty_comes_from_the_snapshot() -> None:
    request = restore_request(asked(envs={"B": "mine"}), SPEC, "snap-1", LIMITS)
    assert (request.template, request.isolation) == ("web", "container")
    assert (request.cpu_millis, request.memory_mb) == (2000, 1024)
    assert request.envs == {"A": "1", "B": "mine"}


def test_the_request_may_repeat_the_snapshots_template_and_class_and_change_resources() -> None:
    request = restore_request(
        asked(template="web", isolation="container", cpu_millis=500, memory_mb=256), SPEC, "snap-1", LIMITS
    )
    assert (request.template, request.cpu_millis, request.memory_mb) == ("web", 500, 256)


def test_another_template_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="template 'web'"):
        restore_request(asked(template="base"), SPEC, "snap-1", LIMITS)


def test_another_isolation_class_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="isolation 'container'"):
        restore_request(asked(isolation="gvisor"), SPEC, "snap-1", LIMITS)


def test_a_memory_snapshot_cannot_start_as_a_container() -> None:
    with pytest.raises(errors.FailedPrecondition, match="gvisor"):
        restore_request(asked(isolation="container"), GVISOR_SPEC, "snap-1", LIMITS)
    assert restore_request(asked(isolation="auto"), GVISOR_SPEC, "snap-1", LIMITS).isolation == "gvisor"


def test_a_memory_snapshot_needs_the_memory_its_processes_had() -> None:
    with pytest.raises(errors.InvalidArgument, match="at least"):
        restore_request(asked(memory_mb=512), GVISOR_SPEC, "snap-1", LIMITS)


def test_resources_beyond_the_limits_are_invalid() -> None:
    huge = replace(SPEC, cpu_millis=64_000)
    with pytest.raises(errors.InvalidArgument, match="cpu"):
        restore_request(asked(), huge, "snap-1", LIMITS)


@pytest.mark.parametrize("name", ["Bad", "-x", "snap-mine", "a" * 64, "sb-1"])
def test_bad_snapshot_names_are_refused(name: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        check_snapshot_name(name)


def test_good_snapshot_names_and_no_name_pass() -> None:
    check_snapshot_name("")
    check_snapshot_name("before-upgrade-2")


def test_labels_follow_the_metadata_rules_and_say_labels() -> None:
    check_labels({"team": "x", "k8s.io/app": "y"})
    with pytest.raises(errors.InvalidArgument, match="label key"):
        check_labels({"bad key": "x"})
    with pytest.raises(errors.InvalidArgument, match="at most 64 label"):
        check_labels({f"k{i}": "v" for i in range(65)})


def test_fork_counts() -> None:
    assert fork_count(0) == 1
    assert fork_count(100) == 100
    with pytest.raises(errors.InvalidArgument, match="1 to 100"):
        fork_count(101)


def test_a_childs_metadata_is_the_parents_with_the_requests_on_top() -> None:
    assert fork_metadata({"a": "1", "b": "2"}, {"b": "3", "c": "4"}) == {"a": "1", "b": "3", "c": "4"}
    with pytest.raises(errors.InvalidArgument):
        fork_metadata({f"k{i}": "v" for i in range(60)}, {f"x{i}": "v" for i in range(10)})


@pytest.mark.parametrize(
    ("state", "step"), [(State.RUNNING, Step.ACT), (State.PAUSED, Step.DONE)]
)  # fmt: skip
def test_pause_steps(state: State, step: Step) -> None:
    assert pause_step(record(state)) is step


@pytest.mark.parametrize(
    ("state", "needle"),
    [(State.PENDING, "still starting"), (State.STOPPING, "being killed"), (State.KILLED, "is killed"),
     (State.FAILED, "is failed")],
)  # fmt: skip
def test_pause_refusals_say_why(state: State, needle: str) -> None:
    with pytest.raises(errors.FailedPrecondition, match=needle):
        pause_step(record(state))


@pytest.mark.parametrize(
    ("state", "step"), [(State.PAUSED, Step.ACT), (State.PENDING, Step.WAIT), (State.RUNNING, Step.DONE)]
)  # fmt: skip
def test_resume_steps(state: State, step: Step) -> None:
    assert resume_step(record(state)) is step


@pytest.mark.parametrize("state", [State.STOPPING, State.KILLED, State.FAILED])
def test_resume_refuses_what_ended_or_is_ending(state: State) -> None:
    with pytest.raises(errors.FailedPrecondition, match="cannot be resumed"):
        resume_step(record(state))


def test_a_paused_sandbox_says_to_resume_it() -> None:
    assert "is paused: resume it" in not_running(record(State.PAUSED)).message
    assert "killed, not running (gone)" in not_running(record(State.KILLED, state_reason="gone")).message


def test_a_resuming_sandbox_is_pending_from_its_own_pause_snapshot() -> None:
    assert record(State.PENDING, paused_snapshot="snap-p", incarnation="snap-p").resuming
    assert not record(State.PENDING, incarnation="snap-f").resuming  # a fork's child or a create from a snapshot
    assert not record(State.PAUSED, paused_snapshot="snap-p").resuming
