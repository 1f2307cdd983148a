"""Packing nodes tightly, and spreading each tenant's sandboxes across them."""

from hutch_scheduler.placement import Candidate, Demand, choose_node


def node(node_id: str, memory_free: int, tenant_sandboxes: int = 0) -> Candidate:
    return Candidate(node_id, 4000, 8192, 0, 8192 - memory_free, frozenset({"base"}), tenant_sandboxes=tenant_sandboxes)


def test_pack_fills_the_fullest_node_that_fits() -> None:
    nodes = [node("empty", 8192), node("half", 4096), node("nearly-full", 300)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", strategy="pack") == "half"
    assert choose_node(Demand(1000, 256, "base"), nodes, "r", strategy="pack") == "nearly-full"
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", strategy="spread") == "empty"


def test_a_tenants_sandboxes_go_to_nodes_holding_fewest_of_them_first() -> None:
    nodes = [node("a", 2048, tenant_sandboxes=3), node("b", 4096, tenant_sandboxes=1), node("c", 8192, 1)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", strategy="pack") == "b"
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", strategy="spread") == "c"


def test_spreading_never_picks_a_node_without_room() -> None:
    nodes = [node("full", 100, tenant_sandboxes=0), node("busy", 4096, tenant_sandboxes=5)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", strategy="pack") == "busy"


def test_the_preferred_node_still_wins_over_spreading() -> None:
    nodes = [node("holder", 4096, tenant_sandboxes=9), node("other", 8192)]
    assert choose_node(Demand(1000, 512, "base"), nodes, "r", prefer="holder", strategy="pack") == "holder"
