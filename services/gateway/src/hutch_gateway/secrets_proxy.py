"""hutch.v1.Secrets on the gateway: authenticate the caller, then relay to the secrets-broker
(see tenant_relay.py). Values pass through on their way in and never come back: no call of the
API returns one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hutch.core.grpc_runtime import Context
from hutch.v1 import secrets_pb2, secrets_pb2_grpc
from hutch_gateway.auth import Authenticator
from hutch_gateway.tenant_relay import InternalChannel, TenantRelay

if TYPE_CHECKING:
    from hutch.v1.secrets_pb2_grpc import SecretsAsyncStub


class BrokerChannel(InternalChannel):
    """One channel to the secrets-broker, opened on first use."""

    def __init__(self, address: str, internal_token: str) -> None:
        super().__init__(
            address,
            internal_token,
            "the secrets-broker",
            "secrets are not set up here: HUTCH_GATEWAY__SECRETS_BROKER_ADDRESS is empty",
        )

    def stub(self) -> SecretsAsyncStub:
        return secrets_pb2_grpc.SecretsStub(self.channel())


class SecretsProxy(TenantRelay, secrets_pb2_grpc.SecretsServicer):
    def __init__(self, auth: Authenticator, broker: BrokerChannel) -> None:
        super().__init__(auth, broker)
        self._broker = broker

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
