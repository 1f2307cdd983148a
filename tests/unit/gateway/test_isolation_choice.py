import pytest

from hutch.core import errors
from hutch_gateway.isolation import IsolationPolicy, choose_isolation

OPEN = IsolationPolicy()
NO_CONTAINERS = IsolationPolicy(frozenset({"gvisor"}), "untrusted")


@pytest.mark.parametrize(
    ("isolation", "trust", "policy", "expected"),
    [
        ("", "", OPEN, "container"),
        ("auto", "trusted", OPEN, "container"),
        ("auto", "untrusted", OPEN, "gvisor"),
        ("", "", IsolationPolicy(default_trust="untrusted"), "gvisor"),
        ("container", "untrusted", OPEN, "container"),
        ("GVISOR", "", OPEN, "gvisor"),
        ("auto", "trusted", NO_CONTAINERS, "gvisor"),
    ],
)
def test_the_class_follows_the_request_and_the_policy(
    isolation: str, trust: str, policy: IsolationPolicy, expected: str
) -> None:
    assert choose_isolation(isolation, trust, policy) == expected


def test_a_forbidden_class_is_refused_naming_what_is_allowed() -> None:
    with pytest.raises(errors.PermissionDenied, match="allowed: gvisor"):
        choose_isolation("container", "", NO_CONTAINERS)


def test_microvm_is_refused_with_the_reason() -> None:
    with pytest.raises(errors.FailedPrecondition, match="hardware virtualisation"):
        choose_isolation("microvm", "", OPEN)


@pytest.mark.parametrize(("isolation", "trust"), [("vm", ""), ("", "maybe")])
def test_unknown_values_are_invalid(isolation: str, trust: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        choose_isolation(isolation, trust, OPEN)
