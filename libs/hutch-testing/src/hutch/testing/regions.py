"""Two regions of the platform on one machine, joined as a NATS supercluster, for cross-region tests.

`hutch local up --regions 2` in a private home on free ports: region `local` in the home, region
`local-2` in home/local/regions/local-2, sharing the first region's PostgreSQL (a database each) and
S3 (a bucket each) and their credentials, so the dev tenant and its API key exist in both. The first
region's node-agent gets an id, cgroup parent and address pool of its own too, so that it never meets
the node-agent of the `local_stack` fixture (`local-1`) when both run in one session.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from hutch.local import stack
from hutch.local.regions import region_home
from hutch.local.stack import StackError, StackOptions, UpResult
from hutch.testing.local_stack import LocalStack
from hutch.testing.node_host import clear_node_host

FIRST_NODE_ID = "local-r1"
# Apart from the default pool (100.96.0.0/16), the test pools (100.97.0.0/16) and the second
# region's (100.98.0.0/16).
FIRST_SANDBOX_NETWORK = "100.95.0.0/16"


@dataclass(frozen=True)
class NodeOnHost:
    """A node-agent of the stack, by what names its traces on the host."""

    node_id: str
    cgroup_parent: str
    root: Path

    @classmethod
    def of(cls, result: UpResult) -> NodeOnHost | None:
        if "node-agent" not in result.state.names():
            return None
        env = result.state.component("node-agent").env
        return cls(
            env["HUTCH_NODE__ID"], env.get("HUTCH_NODE__CGROUP_PARENT", "hutch"), Path(env["HUTCH_NODE__ROOT_DIR"])
        )


@dataclass
class TwoRegions:
    """A running two-region stack.

    `first` and `second` are the regions as `LocalStack`s (endpoint, api_key, kill/restart of any
    component, NATS included); `first.stop()` would stop both, `second.stop()` only the second:
    use `stop()` here, which also takes away what the node-agents leave on the host.
    """

    home: Path
    first: LocalStack
    second: LocalStack
    nodes: list[NodeOnHost] = field(default_factory=list)

    @classmethod
    def start(cls, home: Path, *, startup_timeout_s: float = 180.0) -> TwoRegions:
        """Starts both regions detached in `home` with every port picked free; waits until healthy."""
        templates = os.environ.get("HUTCH_NODE__TEMPLATES_DIR")
        options = StackOptions(
            home=home,
            ports=dict.fromkeys(stack.default_ports(), 0),
            durable=False,
            startup_timeout_s=startup_timeout_s,
            templates_dir=Path(templates) if templates else stack.DEFAULT_TEMPLATES_DIR,
            node_id=FIRST_NODE_ID,
            node_cgroup_parent=f"hutch-{FIRST_NODE_ID}",
            sandbox_network=FIRST_SANDBOX_NETWORK,
        )
        try:
            first, second = stack.up_regions(options, 2, detach=True)
        except StackError as exc:
            # Test reports show the message only; the component's log is what explains a failure.
            raise StackError(f"{exc}\n{exc.log_tail}", component=exc.component) from exc
        regions = cls(
            home=home,
            first=LocalStack.from_state(home, first.state, first.api_key),
            second=LocalStack.from_state(region_home(home, second.state.region), second.state, second.api_key),
        )
        regions.nodes = [node for node in map(NodeOnHost.of, (first, second)) if node is not None]
        return regions

    def stop(self) -> None:
        """Stops both regions (the second first) and removes what their node-agents left behind."""
        try:
            stack.down(self.home)
        finally:
            for node in self.nodes:
                with contextlib.suppress(OSError):
                    clear_node_host(node.node_id, node.cgroup_parent, node.root)
