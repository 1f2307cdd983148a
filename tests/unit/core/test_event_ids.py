"""Event ids of a sandbox's starts: each incarnation (the snapshot it starts from) has ids of its own."""

import pytest

from hutch.core.events import incarnation_of, sandbox_event_id


def test_a_plain_start_keeps_the_plain_ids() -> None:
    assert sandbox_event_id("sb-a", "started") == "sb-a.started"
    assert incarnation_of("sb-a.started", "sb-a") == ""


def test_a_start_from_a_snapshot_carries_it() -> None:
    event_id = sandbox_event_id("sb-a", "requested", "snap-x")
    assert event_id == "sb-a.requested.snap-x"
    assert incarnation_of(event_id, "sb-a") == "snap-x"


@pytest.mark.parametrize("event_id", ["0f3c9e", "sb-b.started.snap-x", "sb-a", ""])
def test_ids_of_another_shape_name_no_incarnation(event_id: str) -> None:
    assert incarnation_of(event_id, "sb-a") is None
