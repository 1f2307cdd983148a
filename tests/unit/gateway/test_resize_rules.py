"""What a live resize may ask for: the same bounds as a create, 0 keeping a value."""

from __future__ import annotations

import pytest

from hutch.core import errors
from hutch_gateway.domain import Limits
from hutch_gateway.resize_rules import Size, target, validate_resize

LIMITS = Limits(max_cpu_millis=8000, max_memory_mb=16384)


def test_a_resize_must_change_something() -> None:
    with pytest.raises(errors.InvalidArgument, match="cpu or memory_mb"):
        validate_resize(0, 0, LIMITS)


@pytest.mark.parametrize(
    ("cpu", "memory", "message"),
    [
        (50, 0, "cpu must be between 0.1 and 8 vCPUs"),
        (9000, 0, "cpu must be between"),
        (0, 32, "memory_mb must be between 64 and 16384"),
        (0, 20000, "memory_mb must be between"),
    ],
)
def test_the_bounds_are_those_of_create(cpu: int, memory: int, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        validate_resize(cpu, memory, LIMITS)


def test_a_field_left_zero_keeps_its_value() -> None:
    current = Size(1000, 512)
    assert target(current, validate_resize(2000, 0, LIMITS)) == Size(2000, 512)
    assert target(current, validate_resize(0, 1024, LIMITS)) == Size(1000, 1024)
    assert target(current, validate_resize(100, 64, LIMITS)) == Size(100, 64)
