import pytest

from hutch.core import errors
from hutch_scheduler.placement import Candidate, Demand, choose_node


def node(node_id: str, cpu_free: int, memory_free: int, templates: tuple[str, ...] = ("base",)) -> Candidate:
    return Candidate(node_id, 4000, 8192, 4000 - cpu_free, 8192 - memory_free, frozenset(templates))


def test_picks_the_node_with_most_free_memory_among_those_that_fit() -> None:
    nodes = [node("a", 4000, 1024), node("b", 1000, 6000), node("c", 500, 8000)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r") == "b"


def test_nodes_without_the_template_are_skipped() -> None:
    nodes = [node("a", 4000, 8000, ("other",)), node("b", 1000, 1000)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r") == "b"


def test_no_room_is_resource_exhausted_with_numbers() -> None:
    with pytest.raises(errors.ResourceExhausted) as info:
        choose_node(Demand(2000, 4096, "base"), [node("a", 1000, 8000)], "r")
    assert "2 vCPU and 4096 MB" in info.value.message
    assert "node a" in info.value.message or "a, has" in info.value.message


def test_unknown_template_is_not_found_and_lists_what_exists() -> None:
    with pytest.raises(errors.NotFound) as info:
        choose_node(Demand(100, 64, "nope"), [node("a", 4000, 8000, ("base", "py"))], "r")
    assert "base, py" in info.value.message


def test_no_node_at_all_is_unavailable() -> None:
    with pytest.raises(errors.Unavailable):
        choose_node(Demand(100, 64, "base"), [], "r")


def test_only_nodes_running_the_isolation_class_are_chosen() -> None:
    crun_only = Candidate("a", 4000, 8192, 0, 0, frozenset({"base"}), frozenset({"container"}))
    both = Candidate("b", 4000, 1024, 0, 0, frozenset({"base"}), frozenset({"container", "gvisor"}))
    assert choose_node(Demand(1000, 512, "base", "gvisor"), [crun_only, both], "r") == "b"
    with pytest.raises(errors.FailedPrecondition, match="offered: container"):
        choose_node(Demand(1000, 512, "base", "gvisor"), [crun_only], "r")
