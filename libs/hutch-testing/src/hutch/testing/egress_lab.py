"""A node, its egress-proxy and a fake internet, in one process, for egress tests and benchmarks.

    async with egress_lab(tmp_path, index=11) as lab:
        box = await lab.sandbox("container", allow=["allowed.test"])
        out, code = await box.sh("curl -s https://allowed.test/echo")

The node is real (crun or runsc, network namespaces, the node's nftables table), the proxy is the
real egress-proxy (mitmproxy in transparent mode, the DNS responder, the registry), and the
upstreams are the fake internet's servers in their own namespace. Sandboxes use the `base`
template (curl, python3) from HUTCH_NODE__TEMPLATES_DIR. Everything is removed on exit, also after
a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hutch.core.config import GrpcSettings
from hutch.core.events import Envelope
from hutch.testing.internet import FakeInternet

if TYPE_CHECKING:
    from hutch_egress_proxy.proxy import EgressProxy
    from hutch_egress_proxy.settings import EgressOptions
    from hutch_node_agent.egress_registrar import EgressRegistrar
    from hutch_node_agent.node import Node

INTERNAL_TOKEN = "egress-lab-internal-token"
TEMPLATES = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
# Each lab's sandboxes take a /24 of this /16: apart from the local stack's and other tests' pools.
_POOLS = (f"100.120.{n % 256}.0/24" for n in itertools.count(uuid.uuid4().int % 256))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LabSandbox:
    lab: EgressLab
    id: str
    isolation: str

    async def sh(self, cmd: str, timeout: float = 60.0) -> tuple[str, int]:
        """Runs `cmd` with sh inside the sandbox; (stdout and stderr together, exit code)."""
        from hutch_node_agent.supervisor.client import Exited, Output

        manager = self.lab.node.manager
        sandbox = manager.running(self.id)
        out: list[str] = []
        code = -1

        async def run() -> None:
            nonlocal code
            async with await manager.supervisor(self.id).exec({"cmd": cmd, "env": sandbox.env}) as session:
                async for event in session:
                    if isinstance(event, Output):
                        out.append(event.data.decode(errors="replace"))
                    elif isinstance(event, Exited):
                        code = event.exit_code

        await asyncio.wait_for(run(), timeout)
        return "".join(out), code

    async def update(
        self, allow: Iterable[str] = (), deny: Iterable[str] = (), passthrough: Iterable[str] = ()
    ) -> None:
        sandbox = self.lab.node.manager.running(self.id)
        await self.lab.registrar.update(
            sandbox, {"allow": list(allow), "deny": list(deny), "passthrough": list(passthrough)}
        )


@dataclass
class EgressLab:
    base: Path
    internet: FakeInternet
    options: EgressOptions
    node: Node
    registrar: EgressRegistrar
    # The proxy's registry (gRPC), which the node's registrar talks to.
    api_port: int
    proxy: EgressProxy | None = None
    events: list[tuple[str, Envelope[Any]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _sync: asyncio.Task[None] | None = None
    _sync_stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, subject: str, envelope: Envelope[Any]) -> None:
        self.events.append((subject, envelope))

    async def start_proxy(self) -> None:
        from hutch_egress_proxy.proxy import EgressProxy

        self.proxy = await EgressProxy.start(
            self.options, "lab", self.publish, GrpcSettings(port=self.api_port, shutdown_grace_s=0), INTERNAL_TOKEN
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.proxy.run(self._stop))
        await self._listening(self.options.transparent_port)

    async def stop_proxy(self) -> None:
        if self.proxy is None:
            return
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.proxy.close()
        self.proxy = None

    async def flush(self) -> None:
        if self.proxy is not None:
            await self.proxy.accounting.flush()

    async def sandbox(
        self,
        isolation: str,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        passthrough: Iterable[str] = (),
        *,
        name: str = "",
        metadata: Mapping[str, str] | None = None,
        tenant: str = "tenant-a",
        envs: Mapping[str, str] | None = None,
    ) -> LabSandbox:
        from hutch_node_agent.domain import SandboxRequest

        request = SandboxRequest(
            sandbox_id=f"sb-{uuid.uuid4().hex[:20]}",
            tenant_id=tenant,
            template="base",
            cpu_millis=1000,
            memory_mb=512,
            name=name,
            envs=dict(envs or {}),
            metadata=dict(metadata or {}),
            isolation=isolation,
            network={"allow": list(allow), "deny": list(deny), "passthrough": list(passthrough)},
        )
        sandbox = await self.node.manager.create(request)
        await self.registrar.started(sandbox)
        return LabSandbox(self, sandbox.id, isolation)

    async def kill(self, box: LabSandbox) -> None:
        if await self.node.manager.kill(box.id, "killed"):
            await self.registrar.stopped(box.id)

    async def _listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def egress_lab(
    base: Path,
    index: int,
    *,
    resolver_address: str = "",
    resolver_token: str = "",
    isolation_classes: tuple[str, ...] = ("container", "gvisor"),
) -> AsyncIterator[EgressLab]:
    """A running lab; `index` picks the fake internet's /24 (distinct per concurrent lab)."""
    from hutch_egress_proxy.settings import EgressOptions
    from hutch_node_agent import host
    from hutch_node_agent.egress_registrar import EgressRegistrar
    from hutch_node_agent.node import assemble
    from hutch_node_agent.settings import EgressProxyTarget, NodeOptions

    del isolation_classes  # both are always offered; kept for callers that name them
    with FakeInternet(base / "internet", index) as internet:
        options = EgressOptions(
            node_id=f"lab-{uuid.uuid4().hex[:6]}",
            state_dir=base / "egress",
            transparent_port=free_port(),
            dns_port=free_port(socket.SOCK_DGRAM),
            upstream_ca_file=internet.ca_file,
            nameservers=[internet.dns_server],
            secrets_resolver_address=resolver_address,
            resolver_token=resolver_token,  # type: ignore[arg-type]
            report_interval_s=3600,
        )
        api_port = free_port()
        node_options = NodeOptions(
            id=options.node_id,
            root_dir=base / "node",
            templates_dir=TEMPLATES,
            build_base_template=False,
            cgroup_parent=f"hutch-test-{uuid.uuid4().hex[:8]}",
            sandbox_network=next(_POOLS),
            volume_size_gb=2,
            disk_quota_mb=512,
            egress_proxy=EgressProxyTarget(
                transparent_port=options.transparent_port,
                dns_port=options.dns_port,
                api=f"127.0.0.1:{api_port}",
                ca_file=options.state_dir / "ca.pem",
            ),
        )
        host.release_hybrid_cgroup_controllers()

        async def ignore(*_: Any) -> None:
            return None

        node = await assemble(node_options, ignore)
        lab: EgressLab | None = None
        try:
            registrar = EgressRegistrar(
                node_options.id,
                f"127.0.0.1:{api_port}",
                INTERNAL_TOKEN,
                base / "node" / "network" / "egress-policies.json",
                node.manager.all,
                lambda sandbox_id: (
                    str(network.sandbox_ip) if (network := node.networks.get(sandbox_id)) is not None else None
                ),
            )
            lab = EgressLab(base, internet, options, node, registrar, api_port)
            await lab.start_proxy()
            lab._sync_stop = asyncio.Event()
            lab._sync = asyncio.create_task(registrar.run(lab._sync_stop, every_s=0.2))
            yield lab
        finally:
            if lab is not None:
                lab._sync_stop.set()
                if lab._sync is not None:
                    with contextlib.suppress(Exception):
                        await lab._sync
                await lab.stop_proxy()
                await registrar.close()
            await node.dismantle()
