"""A list of every region's sandboxes: each region's page of the same request, merged into one page
in the order every region pages in, with a token each region can go on from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hutch.v1 import sandbox_pb2
from hutch_gateway import store
from hutch_gateway.region_router import merged_page

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def sandbox(sandbox_id: str, minutes: int, region: str) -> sandbox_pb2.Sandbox:
    message = sandbox_pb2.Sandbox(id=sandbox_id, region=region)
    message.created_at.FromDatetime(T0 + timedelta(minutes=minutes))
    return message


def page(*sandboxes: sandbox_pb2.Sandbox, more: bool = False) -> sandbox_pb2.ListSandboxesResponse:
    return sandbox_pb2.ListSandboxesResponse(sandboxes=sandboxes, next_page_token="more" if more else "")


def test_newest_first_across_regions_ties_broken_by_id() -> None:
    merged = merged_page(
        [page(sandbox("sb-a", 5, "eu"), sandbox("sb-c", 1, "eu")), page(sandbox("sb-b", 5, "us"))], size=10
    )
    assert [s.id for s in merged.sandboxes] == ["sb-b", "sb-a", "sb-c"]
    assert merged.next_page_token == ""


def test_a_full_page_goes_on_after_its_last_sandbox_in_every_region() -> None:
    merged = merged_page(
        [page(sandbox("sb-a", 9, "eu"), sandbox("sb-b", 7, "eu")), page(sandbox("sb-c", 8, "us"))], size=2
    )
    assert [s.id for s in merged.sandboxes] == ["sb-a", "sb-c"]
    # The same keyset token a region hands out itself: sb-b (and anything older) comes next.
    assert merged.next_page_token == store.page_token(T0 + timedelta(minutes=8), "sb-c")


def test_a_region_with_more_pages_keeps_the_list_going() -> None:
    merged = merged_page([page(sandbox("sb-a", 3, "eu"), more=True), page()], size=1)
    assert [s.id for s in merged.sandboxes] == ["sb-a"]
    assert merged.next_page_token == store.page_token(T0 + timedelta(minutes=3), "sb-a")


def test_no_sandboxes_anywhere_is_an_empty_last_page() -> None:
    assert merged_page([page(), page()], size=5) == sandbox_pb2.ListSandboxesResponse()
