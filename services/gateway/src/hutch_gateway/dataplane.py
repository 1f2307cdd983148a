"""Channels from the gateway to the node-agents' data planes, one per node address."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from hutch.core.grpc_runtime import internal_metadata
from hutch.internal.v1 import node_agent_pb2_grpc

if TYPE_CHECKING:
    from hutch.internal.v1.node_agent_pb2_grpc import NodeAgentAsyncStub


class NodeChannels:
    def __init__(self, internal_token: str, max_message_bytes: int) -> None:
        self._token = internal_token
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> NodeAgentAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return node_agent_pb2_grpc.NodeAgentStub(channel)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return internal_metadata(self._token)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
