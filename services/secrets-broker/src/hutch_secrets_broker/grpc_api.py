"""Two gRPC services, each on its own listener with its own credential:

* hutch.v1.Secrets for the gateway (the internal token; the tenant rides in x-hutch-tenant);
* hutch.internal.v1.SecretsResolver for the egress-proxy (the resolver token only).

Thin: convert, delegate, convert back.
"""

from __future__ import annotations

from hutch.core import errors
from hutch.core.grpc_runtime import TENANT_HEADER, Context
from hutch.internal.v1 import secrets_resolver_pb2 as rpb
from hutch.internal.v1 import secrets_resolver_pb2_grpc
from hutch.v1 import secrets_pb2, secrets_pb2_grpc
from hutch_secrets_broker import convert
from hutch_secrets_broker.service import SecretService


def _tenant(context: Context) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == TENANT_HEADER and isinstance(value, str) and value:
            return value
    raise errors.Unauthenticated("the call names no tenant: the Secrets API is reached through the gateway")


class SecretsServicer(secrets_pb2_grpc.SecretsServicer):
    def __init__(self, service: SecretService) -> None:
        self._service = service

    async def Create(self, request: secrets_pb2.CreateSecretRequest, context: Context) -> secrets_pb2.Secret:
        info = await self._service.create(_tenant(context), request.name, request.value, request.description)
        return convert.secret(info)

    async def List(self, request: secrets_pb2.ListSecretsRequest, context: Context) -> secrets_pb2.ListSecretsResponse:
        found = await self._service.secrets(_tenant(context))
        return secrets_pb2.ListSecretsResponse(secrets=[convert.secret(s) for s in found])

    async def Rotate(self, request: secrets_pb2.RotateSecretRequest, context: Context) -> secrets_pb2.Secret:
        return convert.secret(await self._service.rotate(_tenant(context), request.name, request.value))

    async def Delete(
        self, request: secrets_pb2.DeleteSecretRequest, context: Context
    ) -> secrets_pb2.DeleteSecretResponse:
        await self._service.delete(_tenant(context), request.name)
        return secrets_pb2.DeleteSecretResponse()

    async def Grant(self, request: secrets_pb2.CreateGrantRequest, context: Context) -> secrets_pb2.SecretGrant:
        grant = request.grant
        created = await self._service.grant(
            _tenant(context),
            grant.secret,
            convert.selector(grant.sandboxes),
            list(grant.hosts),
            grant.header if grant.WhichOneof("injection") == "header" else "",
            grant.WhichOneof("injection") == "placeholder" and grant.placeholder,
        )
        return convert.grant(created)

    async def ListGrants(
        self, request: secrets_pb2.ListGrantsRequest, context: Context
    ) -> secrets_pb2.ListGrantsResponse:
        found = await self._service.grants(_tenant(context), request.secret)
        return secrets_pb2.ListGrantsResponse(grants=[convert.grant(g) for g in found])

    async def Revoke(
        self, request: secrets_pb2.RevokeGrantRequest, context: Context
    ) -> secrets_pb2.RevokeGrantResponse:
        await self._service.revoke(_tenant(context), request.id)
        return secrets_pb2.RevokeGrantResponse()

    async def Audit(self, request: secrets_pb2.SecretAuditRequest, context: Context) -> secrets_pb2.SecretAuditResponse:
        entries = await self._service.audit(_tenant(context), request.secret, request.limit)
        return secrets_pb2.SecretAuditResponse(entries=[convert.audit_entry(e) for e in entries])


class ResolverServicer(secrets_resolver_pb2_grpc.SecretsResolverServicer):
    def __init__(self, service: SecretService) -> None:
        self._service = service

    async def GrantsFor(self, request: rpb.GrantsForRequest, context: Context) -> rpb.GrantsForResponse:
        found = await self._service.grants_for(convert.identity(request.sandbox))
        return rpb.GrantsForResponse(grants=[convert.resolver_grant(g) for g in found])

    async def Resolve(self, request: rpb.ResolveSecretRequest, context: Context) -> rpb.ResolvedSecret:
        value, version = await self._service.resolve(
            convert.identity(request.sandbox), request.secret, request.host, request.port
        )
        return rpb.ResolvedSecret(value=value, version=version)
