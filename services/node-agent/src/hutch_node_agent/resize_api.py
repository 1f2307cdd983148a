"""The node-agent's resize call: a running sandbox's CPU and memory, changed in place."""

from __future__ import annotations

from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2
from hutch_node_agent.sandboxes import SandboxManager


class ResizeCalls:
    """The NodeAgent service's Resize method."""

    _manager: SandboxManager

    async def Resize(
        self, request: node_agent_pb2.ResizeSandboxRequest, context: Context
    ) -> node_agent_pb2.ResizeSandboxResponse:
        resized = await self._manager.resize(request.sandbox, request.cpu_millis, request.memory_mb)
        now = resized.sandbox.request
        return node_agent_pb2.ResizeSandboxResponse(
            cpu_millis=now.cpu_millis,
            memory_mb=now.memory_mb,
            previous_cpu_millis=resized.previous.cpu_millis,
            previous_memory_mb=resized.previous.memory_mb,
            memory_in_use_bytes=resized.memory_in_use_bytes,
        )
