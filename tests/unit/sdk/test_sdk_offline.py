"""The SDK where no gateway answers, and the shape of its API: nothing here needs a server."""

from __future__ import annotations

import socket

import pytest

from hutch import Sandbox, UnavailableError


def closed_port() -> int:
    """A loopback port nothing listens on: bound once to pick it, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_gateway() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    with pytest.raises(UnavailableError, match=f"cannot reach the Hutch gateway at {endpoint}") as caught:
        Sandbox.list(api_key="hk_any", endpoint=endpoint)
    assert "hutch local status" in caught.value.message


def test_kill_is_callable_on_instances_and_on_the_class() -> None:
    assert Sandbox.kill.__name__ == "_kill_by_id_sync"
    assert Sandbox.get_info.__doc__ and "by id or name" in Sandbox.get_info.__doc__
