"""Which region a create goes to when it names none: the room check behind the spill-over."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hutch.core import errors
from hutch.core.nodes import NodeInfo
from hutch_gateway.region_placement import NoRoomInRegion, Placement, check_room, has_room


def node(free_mb: int, classes: tuple[str, ...] = ("container", "gvisor")) -> NodeInfo:
    return NodeInfo(
        node_id="n1",
        address="127.0.0.1:1",
        cpu_millis_total=4000,
        memory_mb_total=8192,
        cpu_millis_allocated=0,
        memory_mb_allocated=8192 - free_mb,
        sandboxes=0,
        templates=frozenset({"base"}),
        isolation_classes=frozenset(classes),
        sent_at=datetime.now(UTC),
    )


def test_a_node_with_the_memory_free_and_the_class_has_room() -> None:
    assert has_room([node(256), node(1024)], "container", 1024)


def test_memory_allocated_elsewhere_leaves_no_room() -> None:
    assert not has_room([node(1023), node(512)], "container", 1024)


def test_a_node_without_the_isolation_class_does_not_count() -> None:
    assert not has_room([node(4096, ("container",))], "gvisor", 512)


def test_no_nodes_is_no_room() -> None:
    assert not has_room([], "container", 64)


def test_here_creates_whatever_the_room() -> None:
    check_room(Placement.HERE, [], "eu", "container", 512)


def test_spill_says_to_try_the_next_region() -> None:
    with pytest.raises(NoRoomInRegion, match="no node in region 'eu' has 512 MB free"):
        check_room(Placement.SPILL, [node(100)], "eu", "container", 512)


def test_only_if_room_refuses_with_resource_exhausted_not_a_spill() -> None:
    with pytest.raises(errors.ResourceExhausted) as refused:
        check_room(Placement.ONLY_IF_ROOM, [node(100)], "eu", "gvisor", 512)
    assert not isinstance(refused.value, NoRoomInRegion)


def test_room_passes_every_placement() -> None:
    for placement in Placement:
        check_room(placement, [node(2048)], "eu", "container", 512)
