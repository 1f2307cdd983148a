"""The node-agent's Adopt call: a warm pool member becomes a tenant's sandbox (hutch.core.warm_pool)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2
from hutch_node_agent.convert import request_from_spec
from hutch_node_agent.egress_registrar import EgressRegistrar
from hutch_node_agent.sandboxes import SandboxManager


class AdoptCalls:
    """The NodeAgent service's Adopt method."""

    _manager: SandboxManager
    _egress: EgressRegistrar | None

    async def Adopt(
        self, request: node_agent_pb2.AdoptSandboxRequest, context: Context
    ) -> node_agent_pb2.AdoptSandboxResponse:
        sandbox = await self._manager.adopt(request_from_spec(request.spec))
        if self._egress is not None:
            # Its new owner, labels and policy, before the gateway hands it out. Until now the
            # proxy held it as the pool's, which may reach nothing.
            await self._egress.started(sandbox)
        started_at = Timestamp()
        if sandbox.started_at is not None:
            started_at.FromDatetime(sandbox.started_at)
        return node_agent_pb2.AdoptSandboxResponse(started_at=started_at)
