"""What a live resize may ask for. Pure logic."""

from __future__ import annotations

from dataclasses import dataclass

from hutch.core import errors
from hutch_gateway.domain import Limits, check_resources


@dataclass(frozen=True)
class Size:
    cpu_millis: int
    memory_mb: int


def validate_resize(cpu_millis: int, memory_mb: int, limits: Limits) -> Size:
    """Checks a resize request against the same bounds as a create; 0 keeps a value as it is."""
    if not cpu_millis and not memory_mb:
        raise errors.InvalidArgument("a resize needs a new cpu or memory_mb (or both)")
    check_resources(cpu_millis, memory_mb, limits)
    return Size(cpu_millis, memory_mb)


def target(current: Size, wanted: Size) -> Size:
    """The size a resize leads to: what was asked, the current value where nothing was."""
    return Size(wanted.cpu_millis or current.cpu_millis, wanted.memory_mb or current.memory_mb)
