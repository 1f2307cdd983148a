"""The placement hint: a node that holds what the sandbox starts from wins whenever it fits."""

import pytest

from hutch.core import errors
from hutch_scheduler.placement import Candidate, Demand, choose_node

DEMAND = Demand(1000, 512, "base", "gvisor")


def node(node_id: str, memory_free: int, *, classes: tuple[str, ...] = ("container", "gvisor")) -> Candidate:
    return Candidate(node_id, 4000, 8192, 0, 8192 - memory_free, frozenset({"base"}), frozenset(classes))


def test_the_preferred_node_wins_over_a_roomier_one() -> None:
    nodes = [node("roomy", 8000), node("holder", 1024)]
    assert choose_node(DEMAND, nodes, "r", prefer="holder") == "holder"


def test_a_full_preferred_node_gives_way_to_the_usual_choice() -> None:
    nodes = [node("roomy", 8000), node("small", 4000), node("holder", 256)]
    assert choose_node(DEMAND, nodes, "r", prefer="holder") == "roomy"


def test_a_preferred_node_without_the_isolation_class_gives_way() -> None:
    nodes = [node("roomy", 8000), node("holder", 4000, classes=("container",))]
    assert choose_node(DEMAND, nodes, "r", prefer="holder") == "roomy"


def test_a_preferred_node_that_is_not_alive_gives_way() -> None:
    # Candidates are the live nodes only; a hint naming another is simply not among them.
    assert choose_node(DEMAND, [node("a", 2000), node("b", 3000)], "r", prefer="gone") == "b"


def test_the_hint_never_turns_a_refusal_into_a_placement() -> None:
    with pytest.raises(errors.ResourceExhausted):
        choose_node(DEMAND, [node("holder", 128)], "r", prefer="holder")
