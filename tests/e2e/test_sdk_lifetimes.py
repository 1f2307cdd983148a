"""A running sandbox's lifetime, changed through the Python SDK against the whole local stack."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from hutch import InvalidArgumentError, NotFoundError, Sandbox, SandboxError, SandboxInfo, SandboxState
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


@pytest.fixture
def make_sandbox(local_stack: Any) -> Iterator[Callable[..., Sandbox]]:
    """Creates sandboxes of the test's own and kills what is left of them when the test ends."""
    created: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox.create(api_key=local_stack.api_key, endpoint=local_stack.endpoint, **kwargs)
        created.append(box)
        return box

    yield make
    for box in created:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


def test_a_short_timeout_kills_the_sandbox(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox()
    assert box.get_info().expires_at is None
    before = datetime.now(UTC)
    info = box.set_timeout(3)
    assert info.expires_at is not None
    assert 1 <= (info.expires_at - before).total_seconds() <= 5

    def killed() -> SandboxInfo:
        now = box.get_info()
        assert now.state == SandboxState.KILLED
        return now

    ended = eventually_sync(killed, timeout=30)
    assert ended.ended_at is not None and ended.ended_at >= info.expires_at.replace(microsecond=0)
    assert "timeout" in (ended.state_reason or "").lower() or "expired" in (ended.state_reason or "").lower()
    with pytest.raises(SandboxError):
        box.commands.run("true")


def test_none_removes_the_timeout(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox(timeout=4)
    assert box.get_info().expires_at is not None
    info = box.set_timeout(None)
    assert info.expires_at is None
    time.sleep(6)
    assert box.is_running()
    assert box.commands.run("echo alive").stdout == "alive\n"


def test_a_timeout_can_be_extended(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox(timeout=4)
    extended = box.set_timeout(120)
    assert extended.expires_at is not None
    assert (extended.expires_at - datetime.now(UTC)).total_seconds() > 60
    time.sleep(6)
    assert box.is_running()


def test_bad_timeouts_are_refused(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox()
    with pytest.raises(InvalidArgumentError):
        box.set_timeout(-1)
    with pytest.raises(InvalidArgumentError):
        box.set_timeout(10**12)


def test_a_killed_sandbox_gets_no_new_timeout(make_sandbox: Callable[..., Sandbox]) -> None:
    box = make_sandbox()
    box.kill()
    with pytest.raises(SandboxError):
        box.set_timeout(60)
