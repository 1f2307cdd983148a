"""The node-agent's data plane: the NodeAgent gRPC service, assembled from one class per area.

Thin: each call finds the running sandbox, talks to its supervisor and converts the answer. Errors
are domain errors, turned into statuses by hutch.core.grpc_runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2, node_agent_pb2_grpc
from hutch_node_agent.adopt_api import AdoptCalls
from hutch_node_agent.egress_registrar import EgressRegistrar
from hutch_node_agent.files_api import FileCalls
from hutch_node_agent.process_api import ProcessCalls
from hutch_node_agent.resize_api import ResizeCalls
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.snapshot_api import SnapshotCalls
from hutch_node_agent.snapshots import NodeSnapshots
from hutch_node_agent.template_api import TemplateCalls
from hutch_node_agent.templates import TemplateStore
from hutch_node_agent.tunnel_api import TunnelCalls


class NodeAgentServicer(
    ProcessCalls,
    FileCalls,
    TunnelCalls,
    TemplateCalls,
    SnapshotCalls,
    ResizeCalls,
    AdoptCalls,
    node_agent_pb2_grpc.NodeAgentServicer,
):
    def __init__(
        self,
        manager: SandboxManager,
        options: NodeOptions,
        templates: TemplateStore,
        templates_changed: Callable[[], Awaitable[None]],
        snapshots: NodeSnapshots,
        egress: EgressRegistrar | None = None,
    ) -> None:
        self._manager = manager
        self._egress = egress
        self._snapshots = snapshots
        self._options = options
        self._templates = templates
        self._templates_changed = templates_changed

    async def ListLocal(
        self, request: node_agent_pb2.ListLocalRequest, context: Context
    ) -> node_agent_pb2.ListLocalResponse:
        return node_agent_pb2.ListLocalResponse(
            sandboxes=[
                node_agent_pb2.LocalSandbox(
                    sandbox_id=s.id, tenant_id=s.request.tenant_id, status=s.status, init_pid=s.init_pid
                )
                for s in self._manager.all()
            ]
        )
