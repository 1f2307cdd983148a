"""A start's name (its incarnation) as the node takes it from a spec: the snapshot it starts from,
or, for another try at a failed resume, the try's own name."""

from __future__ import annotations

from hutch.events.v1 import sandbox_pb2 as ev
from hutch_node_agent.convert import request_from_spec


def spec(snapshot_id: str = "", incarnation: str = "") -> ev.SandboxSpec:
    return ev.SandboxSpec(
        sandbox_id="sb-abcdefgh12", tenant_id="tn-1", snapshot_id=snapshot_id, incarnation=incarnation
    )


def test_a_fresh_start_has_no_incarnation() -> None:
    assert request_from_spec(spec()).incarnation == ""


def test_a_start_from_a_snapshot_is_named_by_it() -> None:
    for named in (spec("snap-1"), spec("snap-1", incarnation="snap-1")):
        request = request_from_spec(named)
        assert (request.snapshot_id, request.incarnation_name, request.incarnation) == ("snap-1", "snap-1", ".snap-1")


def test_another_try_starts_from_the_same_snapshot_under_its_own_name() -> None:
    request = request_from_spec(spec("snap-1", incarnation="snap-1~2"))
    assert (request.snapshot_id, request.incarnation_name, request.incarnation) == ("snap-1", "snap-1~2", ".snap-1~2")
