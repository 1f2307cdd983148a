"""The node-agent's tunnel: a byte stream to a TCP port inside a sandbox, for the preview edge.

The supervisor connects to the port from inside the sandbox, so this works the same under both
isolation classes and needs no network link between node and sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.supervisor.client import TcpStream


async def _upload(requests: AsyncIterator[node_agent_pb2.TunnelRequest], stream: TcpStream) -> None:
    async for request in requests:
        which = request.WhichOneof("event")
        if which == "data":
            await stream.send(request.data)
        elif which == "close_write":
            await stream.send_eof()
            return


class TunnelCalls:
    """The NodeAgent service's tunnel method."""

    _manager: SandboxManager

    async def Tunnel(
        self, request_iterator: AsyncIterator[node_agent_pb2.TunnelRequest], context: Context
    ) -> AsyncIterator[node_agent_pb2.TunnelResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "open":
            raise errors.InvalidArgument("the first message of Tunnel must be `open` with the sandbox and port")
        if not 1 <= first.open.port <= 65535:
            raise errors.InvalidArgument(f"port must be between 1 and 65535 (got {first.open.port})")
        self._manager.running(first.open.sandbox)
        async with await self._manager.supervisor(first.open.sandbox).tcp(first.open.port) as stream:
            yield node_agent_pb2.TunnelResponse(opened=True)
            upload = asyncio.create_task(_upload(request_iterator, stream))
            try:
                async for chunk in stream:
                    yield node_agent_pb2.TunnelResponse(data=chunk)
                yield node_agent_pb2.TunnelResponse(close_write=True)
                await upload  # the caller's side may still be sending
            finally:
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upload
