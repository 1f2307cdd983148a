"""What every sandbox is held in, checked from both sides: user namespace, disk quota, seccomp and
its own network, under both isolation classes."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import node_options, running_node

from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.layout import SandboxPaths
from hutch_node_agent.node import Node
from hutch_node_agent.supervisor.client import Exited, Output

pytestmark = pytest.mark.integration

QUOTA_MB = 64


@dataclass
class Box:
    node: Node
    id: str
    isolation: str

    @property
    def paths(self) -> SandboxPaths:
        return self.node.layout.sandbox(self.id)

    async def sh(self, cmd: str) -> tuple[str, int]:
        sandbox = self.node.manager.running(self.id)
        out, code = [], -99
        async with await self.node.manager.supervisor(self.id).exec({"cmd": cmd, "env": sandbox.env}) as session:
            async for event in session:
                if isinstance(event, Output):
                    out.append(event.data.decode(errors="replace"))
                elif isinstance(event, Exited):
                    code = event.exit_code
        return "".join(out), code


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Box]:
    options = node_options(tmp_path_factory.mktemp("hardening"), disk_quota_mb=QUOTA_MB)
    async with running_node(options) as node:
        sandbox_id = f"sb-{uuid.uuid4().hex[:20]}"
        await node.manager.create(
            SandboxRequest(
                sandbox_id=sandbox_id,
                tenant_id="t",
                template="busybox",
                cpu_millis=500,
                memory_mb=256,
                isolation=request.param,
            )
        )
        yield Box(node, sandbox_id, request.param)


async def test_root_inside_is_an_unprivileged_uid_outside(box: Box) -> None:
    out, code = await box.sh("id -u; echo made > /root/owned; cat /proc/self/uid_map")
    assert code == 0 and out.splitlines()[0] == "0"
    written = box.paths.upper / "root" / "owned"
    shift = box.node.options.userns_shift
    assert shift > 0 and written.stat().st_uid == shift and written.stat().st_gid == shift
    if box.isolation == "container":
        assert out.splitlines()[1].split() == ["0", str(shift), "65536"]


async def test_the_writable_layer_stops_at_its_quota(box: Box) -> None:
    out, code = await box.sh(f"dd if=/dev/zero of=/root/fill bs=1M count={QUOTA_MB * 2} 2>&1")
    assert code != 0
    assert "quota" in out.lower() or "no space" in out.lower(), out
    size = (box.paths.upper / "root" / "fill").stat().st_size
    assert size <= QUOTA_MB * 2**20
    # Freeing space makes room again: the limit is on what the sandbox holds, not what it ever wrote.
    out, code = await box.sh("rm /root/fill && sync && dd if=/dev/zero of=/root/small bs=1M count=4 2>&1")
    assert code == 0, out
    await box.sh("rm -f /root/small")


async def test_namespace_and_mount_system_calls_are_refused(box: Box) -> None:
    out, _ = await box.sh(
        "unshare -m true 2>&1; unshare -U true 2>&1; mkdir -p /root/m; mount -t tmpfs none /root/m 2>&1"
    )
    refusals = out.lower().count("not permitted") + out.lower().count("permission denied")
    # The container class refuses all three (seccomp, missing capabilities); gVisor's own kernel
    # may grant a user namespace inside the sandbox, but never a mount.
    assert refusals >= (3 if box.isolation == "container" else 1), out
    out, _ = await box.sh("grep -c ' /root/m ' /proc/mounts")
    assert out.strip() == "0"  # nothing got mounted


async def test_the_network_reaches_nothing_but_itself(box: Box) -> None:
    network = box.node.networks.get(box.id)
    out, _ = await box.sh("ip -o -4 addr show | awk '{print $2, $4}'")
    if box.isolation == "gvisor":
        # runsc here cannot join a prepared namespace; gVisor sandboxes get loopback only.
        assert network is None
        assert out.split() == ["lo", "127.0.0.1/8"]
        return
    assert network is not None
    assert f"eth0 {network.sandbox_ip}/30" in out
    # A server on the host end of the sandbox's own link: refused, not reachable.
    server = socket.create_server((str(network.host_ip), 0))
    port = server.getsockname()[1]
    try:
        out, code = await box.sh(f"nc -w 2 {network.host_ip} {port} </dev/null; echo exit=$?")
        assert "exit=0" not in out
    finally:
        server.close()
    out, _ = await box.sh("ping -c 1 -W 1 169.254.169.254 2>&1; echo exit=$?")
    assert "exit=0" not in out


async def test_the_node_can_reach_a_port_inside_a_container_sandbox(box: Box) -> None:
    if box.isolation == "gvisor":
        pytest.skip("gVisor sandboxes have no link to the node on this runsc (see the network docs)")
    network = box.node.networks.get(box.id)
    assert network is not None
    await box.sh("(echo served | nc -l -p 8080) >/dev/null 2>&1 &")
    for _ in range(50):
        try:
            with socket.create_connection((str(network.sandbox_ip), 8080), timeout=2) as conn:
                assert conn.recv(100) == b"served\n"
                return
        except OSError:
            await asyncio.sleep(0.1)
    pytest.fail("the node could not connect to the sandbox's port")


def test_nothing_of_the_sandbox_belongs_to_host_root(box: Box) -> None:
    owners = {entry.stat(follow_symlinks=False).st_uid for entry in Path(box.paths.upper).rglob("*")}
    assert 0 not in owners
    assert os.stat(box.paths.run).st_uid == box.node.options.userns_shift
