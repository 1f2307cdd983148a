"""Egress and secrets through the whole local stack, as a user drives them with the SDK and the CLI.

The stack's egress-proxy resolves names with the session's fake internet (`stack_internet`: HTTP,
HTTPS and DNS in a network namespace of this machine) and the secrets-broker holds the values; a
sandbox of either class reaches what its policy allows, and the upstream receives credentials the
sandbox never sees. The proxy's own edge cases (rebinding, forged hosts, CONNECT, raw TCP) are
covered against the same proxy in tests/integration/egress.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch import InvalidArgumentError, NotFoundError, Sandbox, SandboxError, Secret

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CURL = "curl -sS -m 20"
CLASSES = ["container", "gvisor"]


def hutch(local_stack: Any, *args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("hutch", path=str(Path(sys.executable).parent)) or shutil.which("hutch")
    assert executable, "the hutch console script is not installed"
    env = dict(local_stack.env)
    if api_key is not None:
        env["HUTCH_API_KEY"] = api_key
    return subprocess.run(
        [executable, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


def ok(local_stack: Any, *args: str) -> str:
    result = hutch(local_stack, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def made(local_stack: Any) -> Iterator[list[tuple[str, str]]]:
    """(sandbox id, api key) of sandboxes the test made; all killed when it ends."""
    boxes: list[tuple[str, str]] = []
    yield boxes
    for sandbox_id, key in boxes:
        try:
            Sandbox.kill(sandbox_id, api_key=key, endpoint=local_stack.endpoint)
        except (NotFoundError, SandboxError):
            pass


@pytest.fixture(scope="module")
def other_tenant_key(local_stack: Any) -> str:
    return local_stack.create_tenant(f"egress-other-{uuid.uuid4().hex[:6]}")


def sandbox(local_stack: Any, made: list[tuple[str, str]], isolation: str, key: str | None = None, **kw: Any) -> Any:
    key = key or local_stack.api_key
    box = Sandbox.create(isolation=isolation, memory_mb=256, api_key=key, endpoint=local_stack.endpoint, **kw)
    made.append((box.id, key))
    return box


def sh(box: Any, cmd: str) -> tuple[str, int]:
    result = box.commands.run(["sh", "-c", cmd + " 2>&1; echo; echo exit=$?"], timeout=60)
    lines = result.stdout.rstrip("\n").splitlines()
    return "\n".join(lines[:-1]), int(lines[-1].removeprefix("exit="))


def authorization(received: dict[str, Any]) -> list[str]:
    return [value for key, value in received["headers"] if key.lower() == "authorization"]


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.mark.parametrize("isolation", CLASSES)
def test_a_granted_secret_reaches_the_upstream_and_never_the_sandbox(
    local_stack: Any, stack_internet: Any, made: list[tuple[str, str]], other_tenant_key: str, isolation: str
) -> None:
    run = uuid.uuid4().hex[:8]
    name = f"TOKEN_{run.upper()}"
    value = f"ghp_e2e-{uuid.uuid4().hex}"
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    Secret.create(name, value, "e2e", **auth)
    try:
        Secret.grant(
            name, hosts=["allowed.test"], labels={"egress-run": run}, header="Authorization: Bearer {value}", **auth
        )
        box = sandbox(local_stack, made, isolation, metadata={"egress-run": run}, network={"allow": ["allowed.test"]})

        out, code = sh(box, f"{CURL} -i https://allowed.test/echo")
        assert code == 0, out
        received = stack_internet.requests("allowed.test")[-1]
        assert authorization(received) == [f"Bearer {value}"]
        # The upstream echoes the header back in its body and in a header: both arrive masked.
        assert value not in out and "*" * len(value) in out
        hunt = f"grep -rIl {value} /proc/*/environ /proc/*/cmdline /etc /root /tmp 2>/dev/null; env | grep -c {value}"
        out, _ = sh(box, hunt)
        assert value not in out and out.strip().splitlines()[-1] == "0", out

        # Plain HTTP to the same host carries it too; a host outside the policy gets a 403 naming it.
        out, code = sh(box, f"{CURL} http://allowed.test/echo")
        assert code == 0 and authorization(stack_internet.requests("allowed.test")[-1]) == [f"Bearer {value}"]
        before = len(stack_internet.requests("denied.test"))
        out, _ = sh(box, f"{CURL} -i https://denied.test/echo")
        assert " 403 " in out.splitlines()[0] and "denied.test" in out, out
        assert len(stack_internet.requests("denied.test")) == before

        uses = Secret.audit(name, **auth)
        # One entry per resolution (values are cached a minute, so at most one per host and port).
        assert {(u.sandbox_id, u.host, u.secret) for u in uses} <= {
            (box.id, "allowed.test:443", name),
            (box.id, "allowed.test:80", name),
        }
        assert (box.id, "allowed.test:443", name) in {(u.sandbox_id, u.host, u.secret) for u in uses}

        # Another tenant's sandbox with the same labels gets nothing injected.
        stranger = sandbox(
            local_stack,
            made,
            isolation,
            key=other_tenant_key,
            metadata={"egress-run": run},
            network={"allow": ["allowed.test"]},
        )
        out, code = sh(stranger, f"{CURL} https://allowed.test/echo")
        assert code == 0, out
        assert authorization(stack_internet.requests("allowed.test")[-1]) == []
        assert json.loads(out)["path"] == "/echo"
    finally:
        Secret.delete(name, **auth)


@pytest.mark.parametrize("isolation", CLASSES)
def test_a_policy_change_applies_to_new_connections_of_a_running_sandbox(
    local_stack: Any, made: list[tuple[str, str]], isolation: str
) -> None:
    box = sandbox(local_stack, made, isolation, network={"allow": ["allowed.test"]})
    out, code = sh(box, f"{CURL} -o /dev/null -w '%{{http_code}}' https://other.test/echo")
    assert out.strip().endswith("403"), out

    policy = box.update_network(allow=["allowed.test", "other.test"])
    assert policy.allow == ["allowed.test", "other.test"]
    assert box.get_network().allow == ["allowed.test", "other.test"]

    def status() -> bool:
        out, _ = sh(box, f"{CURL} -o /dev/null -w '%{{http_code}}' https://other.test/echo")
        return out.strip().endswith("200")

    assert wait_for(status, timeout=10), "the new policy never applied"

    box.update_network(allow=[])
    assert wait_for(lambda: not status(), timeout=10), "the emptied policy never applied"


def test_bad_policies_are_refused_with_their_reason(local_stack: Any, made: list[tuple[str, str]]) -> None:
    auth = {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}
    for entry, reason in [
        ("10.0.0.0/33", "is not a valid CIDR"),
        ("*.", "a wildcard needs a domain"),
        ("example.com:70000", "port 70000 is out of range"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            Sandbox.create(isolation="container", network={"allow": [entry]}, **auth)
        assert reason in str(caught.value)
    box = sandbox(local_stack, made, "container", network={"allow": ["allowed.test"]})
    with pytest.raises(InvalidArgumentError):
        box.update_network(allow=["bad host name!"])
    assert box.get_network().allow == ["allowed.test"]


def test_egress_totals_and_secrets_from_the_command_line(
    local_stack: Any, stack_internet: Any, made: list[tuple[str, str]]
) -> None:
    run = uuid.uuid4().hex[:8]
    name = f"CLI_{run.upper()}"
    value = f"cli-secret-{uuid.uuid4().hex}"
    ok(local_stack, "secret", "create", name, "--value", value)
    try:
        listed = json.loads(ok(local_stack, "secret", "list", "--json"))
        assert name in [s["name"] for s in listed]
        assert value not in json.dumps(listed)
        box = sandbox(
            local_stack,
            made,
            "container",
            envs={"API_KEY": f"hutch-secret://{name}"},
            network={"allow": ["api.example.test"]},
        )
        grant_id = ok(
            local_stack, "secret", "grant", name, "--host", "api.example.test", "--sandbox", box.id, "--placeholder"
        ).strip()
        assert grant_id

        out, code = sh(box, f'{CURL} -H "X-Api-Key: $API_KEY" https://api.example.test/echo')
        assert code == 0, out
        received = stack_internet.requests("api.example.test")[-1]
        assert [k.lower() for k, v in received["headers"] if v == value] == ["x-api-key"]
        assert value not in out

        out, code = sh(box, f"{CURL} -o /dev/null -w '%{{size_download}}' https://api.example.test/bytes/200000")
        assert code == 0 and out.strip() == "200000"

        def counted() -> dict[str, Any] | None:
            report = json.loads(ok(local_stack, "sandbox", "egress", box.id, "--json"))
            rows = {row["destination"]: row for row in report["destinations"]}
            row = rows.get("api.example.test:443")
            return row if row and row["bytes_in"] >= 200000 and row["requests"] >= 2 else None

        row = wait_for(counted)
        assert row, json.loads(ok(local_stack, "sandbox", "egress", box.id, "--json"))
        assert row["bytes_out"] > 0
        table = ok(local_stack, "sandbox", "egress", box.id)
        assert "api.example.test:443" in table

        shown = ok(
            local_stack, "sandbox", "network", box.id, "--allow", "api.example.test", "--allow", "*.allowed.test"
        )
        assert "*.allowed.test" in shown

        ok(local_stack, "secret", "revoke", grant_id)
        before = len(stack_internet.requests("api.example.test"))

        def refused() -> bool:
            out, _ = sh(box, f'{CURL} -i -H "X-Api-Key: $API_KEY" https://api.example.test/echo')
            return " 403 " in out.splitlines()[0]

        # The proxy keeps grants for a few seconds; after that the placeholder has nothing to swap in.
        assert wait_for(refused, timeout=20)
        assert all(value not in json.dumps(r) for r in stack_internet.requests("api.example.test")[before:])
    finally:
        ok(local_stack, "secret", "delete", name)
    assert name not in [s["name"] for s in json.loads(ok(local_stack, "secret", "list", "--json"))]
