"""A second node-agent beside the local stack's own `local-1`, for tests of more than one node.

It runs the stack's node-agent command against the same NATS, PostgreSQL and snapshot-store, with
its own id, root folder, cgroup parent, sandbox network and gRPC port, all new for each instance, so
that nothing one test leaves on the host can meet the next one's. The stack's egress-proxy belongs
to `local-1`, so its sandboxes reach nothing outside. `retire` takes away what a node-agent leaves
on the host by design when it stops (sandboxes, their networks and firewall, the quota volume).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from hutch.core.bus import fenced_bucket, nodes_bucket
from hutch.local.process import ProcessHandle, spawn
from hutch.testing.eventually import eventually_sync
from hutch.testing.node_host import clear_node_host


class ExtraNode:
    def __init__(self, local_stack: Any, root: Path, node_id: str = "", **settings: str) -> None:
        """`settings`: more HUTCH_NODE__* values, by their lowercase name (memory_mb="1024")."""
        node_id = node_id or f"local-x{uuid.uuid4().hex[:6]}"
        component = local_stack._state().component("node-agent")
        env = {
            key: value
            for key, value in local_stack.service_env("node-agent").items()
            if not key.startswith(("HUTCH_NODE__EGRESS_PROXY", "HUTCH_NODE__EGRESS_TARGET"))
        }
        env.update(
            {
                "HUTCH_NODE__ID": node_id,
                "HUTCH_NODE__ROOT_DIR": str(root),
                "HUTCH_NODE__CGROUP_PARENT": f"hutch-{node_id}",
                # Apart from the test nodes' pools (100.97.1.0/24 upwards, see hutch.testing.node).
                "HUTCH_NODE__SANDBOX_NETWORK": f"100.97.{random.randrange(200, 255)}.0/24",
                "HUTCH_NODE__DISK_QUOTA_MB": "512",
                "HUTCH_NODE__VOLUME_SIZE_GB": "4",
                "HUTCH_NODE__BUILD_BASE_TEMPLATE": "false",
                "HUTCH_GRPC__PORT": "0",
            }
        )
        env.update({f"HUTCH_NODE__{name.upper()}": value for name, value in settings.items()})
        self.node_id = node_id
        self.nats_url: str = local_stack.nats_url
        self.root = root
        self.env = env
        self.argv = list(component.argv)
        self.log = root.parent / f"{node_id}.log"
        self.handle: ProcessHandle | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.handle = spawn(self.argv, log_path=self.log, env=self.env)
        eventually_sync(lambda: "serving on" in self.log.read_text()[offset:], timeout=120, interval=0.2)

    def kill(self) -> None:
        assert self.handle is not None
        self.handle.kill()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()

    def holds(self, sandbox_id: str) -> bool:
        return (self.root / "sandboxes" / sandbox_id / "sandbox.json").exists()

    def sandboxes(self) -> list[str]:
        folder = self.root / "sandboxes"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def init_pid(self, sandbox_id: str) -> int:
        pid = json.loads((self.root / "sandboxes" / sandbox_id / "sandbox.json").read_text())["init_pid"]
        assert isinstance(pid, int) and pid > 0
        return pid

    def forget(self, region: str = "local") -> None:
        """Takes a stopped node out of the region's view (its heartbeat and any fence), so that no
        later test is placed on it while its last heartbeat is still fresh."""

        async def forget() -> None:
            client = await nats.connect(self.nats_url)
            try:
                js = client.jetstream()
                for bucket in (nodes_bucket(region), fenced_bucket(region)):
                    with contextlib.suppress(Exception):
                        await (await js.key_value(bucket)).purge(self.node_id)
            finally:
                await client.close()

        asyncio.run(forget())

    def retire(self) -> None:
        """Ends the node for good: back once if it was killed (so that its fence guard stops what it
        left running), then stopped, forgotten and its traces on the host removed."""
        if self.handle is not None and not self.handle.alive():
            with contextlib.suppress(Exception):
                self.start()
                time.sleep(3)
        self.stop()
        self.forget()
        self._clear_host()

    def _clear_host(self) -> None:
        clear_node_host(self.node_id, self.env["HUTCH_NODE__CGROUP_PARENT"], self.root)
