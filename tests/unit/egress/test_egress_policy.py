"""Network policies without any network: parsing, validation messages and matching."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.egress_policy import PolicyError, parse_policy, platform_refuses
from hutch.egress_policy.policy import parse_rule

A = ip_address("198.18.1.2")


def test_an_empty_policy_denies_everything() -> None:
    policy = parse_policy()

    assert policy.is_empty
    decision = policy.check_host("example.com", 443, A)
    assert not decision.allowed
    assert "default deny" in decision.reason
    assert not policy.check_address(A, 80).allowed


def test_an_exact_host_matches_itself_on_any_port_and_nothing_below_it() -> None:
    policy = parse_policy(allow=["api.example.com"])

    assert policy.check_host("api.example.com", 443).allowed
    assert policy.check_host("API.Example.COM.", 8080).allowed
    assert not policy.check_host("x.api.example.com", 443).allowed
    assert not policy.check_host("example.com", 443).allowed


def test_a_wildcard_covers_subdomains_but_not_the_domain_itself() -> None:
    policy = parse_policy(allow=["*.example.com"])

    assert policy.check_host("a.example.com", 443).allowed
    assert policy.check_host("a.b.example.com", 443).allowed
    assert not policy.check_host("example.com", 443).allowed
    assert not policy.check_host("badexample.com", 443).allowed


def test_ports_and_port_ranges_restrict_a_rule() -> None:
    policy = parse_policy(allow=["example.com:443", "*.example.org:8000-8100"])

    assert policy.check_host("example.com", 443).allowed
    assert not policy.check_host("example.com", 80).allowed
    assert policy.check_host("a.example.org", 8050).allowed
    assert not policy.check_host("a.example.org", 8101).allowed


def test_deny_wins_over_allow_and_names_its_rule() -> None:
    policy = parse_policy(allow=["*.example.com"], deny=["secret.example.com"])

    decision = policy.check_host("secret.example.com", 443)

    assert not decision.allowed
    assert "'secret.example.com'" in decision.reason


def test_address_rules_match_raw_connections_and_named_hosts_by_address() -> None:
    policy = parse_policy(allow=["198.18.1.0/24:5432"], deny=["198.18.1.9"])

    assert policy.check_address(A, 5432).allowed
    assert not policy.check_address(A, 80).allowed
    assert not policy.check_address(ip_address("198.18.1.9"), 5432).allowed
    assert policy.check_host("db.example.com", 5432, A).allowed
    assert not policy.check_host("db.example.com", 5432, ip_address("198.18.2.2")).allowed


def test_host_rules_never_match_an_address_given_as_a_host() -> None:
    policy = parse_policy(allow=["*"])

    assert policy.check_host("anything.example", 443).allowed
    assert not policy.check_address(A, 443).allowed


def test_deny_address_rules_refuse_named_hosts_that_resolve_into_them() -> None:
    policy = parse_policy(allow=["*.example.com"], deny=["198.18.1.0/24"])

    assert not policy.check_host("a.example.com", 443, A).allowed


def test_passthrough_hosts_are_recognised() -> None:
    policy = parse_policy(allow=["pinned.example.com"], passthrough=["pinned.example.com:443"])

    assert policy.is_passthrough("pinned.example.com", 443)
    assert not policy.is_passthrough("pinned.example.com", 8443)
    assert not policy.is_passthrough("other.example.com", 443)


def test_entries_are_normalized_and_deduplicated() -> None:
    policy = parse_policy(allow=["Example.COM.", "example.com", "198.18.0.7", "[2001:db8::/32]:443"])

    assert policy.to_lists() == {
        "allow": ["example.com", "198.18.0.7", "[2001:db8::/32]:443"],
        "deny": [],
        "passthrough": [],
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("198.18.0.1/24", "has host bits set: did you mean 198.18.0.0/24?"),
        ("198.18.0.0/33", "is not a valid CIDR"),
        ("300.1.2.3", "is not an address or a CIDR"),
        ("*.", "a wildcard needs a domain"),
        ("*.*.example.com", "a wildcard needs a domain"),
        ("a.*.example.com", "'*' may only stand alone"),
        ("*example.com", "'*' may only stand alone"),
        ("example.com:0", "port 0 is out of range"),
        ("example.com:65536", "port 65536 is out of range"),
        ("example.com:99999999", "is not a port"),
        ("example.com:90-80", "the range 90-80 is empty"),
        ("198.18.0.0/24:70000", "port 70000 is out of range"),
        ("[2001:db8::/32:443", "'[' without ']'"),
        ("exa mple.com", "is not valid"),
        ("-bad.example.com", "is not valid"),
        ("", "is empty"),
        ("   ", "is empty"),
    ],
)
def test_malformed_entries_are_refused_with_a_clear_message(entry: str, message: str) -> None:
    with pytest.raises(PolicyError, match=None) as caught:
        parse_policy(allow=[entry])

    assert message in str(caught.value)
    assert str(caught.value).startswith("network allow:")


def test_passthrough_entries_must_be_host_names() -> None:
    with pytest.raises(PolicyError, match="pass-through entries are host names"):
        parse_policy(passthrough=["198.18.0.0/24"])


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(PolicyError, match="at most 256"):
        parse_policy(allow=[f"h{i}.example.com" for i in range(257)])


def test_non_string_entries_are_refused() -> None:
    with pytest.raises(PolicyError, match="must be a string"):
        parse_policy(allow=[42])  # type: ignore[list-item]


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_name = st.lists(_label, min_size=2, max_size=4).map(".".join).filter(lambda n: not n.replace(".", "").isdigit())
_ports = st.one_of(
    st.just(""),
    st.integers(1, 65535).map(lambda p: f":{p}"),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda t: f":{min(t)}-{max(t)}"),
)
_host_entry = st.tuples(st.sampled_from(["", "*."]), _name, _ports).map("".join)
_v4_entry = st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32), _ports).map(
    lambda t: f"{ip_address(t[0] >> (32 - t[1]) << (32 - t[1]))}/{t[1]}{t[2]}"
)


@given(st.one_of(_host_entry, _v4_entry))
def test_a_normalized_entry_parses_to_the_same_rule(entry: str) -> None:
    rule = parse_rule(entry)

    assert parse_rule(str(rule)) == rule


@given(_name, st.integers(1, 65535))
def test_a_wildcard_matches_exactly_the_names_below_its_domain(name: str, port: int) -> None:
    policy = parse_policy(allow=[f"*.{name}"])

    assert policy.check_host(f"x.{name}", port).allowed
    assert not policy.check_host(name, port).allowed


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.96.0.2",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_the_platform_deny_set_covers_internal_addresses(address: str) -> None:
    assert platform_refuses(address) is not None


@pytest.mark.parametrize("address", ["198.18.1.2", "8.8.8.8", "2606:4700::1111"])
def test_the_platform_deny_set_leaves_routable_addresses_to_the_policy(address: str) -> None:
    assert platform_refuses(address) is None


def test_the_platform_deny_set_takes_extra_networks() -> None:
    from ipaddress import ip_network

    assert platform_refuses("198.18.1.2", [ip_network("198.18.0.0/15")]) is not None
