"""Per-tenant concurrency quotas on the local stack: the create, fork or resume that would exceed
them is refused at once with RESOURCE_EXHAUSTED, and paused sandboxes hold no share of them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from hutch import NotFoundError, ResourceExhaustedError, Sandbox, SandboxError

pytestmark = pytest.mark.e2e


def set_quota(local_stack: Any, tenant: str, *args: str) -> None:
    local_stack.admin("set-quota", tenant, *args)


def test_a_tenants_quota_refuses_what_exceeds_it_and_counts_only_live_sandboxes(local_stack: Any) -> None:
    tenant = f"quota-{uuid.uuid4().hex[:6]}"
    key = local_stack.create_tenant(tenant)
    set_quota(local_stack, tenant, "--sandboxes", "2", "--memory-mb", "1024")
    connection = {"api_key": key, "endpoint": local_stack.endpoint}
    made: list[Sandbox] = []
    try:
        made += [Sandbox.create(isolation="container", memory_mb=256, **connection) for _ in range(2)]
        with pytest.raises(ResourceExhaustedError, match="allows 2 sandboxes at once and 2 are running"):
            Sandbox.create(isolation="container", memory_mb=256, **connection)
        with pytest.raises(ResourceExhaustedError, match="allows 2 sandboxes"):
            made[0].fork(1)

        made[0].pause()  # holds nothing while paused
        made.append(Sandbox.create(isolation="container", memory_mb=256, **connection))
        with pytest.raises(ResourceExhaustedError, match="allows 2 sandboxes"):
            made[0].resume()
        made[1].kill()
        made[0].resume()
        assert made[0].commands.run("echo back").stdout == "back\n"

        set_quota(local_stack, tenant, "--memory-mb", "600")  # 0 sandboxes: no limit on their number
        with pytest.raises(ResourceExhaustedError, match="allows 600 MB of memory at once"):
            Sandbox.create(isolation="container", memory_mb=256, **connection)
        # Another tenant is not held to this one's quota.
        other = Sandbox.create(
            isolation="container", memory_mb=256, api_key=local_stack.api_key, endpoint=local_stack.endpoint
        )
        made.append(other)
    finally:
        for box in made:
            try:
                box.kill()
            except (NotFoundError, SandboxError):
                pass
            box.close()
