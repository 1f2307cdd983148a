"""Calls to the gateways of the installation's other regions, on the caller's behalf.

A call is passed on as it came: the same method and request, the caller's own API key (the tenant
and its keys exist in every region, so the other region authenticates the caller itself; no region
vouches for another), the current trace context, and the caller's remaining deadline. Responses come
back as the serialized bytes the other region sent, so they are relayed without decoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import grpc
from google.protobuf.message import Message

from hutch.core import errors, telemetry
from hutch.core.grpc_runtime import INTERNAL_TOKEN_HEADER, TENANT_HEADER, error_from_rpc

# Set on a call one gateway passes to another: the receiving gateway serves it itself, never passes
# it on again, so a call crosses at most one region boundary.
FORWARDED_FROM: Final = "x-hutch-forwarded-from"
# Set on a create a region passes on because it had no room: the receiver refuses it
# (RESOURCE_EXHAUSTED) rather than accept it without room either.
ONLY_IF_ROOM: Final = "x-hutch-only-if-room"

# Caller metadata that is not passed on: transport headers, the trace context (the forwarding
# span's own is sent instead) and anything internal.
_NOT_PASSED: Final = frozenset(
    {"traceparent", "tracestate", "baggage", "user-agent", INTERNAL_TOKEN_HEADER, TENANT_HEADER, FORWARDED_FROM}
)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class PeerGateways:
    """One channel per peer region's gateway, opened when first used."""

    def __init__(self, region: str, addresses: Mapping[str, str], max_message_bytes: int) -> None:
        self.region = region
        self.addresses = dict(addresses)
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def regions(self) -> tuple[str, ...]:
        """The peer regions, nearest first."""
        return tuple(self.addresses)

    def _channel(self, region: str) -> grpc.aio.Channel:
        channel = self._channels.get(region)
        if channel is None:
            address = self.addresses.get(region)
            if address is None:
                raise errors.InvalidArgument(
                    f"region {region!r} is not one of this installation's: {', '.join((self.region, *self.regions))}"
                )
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[region] = channel
        return channel

    def metadata(self, incoming: Iterable[tuple[str, Any]], *extra: tuple[str, str]) -> tuple[tuple[str, Any], ...]:
        passed = [(k, v) for k, v in incoming if k not in _NOT_PASSED and not k.startswith(("grpc-", ":"))]
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        return (*passed, *carrier.items(), (FORWARDED_FROM, self.region), *extra)

    async def unary(
        self, region: str, method: str, request: Any, metadata: tuple[tuple[str, Any], ...], timeout: float | None
    ) -> bytes:
        """A unary call (`request` a message) or client-streaming one (`request` an async iterator)."""
        channel = self._channel(region)
        if isinstance(request, Message):
            call: Any = channel.unary_unary(method, _serialize, None)
        else:
            call = channel.stream_unary(method, _serialize, None)
        try:
            response: bytes = await call(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"region {region}") from exc
        return response

    async def streaming(
        self, region: str, method: str, request: Any, metadata: tuple[tuple[str, Any], ...], timeout: float | None
    ) -> AsyncIterator[bytes]:
        """A server-streaming call (`request` a message) or bidirectional one (an async iterator)."""
        channel = self._channel(region)
        if isinstance(request, Message):
            call: Any = channel.unary_stream(method, _serialize, None)
        else:
            call = channel.stream_stream(method, _serialize, None)
        try:
            async for response in call(request, metadata=metadata, timeout=timeout):
                yield response
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"region {region}") from exc

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
