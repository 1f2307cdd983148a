"""hutch.internal.v1.EgressProxy: the node-agent registers its sandboxes. Thin."""

from __future__ import annotations

from collections.abc import Callable

from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import egress_proxy_pb2 as pb
from hutch.internal.v1 import egress_proxy_pb2_grpc
from hutch_egress_proxy import registry as reg
from hutch_egress_proxy.registry import Registry, SandboxEntry


def entry_from(message: pb.SandboxRegistration) -> SandboxEntry:
    return reg.entry(
        message.sandbox_id,
        message.tenant_id,
        message.address,
        message.policy.allow,
        message.policy.deny,
        message.policy.passthrough,
        message.name,
        dict(message.labels),
        message.node_id,
    )


class EgressProxyServicer(egress_proxy_pb2_grpc.EgressProxyServicer):
    def __init__(self, registry: Registry, forget: Callable[[str], None]) -> None:
        self._registry = registry
        self._forget = forget

    async def Sync(self, request: pb.SyncSandboxesRequest, context: Context) -> pb.SyncSandboxesResponse:
        entries = [entry_from(m) for m in request.sandboxes]
        gone = {e.sandbox_id for e in self._all(request.node_id)} - {e.sandbox_id for e in entries}
        self._registry.sync(request.node_id, entries)
        for sandbox_id in gone:
            self._forget(sandbox_id)
        return pb.SyncSandboxesResponse(epoch=self._registry.epoch)

    async def Register(self, request: pb.RegisterSandboxRequest, context: Context) -> pb.RegisterSandboxResponse:
        self._registry.register(entry_from(request.sandbox))
        self._forget(request.sandbox.sandbox_id)  # cached grants may no longer fit the new labels
        return pb.RegisterSandboxResponse(epoch=self._registry.epoch)

    async def Unregister(self, request: pb.UnregisterSandboxRequest, context: Context) -> pb.UnregisterSandboxResponse:
        self._registry.unregister(request.sandbox_id)
        self._forget(request.sandbox_id)
        return pb.UnregisterSandboxResponse(epoch=self._registry.epoch)

    async def Status(self, request: pb.EgressProxyStatusRequest, context: Context) -> pb.EgressProxyStatus:
        return pb.EgressProxyStatus(epoch=self._registry.epoch, sandboxes=len(self._registry))

    def _all(self, node_id: str) -> list[SandboxEntry]:
        return [e for e in self._registry.entries() if e.node_id == node_id]
