"""The node-agent's integration tests run real nodes in-process (see hutch.testing.node)."""

from hutch.testing.node import node_options, require_node_tools, running_node

__all__ = ["node_options", "require_node_tools", "running_node"]
