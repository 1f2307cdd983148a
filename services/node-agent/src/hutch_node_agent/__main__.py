"""hutch-node-agent: run the node-agent, build the base template (`template build-base`), or release
the host (`release`: kill this node's sandboxes and undo what it set up, after the agent stopped)."""

from __future__ import annotations

import asyncio
import sys

from hutch.core.lifecycle import configure_logging
from hutch_node_agent import templates
from hutch_node_agent.settings import NodeAgentSettings

USAGE = """usage: hutch-node-agent                    run the node-agent (settings from HUTCH_* env)
       hutch-node-agent template build-base  build the base template into HUTCH_NODE__TEMPLATES_DIR
       hutch-node-agent release              kill this node's sandboxes, remove its networks and
                                             firewall table, unmount its volume (agent stopped)"""


def main() -> None:
    settings = NodeAgentSettings()
    configure_logging(settings.log_level, "node-agent")
    args = sys.argv[1:]
    if args == ["template", "build-base"]:
        template = templates.build_base(settings.node.templates_dir)
        print(f"base template ready at {template.rootfs}")  # noqa: T201
        return
    if args == ["release"]:
        released = asyncio.run(release(settings))
        print(f"node {settings.node.id} released ({released} sandboxes killed)")  # noqa: T201
        return
    if args:
        print(USAGE, file=sys.stderr)  # noqa: T201
        raise SystemExit(2)
    from hutch_node_agent import app

    asyncio.run(app.run(settings))


async def release(settings: NodeAgentSettings) -> int:
    """Kills every sandbox the node left running and removes what it set up on the host. For a node
    being decommissioned, and for `hutch local down`; the node-agent itself must be stopped."""
    from hutch_node_agent.domain import LocalSandbox
    from hutch_node_agent.node import assemble

    async def ignore(sandbox: LocalSandbox, reason: str) -> None:
        return None

    options = settings.node.model_copy(update={"build_base_template": False})
    node = await assemble(options, ignore)
    await node.manager.recover()
    count = len(node.manager.all())
    await node.dismantle()
    return count


if __name__ == "__main__":
    main()
