"""The public view of the region's nodes (`hutch.v1.Nodes`): capacity and allocation from their
heartbeats, the same for every tenant. Nothing about another tenant's sandboxes is shown: only a
node's total count, and which of the caller's own sandboxes run there."""

from __future__ import annotations

import asyncpg

from hutch.core.grpc_runtime import Context
from hutch.core.nodes import NodeDirectory, NodeInfo
from hutch.v1 import nodes_pb2, nodes_pb2_grpc
from hutch_gateway import store
from hutch_gateway.auth import Authenticator, key_from_metadata


def describe(node: NodeInfo, region: str, alive: bool, own: list[str]) -> nodes_pb2.Node:
    message = nodes_pb2.Node(
        id=node.node_id,
        region=region,
        cpu_millis_total=node.cpu_millis_total,
        cpu_millis_allocated=node.cpu_millis_allocated,
        cpu_millis_free=max(0, node.cpu_millis_total - node.cpu_millis_allocated),
        memory_mb_total=node.memory_mb_total,
        memory_mb_allocated=node.memory_mb_allocated,
        memory_mb_free=max(0, node.memory_mb_total - node.memory_mb_allocated),
        sandboxes=node.sandboxes,
        own_sandbox_ids=own,
        isolation_classes=sorted(node.isolation_classes),
        alive=alive,
    )
    message.last_heartbeat.FromDatetime(node.sent_at)
    return message


class NodesServicer(nodes_pb2_grpc.NodesServicer):
    def __init__(self, auth: Authenticator, db: asyncpg.Pool, nodes: NodeDirectory, region: str) -> None:
        self._auth = auth
        self._db = db
        self._nodes = nodes
        self._region = region

    async def List(self, request: nodes_pb2.ListNodesRequest, context: Context) -> nodes_pb2.ListNodesResponse:
        tenant = await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))
        own = await store.own_sandboxes_by_node(self._db, tenant)
        alive = {node.node_id for node in self._nodes.alive()}
        listed = self._nodes.all() if request.include_unreachable else self._nodes.alive()
        return nodes_pb2.ListNodesResponse(
            nodes=[
                describe(node, self._region, node.node_id in alive, own.get(node.node_id, []))
                for node in sorted(listed, key=lambda n: n.node_id)
            ]
        )
