"""hutch.v1.Usage on the gateway: authenticate the caller, then relay to the billing-meter, which
serves the same service internally (see tenant_relay.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from hutch.core.grpc_runtime import Context, error_from_rpc
from hutch.v1 import usage_pb2, usage_pb2_grpc
from hutch_gateway.auth import Authenticator
from hutch_gateway.tenant_relay import InternalChannel, TenantRelay

if TYPE_CHECKING:
    from hutch.v1.usage_pb2_grpc import UsageAsyncStub


class BillingChannel(InternalChannel):
    """One channel to the billing-meter, opened on first use."""

    def __init__(self, address: str, internal_token: str, max_message_bytes: int) -> None:
        super().__init__(
            address,
            internal_token,
            "the billing-meter",
            "the usage API is not set up here: HUTCH_GATEWAY__BILLING_METER_ADDRESS is empty",
            options=(
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ),
        )

    def stub(self) -> UsageAsyncStub:
        return usage_pb2_grpc.UsageStub(self.channel())


class UsageProxy(TenantRelay, usage_pb2_grpc.UsageServicer):
    def __init__(self, auth: Authenticator, billing: BillingChannel) -> None:
        super().__init__(auth, billing)
        self._billing = billing

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
