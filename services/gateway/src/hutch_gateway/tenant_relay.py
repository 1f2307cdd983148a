"""Relaying a public call to an internal service that serves it per tenant (the billing-meter's
Usage, the secrets-broker's Secrets).

Such a service takes the tenant from the call's metadata, which only a holder of the internal
token can set; the gateway authenticates the caller's API key and sets it. So a caller only ever
reaches its own tenant, whatever its request says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.grpc_runtime import TENANT_HEADER, Context, error_from_rpc, internal_metadata
from hutch_gateway.auth import Authenticator, key_from_metadata

R = TypeVar("R", bound=Message)
Metadata = tuple[tuple[str, str], ...]


class InternalChannel:
    """One channel to an internal service, opened on first use.

    Args:
        service: The service's name in messages, e.g. "the billing-meter".
        unset: What to say when it has no address, e.g. "the usage API is not set up here:
            HUTCH_GATEWAY__BILLING_METER_ADDRESS is empty".
    """

    def __init__(
        self,
        address: str,
        internal_token: str,
        service: str,
        unset: str,
        options: Sequence[tuple[str, int]] = (),
    ) -> None:
        self._address = address
        self._token = internal_token
        self.service = service
        self._unset = unset
        self._options = list(options)
        self._channel: grpc.aio.Channel | None = None

    def channel(self) -> grpc.aio.Channel:
        if not self._address:
            raise errors.Unavailable(self._unset)
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=self._options)
        return self._channel

    def metadata(self, tenant: str) -> Metadata:
        return (*internal_metadata(self._token), (TENANT_HEADER, tenant))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None


class TenantRelay:
    """What a relaying servicer does before and after each call."""

    def __init__(self, auth: Authenticator, target: InternalChannel) -> None:
        self._auth = auth
        self._target = target

    async def _metadata(self, context: Context) -> Metadata:
        tenant = await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))
        return self._target.metadata(tenant)

    async def _unary(self, call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._target.service) from exc
