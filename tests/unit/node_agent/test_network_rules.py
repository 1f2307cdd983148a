"""Sandbox networks without the kernel: names, the address plan, the allocator and the ruleset."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from pydantic import ValidationError

from hutch.core import errors
from hutch_node_agent import oci
from hutch_node_agent.network import (
    AddressAllocator,
    interface_name,
    interface_prefix,
    render_member,
    render_ruleset,
    render_teardown,
    slot_addresses,
    slot_count,
    table_name,
)
from hutch_node_agent.settings import EgressTarget, NodeOptions

POOL = IPv4Network("100.96.0.0/16")
TABLE = table_name("node-1")


# Names -------------------------------------------------------------------------------------------


def test_table_name_replaces_dashes_so_node_ids_map_one_to_one() -> None:
    assert table_name("node-1") == "hutch_node_1"
    assert table_name("a-b") != table_name("ab")


def test_interface_names_fit_the_kernel_limit_even_for_the_largest_pool() -> None:
    largest = slot_count(IPv4Network("10.0.0.0/8")) - 1

    assert len(interface_name(table_name("x" * 63), largest)) == 15


def test_interface_names_share_the_node_prefix_and_differ_per_slot() -> None:
    names = {interface_name(TABLE, index) for index in range(1000)}

    assert len(names) == 1000
    assert all(name.startswith(interface_prefix(TABLE)) for name in names)


def test_two_nodes_get_different_interface_prefixes() -> None:
    assert interface_prefix(table_name("node-1")) != interface_prefix(table_name("node-2"))


# Address plan ------------------------------------------------------------------------------------


def test_each_slot_is_a_slash_30_with_the_host_first_and_the_sandbox_second() -> None:
    assert slot_addresses(POOL, 0) == (IPv4Address("100.96.0.1"), IPv4Address("100.96.0.2"))
    assert slot_addresses(POOL, 1) == (IPv4Address("100.96.0.5"), IPv4Address("100.96.0.6"))
    assert slot_addresses(POOL, slot_count(POOL) - 1) == (IPv4Address("100.96.255.253"), IPv4Address("100.96.255.254"))


def test_a_slot_outside_the_pool_is_refused() -> None:
    with pytest.raises(ValueError):
        slot_addresses(POOL, slot_count(POOL))
    with pytest.raises(ValueError):
        slot_addresses(POOL, -1)


# Allocator ---------------------------------------------------------------------------------------


def test_slots_are_handed_out_in_order() -> None:
    allocator = AddressAllocator(POOL)

    assert [allocator.allocate(f"sb-{i:08d}") for i in range(3)] == [0, 1, 2]


def test_allocating_twice_for_one_sandbox_returns_its_slot() -> None:
    allocator = AddressAllocator(POOL)
    first = allocator.allocate("sb-aaaaaaaa")
    allocator.allocate("sb-bbbbbbbb")

    assert allocator.allocate("sb-aaaaaaaa") == first
    assert len(allocator) == 2


def test_a_freed_slot_is_reused_only_after_the_pool_wraps_around() -> None:
    allocator = AddressAllocator(IPv4Network("100.96.0.0/28"))  # four slots
    for i in range(3):
        allocator.allocate(f"sb-{i:08d}")
    allocator.release("sb-00000000")

    assert allocator.allocate("sb-new00001") == 3
    assert allocator.allocate("sb-new00002") == 0


def test_a_full_pool_is_resource_exhausted() -> None:
    allocator = AddressAllocator(IPv4Network("100.96.0.0/29"))
    allocator.allocate("sb-00000001")
    allocator.allocate("sb-00000002")

    with pytest.raises(errors.ResourceExhausted):
        allocator.allocate("sb-00000003")


def test_releasing_an_unknown_sandbox_is_a_no_op() -> None:
    allocator = AddressAllocator(POOL)
    allocator.release("sb-unknown0")

    assert len(allocator) == 0


def test_the_record_round_trips_with_the_cursor() -> None:
    allocator = AddressAllocator(POOL)
    for i in range(3):
        allocator.allocate(f"sb-{i:08d}")
    allocator.release("sb-00000001")

    again = AddressAllocator.from_record(allocator.to_record(), POOL)

    assert again.items() == [("sb-00000000", 0), ("sb-00000002", 2)]
    assert again.allocate("sb-00000003") == 3  # not 1: the cursor survived


def test_a_changed_pool_is_refused_while_sandboxes_hold_addresses() -> None:
    allocator = AddressAllocator(POOL)
    allocator.allocate("sb-00000000")

    with pytest.raises(errors.FailedPrecondition):
        AddressAllocator.from_record(allocator.to_record(), IPv4Network("100.97.0.0/16"))


def test_a_changed_pool_is_accepted_when_no_sandbox_holds_an_address() -> None:
    record = AddressAllocator(POOL).to_record()

    assert len(AddressAllocator.from_record(record, IPv4Network("100.97.0.0/16"))) == 0


@pytest.mark.parametrize(
    "sandboxes",
    [{"sb-00000001": 4, "sb-00000002": 4}, {"sb-00000001": slot_count(POOL)}, {"sb-00000001": -1}],
)
def test_a_record_with_shared_or_outside_slots_is_refused(sandboxes: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AddressAllocator.from_record({"pool": str(POOL), "next": 0, "sandboxes": sandboxes}, POOL)


# Ruleset -----------------------------------------------------------------------------------------


def _rules(egress: EgressTarget | None = None, members: list[tuple[str, IPv4Address]] | None = None) -> list[str]:
    return [line.strip() for line in render_ruleset(TABLE, POOL, egress, members or []).splitlines()]


def _chain(rules: list[str], name: str) -> list[str]:
    start = rules.index(f"chain {name} {{")
    return rules[start + 1 : rules.index("}", start)]


def test_the_ruleset_replaces_the_node_table_in_one_transaction() -> None:
    rules = _rules()

    assert rules[:3] == [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    assert rules[-1] == "}"


def test_sandbox_interfaces_are_matched_by_the_node_prefix() -> None:
    wildcard = f'"{interface_prefix(TABLE)}*"'

    assert f"iifname {wildcard} jump from_sandbox" in _chain(_rules(), "input")
    assert _chain(_rules(), "forward") == [
        "type filter hook forward priority filter; policy accept;",
        f"iifname {wildcard} jump from_sandbox",
        f"oifname {wildcard} jump to_sandbox",
    ]


def test_sandboxes_send_ipv4_from_their_own_address_only() -> None:
    wildcard = f'"{interface_prefix(TABLE)}*"'
    prerouting = _chain(_rules(), "prerouting")

    assert prerouting[0] == "type filter hook prerouting priority raw; policy accept;"
    assert f"iifname {wildcard} meta nfproto != ipv4 drop" in prerouting
    assert f"iifname {wildcard} iifname . ip saddr != @sources drop" in prerouting
    assert f'iifname != {wildcard} iif != "lo" ip saddr {POOL} drop' in prerouting
    assert f"oifname {wildcard} meta nfproto != ipv4 drop" in _chain(_rules(), "output")


def test_without_an_egress_target_a_sandbox_gets_only_replies() -> None:
    assert _chain(_rules(), "from_sandbox") == ["ct state established,related accept", "goto refuse"]


def test_the_egress_target_is_the_one_new_connection_a_sandbox_may_open() -> None:
    target = EgressTarget(address=IPv4Address("100.96.0.1"), port=3128)

    assert _chain(_rules(target), "from_sandbox") == [
        "ct state established,related accept",
        "ip daddr 100.96.0.1 tcp dport 3128 ct state new accept",
        "goto refuse",
    ]


def test_nothing_but_replies_is_routed_into_a_sandbox() -> None:
    assert _chain(_rules(), "to_sandbox") == ["ct state established,related accept", "drop"]


def test_refusals_are_immediate() -> None:
    assert _chain(_rules(), "refuse") == [
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx admin-prohibited",
    ]


def test_existing_sandboxes_are_kept_in_the_sources_set() -> None:
    members = [("hvaaaaaaa000000", IPv4Address("100.96.0.2")), ("hvaaaaaaa000001", IPv4Address("100.96.0.6"))]

    assert 'elements = { "hvaaaaaaa000000" . 100.96.0.2, "hvaaaaaaa000001" . 100.96.0.6 }' in _rules(members=members)


def test_an_empty_sources_set_has_no_elements_line() -> None:
    assert not any(line.startswith("elements") for line in _rules())


def test_a_member_is_added_and_removed_idempotently() -> None:
    element = f'inet {TABLE} sources {{ "hvx" . 100.96.0.2 }}'

    assert render_member(TABLE, "hvx", IPv4Address("100.96.0.2"), present=True) == f"add element {element}\n"
    assert render_member(TABLE, "hvx", IPv4Address("100.96.0.2"), present=False) == (
        f"add element {element}\ndelete element {element}\n"
    )


def test_teardown_removes_the_table_whether_or_not_it_exists() -> None:
    assert render_teardown(TABLE) == f"table inet {TABLE}\ndelete table inet {TABLE}\n"


# Settings and the OCI config ---------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["100.96.0.1/16", "100.96.0.0/31", "10.0.0.0/7", "fd00::/64", "nonsense"])
def test_an_unusable_sandbox_network_is_refused(pool: str) -> None:
    with pytest.raises(ValidationError):
        NodeOptions(sandbox_network=pool)


def test_the_default_sandbox_network_is_a_cgnat_slice() -> None:
    assert NodeOptions().sandbox_network == "100.96.0.0/16"
    assert NodeOptions().egress_target is None


@pytest.mark.parametrize("port", [0, 65536])
def test_an_egress_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ValidationError):
        EgressTarget(address=IPv4Address("100.96.0.1"), port=port)


def _spec(netns_path: str | None) -> oci.ContainerSpec:
    return oci.ContainerSpec(
        sandbox_id="sb-aaaaaaaa",
        rootfs="/r",
        supervisor_argv=["/s"],
        supervisor_env=[],
        supervisor_dir="/d",
        supervisor_mount="/.hutch/rt",
        run_dir="/run",
        cpu_millis=1000,
        memory_mb=256,
        pids_limit=64,
        open_files_limit=64,
        cgroup_path="/hutch/sb-aaaaaaaa",
        netns_path=netns_path,
    )


def test_a_prepared_network_namespace_is_joined_by_path() -> None:
    namespaces = oci.container_config(_spec("/run/netns/hutch-sb-aaaaaaaa"))["linux"]["namespaces"]

    assert {"type": "network", "path": "/run/netns/hutch-sb-aaaaaaaa"} in namespaces
    assert [n["type"] for n in namespaces] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]


def test_without_a_prepared_namespace_the_sandbox_gets_a_fresh_one() -> None:
    namespaces = oci.container_config(_spec(None))["linux"]["namespaces"]

    assert namespaces == [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
