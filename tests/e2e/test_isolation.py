"""Both isolation camps in one platform: the class follows the request and the tenant's policy."""

from __future__ import annotations

import platform
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hutch import PermissionDeniedError, Sandbox, SandboxError

pytestmark = pytest.mark.e2e


@pytest.fixture
def made(local_stack: Any) -> Iterator[list[Sandbox]]:
    created: list[Sandbox] = []
    yield created
    for sandbox in created:
        if sandbox.is_running():
            sandbox.kill()
        sandbox.close()


def create(made: list[Sandbox], local_stack: Any, api_key: str | None = None, **kwargs: Any) -> Sandbox:
    sandbox = Sandbox.create(api_key=api_key or local_stack.api_key, endpoint=local_stack.endpoint, **kwargs)
    made.append(sandbox)
    return sandbox


def kernel_of(sandbox: Sandbox) -> str:
    return sandbox.commands.run("uname -r").stdout.strip()


def test_the_class_is_chosen_from_isolation_and_trust(local_stack: Any, made: list[Sandbox]) -> None:
    trusted = create(made, local_stack)
    untrusted = create(made, local_stack, trust="untrusted")
    explicit = create(made, local_stack, isolation="gvisor", trust="trusted")

    assert [s.get_info().isolation for s in (trusted, untrusted, explicit)] == ["container", "gvisor", "gvisor"]
    # A container shares the host's kernel; gVisor answers with its own.
    assert kernel_of(trusted) == platform.release()
    assert kernel_of(untrusted) != platform.release()
    listed = {
        info.id: info.isolation for info in Sandbox.list(api_key=local_stack.api_key, endpoint=local_stack.endpoint)
    }
    assert listed[untrusted.id] == "gvisor" and listed[trusted.id] == "container"


def test_a_tenant_policy_can_forbid_containers(local_stack: Any, made: list[Sandbox]) -> None:
    name = f"strict-{uuid.uuid4().hex[:8]}"
    key = local_stack.create_tenant(name)
    subprocess.run(
        ["hutch-gateway", "admin", "set-policy", name, "--allow", "gvisor", "--default-trust", "untrusted"],
        env=local_stack.service_env("gateway"),
        check=True,
        capture_output=True,
    )
    by_default = create(made, local_stack, api_key=key)
    assert by_default.get_info().isolation == "gvisor"
    asked_trusted = create(made, local_stack, api_key=key, trust="trusted")
    assert asked_trusted.get_info().isolation == "gvisor"  # the stronger class still serves trusted code
    with pytest.raises(PermissionDeniedError, match="allowed: gvisor"):
        create(made, local_stack, api_key=key, isolation="container")


def test_classes_these_nodes_cannot_run_are_refused_clearly(local_stack: Any, made: list[Sandbox]) -> None:
    with pytest.raises(SandboxError, match="hardware virtualisation"):
        create(made, local_stack, isolation="microvm")
    assert made == []
