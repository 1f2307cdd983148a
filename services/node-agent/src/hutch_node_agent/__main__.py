"""hutch-node-agent: run the node-agent, or build the base template (`template build-base`)."""

from __future__ import annotations

import asyncio
import sys

from hutch.core.lifecycle import configure_logging
from hutch_node_agent import templates
from hutch_node_agent.settings import NodeAgentSettings

USAGE = """usage: hutch-node-agent                    run the node-agent (settings from HUTCH_* env)
       hutch-node-agent template build-base  build the base template into HUTCH_NODE__TEMPLATES_DIR"""


def main() -> None:
    settings = NodeAgentSettings()
    configure_logging(settings.log_level, "node-agent")
    args = sys.argv[1:]
    if args == ["template", "build-base"]:
        template = templates.build_base(settings.node.templates_dir)
        print(f"base template ready at {template.rootfs}")  # noqa: T201
        return
    if args:
        print(USAGE, file=sys.stderr)  # noqa: T201
        raise SystemExit(2)
    from hutch_node_agent import app

    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
