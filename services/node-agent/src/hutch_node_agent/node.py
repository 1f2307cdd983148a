"""Assembles a node: host checks, templates, the supervisor's runtime, disk quotas, sandbox
networks, isolation runtimes and the SandboxManager over them. The one place that knows the order
these must be prepared in; used by the node-agent process and by tests that run a node in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from hutch_node_agent import host, templates
from hutch_node_agent.layout import NodeLayout
from hutch_node_agent.network import SandboxNetworks
from hutch_node_agent.quota import DiskQuotas
from hutch_node_agent.runtime import OciRuntime, node_runtimes
from hutch_node_agent.sandboxes import (
    ReleasingCallback,
    ResizedCallback,
    SandboxManager,
    StoppedCallback,
    WarningCallback,
)
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.snapshots import NodeSnapshots, SnapshotStoreLink
from hutch_node_agent.supervisor.bundle import build_runtime


@dataclass
class Node:
    options: NodeOptions
    layout: NodeLayout
    manager: SandboxManager
    templates: templates.TemplateStore
    runtimes: dict[str, OciRuntime]
    networks: SandboxNetworks
    quotas: DiskQuotas | None
    snapshots: NodeSnapshots

    async def close(self) -> None:
        """Stops watching; sandboxes, their networks and the volume stay for the next process."""
        await self.snapshots.close()
        await self.manager.close()

    async def dismantle(self) -> None:
        """Kills every sandbox and removes what the node set up on the host (tests, decommissioning)."""
        for sandbox in self.manager.all():
            with contextlib.suppress(Exception):
                await self.manager.kill(sandbox.id, "killed")
        await self.snapshots.close()
        await self.manager.close()
        await self.networks.teardown()
        if self.quotas is not None:
            await self.quotas.detach()


async def assemble(
    options: NodeOptions,
    on_stopped: StoppedCallback,
    on_timeout_warning: WarningCallback | None = None,
    on_releasing: ReleasingCallback | None = None,
    snapshot_store: SnapshotStoreLink | None = None,
    on_resized: ResizedCallback | None = None,
) -> Node:
    host.check_host()
    if options.userns_shift:
        options.root_dir.mkdir(parents=True, exist_ok=True)
        host.allow_traversal(options.root_dir / "sandboxes")
    store = templates.TemplateStore(options.templates_dir)
    if templates.BASE not in store.names() and options.build_base_template:
        await asyncio.to_thread(templates.build_base, options.templates_dir)
    for name in store.names():  # once per template; later starts find them shifted already
        await asyncio.to_thread(store.ensure_shift, name, options.userns_shift)
    quotas = None
    if options.disk_quota_mb:
        quotas = DiskQuotas.from_options(options)
        await quotas.prepare()
    layout = NodeLayout(options.root_dir, quotas.volume_root if quotas is not None else None)
    layout.create()
    networks = SandboxNetworks.for_node(options)
    await networks.setup()
    supervisor = await asyncio.to_thread(build_runtime, layout.runtime_cache)
    runtimes = node_runtimes(layout.root, netns_of=networks.netns_of)
    manager = SandboxManager(
        options,
        layout,
        runtimes,
        store,
        supervisor,
        on_stopped,
        networks,
        quotas,
        on_timeout_warning,
        on_releasing,
        on_resized=on_resized,
    )
    snapshots = NodeSnapshots(
        manager, layout, options.userns_shift, int(options.snapshot_cache_gb * 2**30), snapshot_store
    )
    await snapshots.recover()
    return Node(options, layout, manager, store, runtimes, networks, quotas, snapshots)
