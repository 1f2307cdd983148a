"""Waiting for a condition in tests of asynchronous systems, instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> T:
    """Calls `predicate` (a plain or async function) until it returns a truthy value; returns it.

    A call that raises one of `retry_on` (by default AssertionError, so the predicate may use plain
    `assert`s) counts as "not yet". After `timeout` seconds AssertionError is raised with the last
    failure, or `message` when given. Any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: str = "the predicate never returned a truthy value"
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = f"the predicate returned {result!r}"
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"not true within {timeout}s: {last}")
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> T:
    """`eventually` for synchronous tests: blocks between calls instead of awaiting."""
    deadline = time.monotonic() + timeout
    last: str = "the predicate never returned a truthy value"
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = f"the predicate returned {result!r}"
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"not true within {timeout}s: {last}")
        time.sleep(interval)


# The name other real-server harnesses use for the same helper.
assert_eventually = eventually
