"""hutch.v1.Secrets on the gateway: authenticate the caller, then relay to the secrets-broker.

The broker takes the tenant from the call's metadata, which only a holder of the internal token can
set, so a caller only ever reaches its own tenant's secrets. Values pass through on their way in
and never come back: no call of the API returns one.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.grpc_runtime import TENANT_HEADER, Context, error_from_rpc, internal_metadata
from hutch.v1 import secrets_pb2, secrets_pb2_grpc
from hutch_gateway.auth import Authenticator, key_from_metadata

if TYPE_CHECKING:
    from hutch.v1.secrets_pb2_grpc import SecretsAsyncStub

R = TypeVar("R", bound=Message)


class BrokerChannel:
    """One channel to the secrets-broker, opened on first use."""

    def __init__(self, address: str, internal_token: str) -> None:
        self._address = address
        self._token = internal_token
        self._channel: grpc.aio.Channel | None = None

    def stub(self) -> SecretsAsyncStub:
        if not self._address:
            raise errors.Unavailable("secrets are not set up here: HUTCH_GATEWAY__SECRETS_BROKER_ADDRESS is empty")
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address)
        return secrets_pb2_grpc.SecretsStub(self._channel)

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (*internal_metadata(self._token), (TENANT_HEADER, tenant))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None


class SecretsProxy(secrets_pb2_grpc.SecretsServicer):
    def __init__(self, auth: Authenticator, broker: BrokerChannel) -> None:
        self._auth = auth
        self._broker = broker

    async def _metadata(self, context: Context) -> tuple[tuple[str, str], ...]:
        tenant = await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))
        return self._broker.metadata(tenant)

    @staticmethod
    async def _unary(call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "the secrets-broker") from exc

    async def Create(self, request: secrets_pb2.CreateSecretRequest, context: Context) -> secrets_pb2.Secret:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Create(request, metadata=metadata))

    async def List(self, request: secrets_pb2.ListSecretsRequest, context: Context) -> secrets_pb2.ListSecretsResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().List(request, metadata=metadata))

    async def Rotate(self, request: secrets_pb2.RotateSecretRequest, context: Context) -> secrets_pb2.Secret:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Rotate(request, metadata=metadata))

    async def Delete(
        self, request: secrets_pb2.DeleteSecretRequest, context: Context
    ) -> secrets_pb2.DeleteSecretResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Delete(request, metadata=metadata))

    async def Grant(self, request: secrets_pb2.CreateGrantRequest, context: Context) -> secrets_pb2.SecretGrant:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Grant(request, metadata=metadata))

    async def ListGrants(
        self, request: secrets_pb2.ListGrantsRequest, context: Context
    ) -> secrets_pb2.ListGrantsResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().ListGrants(request, metadata=metadata))

    async def Revoke(
        self, request: secrets_pb2.RevokeGrantRequest, context: Context
    ) -> secrets_pb2.RevokeGrantResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Revoke(request, metadata=metadata))

    async def Audit(self, request: secrets_pb2.SecretAuditRequest, context: Context) -> secrets_pb2.SecretAuditResponse:
        metadata = await self._metadata(context)
        return await self._unary(self._broker.stub().Audit(request, metadata=metadata))
