"""hutch.v1.Usage on the gateway: authenticate the caller, then relay to the billing-meter.

The billing-meter serves the same service internally: it takes the tenant from the call's
metadata, which only a holder of the internal token can set. So a caller can only ever name its
own tenant, whatever its request says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.grpc_runtime import TENANT_HEADER, Context, error_from_rpc, internal_metadata
from hutch.v1 import usage_pb2, usage_pb2_grpc
from hutch_gateway.auth import Authenticator, key_from_metadata

if TYPE_CHECKING:
    from hutch.v1.usage_pb2_grpc import UsageAsyncStub

R = TypeVar("R", bound=Message)


class BillingChannel:
    """One channel to the billing-meter, opened on first use."""

    def __init__(self, address: str, internal_token: str, max_message_bytes: int) -> None:
        self._address = address
        self._token = internal_token
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel: grpc.aio.Channel | None = None

    def stub(self) -> UsageAsyncStub:
        if not self._address:
            raise errors.Unavailable("the usage API is not set up here: HUTCH_GATEWAY__BILLING_METER_ADDRESS is empty")
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=self._options)
        return usage_pb2_grpc.UsageStub(self._channel)

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (*internal_metadata(self._token), (TENANT_HEADER, tenant))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None


class UsageProxy(usage_pb2_grpc.UsageServicer):
    def __init__(self, auth: Authenticator, billing: BillingChannel) -> None:
        self._auth = auth
        self._billing = billing

    async def _metadata(self, context: Context) -> tuple[tuple[str, str], ...]:
        tenant = await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))
        return self._billing.metadata(tenant)

    @staticmethod
    async def _unary(call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "the billing-meter") from exc

    async def Query(self, request: usage_pb2.QueryUsageRequest, context: Context) -> usage_pb2.QueryUsageResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._billing.stub().Query(request, metadata=metadata))

    async def Export(
        self, request: usage_pb2.ExportUsageRequest, context: Context
    ) -> AsyncIterator[usage_pb2.ExportUsageChunk]:
        metadata = await self._metadata(context)
        call = self._billing.stub().Export(request, metadata=metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "the billing-meter") from exc
        finally:
            call.cancel()

    async def Compare(self, request: usage_pb2.CompareCostsRequest, context: Context) -> usage_pb2.CompareCostsResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._billing.stub().Compare(request, metadata=metadata))

    async def ListPriceBooks(
        self, request: usage_pb2.ListPriceBooksRequest, context: Context
    ) -> usage_pb2.ListPriceBooksResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._billing.stub().ListPriceBooks(request, metadata=metadata))
