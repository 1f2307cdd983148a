"""The secrets-broker against a real PostgreSQL: write-only values, grants, tenants kept apart,
resolution only with the egress-proxy's credential, audit, rotation of values and master keys."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from hutch.core import db
from hutch.core.config import GrpcSettings, PostgresSettings
from hutch.core.grpc_runtime import INTERNAL_TOKEN_HEADER, TENANT_HEADER, Server, serve
from hutch.internal.v1 import secrets_resolver_pb2 as rpb
from hutch.internal.v1 import secrets_resolver_pb2_grpc
from hutch.v1 import secrets_pb2 as pb
from hutch.v1 import secrets_pb2_grpc
from hutch_secrets_broker.app import SCHEMA
from hutch_secrets_broker.crypto import Keyring
from hutch_secrets_broker.domain import SandboxIdentity
from hutch_secrets_broker.grpc_api import ResolverServicer, SecretsServicer
from hutch_secrets_broker.service import SecretService
from hutch_secrets_broker.settings import SecretsOptions

pytestmark = pytest.mark.integration

INTERNAL = "internal-token-of-the-gateway"
RESOLVER = "resolver-token-of-the-egress-proxy"
K1, K2 = os.urandom(32), os.urandom(32)
VALUE = b"ghp_s3cret-value-that-must-never-come-back"


@dataclass
class Broker:
    pool: Any
    service: SecretService
    public: secrets_pb2_grpc.SecretsStub
    resolver: secrets_resolver_pb2_grpc.SecretsResolverStub
    resolver_channel: grpc.aio.Channel

    def as_tenant(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return ((INTERNAL_TOKEN_HEADER, INTERNAL), (TENANT_HEADER, tenant))


RESOLVER_METADATA = ((INTERNAL_TOKEN_HEADER, RESOLVER),)


@pytest.fixture
async def broker(postgres_dsn: str) -> AsyncIterator[Broker]:
    async with db.pool(PostgresSettings(dsn=SecretStr(postgres_dsn)), SCHEMA) as pool:
        await db.migrate(pool, SCHEMA, db.load_migrations("hutch_secrets_broker", SCHEMA))
        service = SecretService(pool, Keyring({"k1": K1}, "k1"), SecretsOptions())
        public: Server = await serve(
            GrpcSettings(port=0, shutdown_grace_s=0),
            [(secrets_pb2_grpc.add_SecretsServicer_to_server, SecretsServicer(service), "hutch.v1.Secrets")],
            internal_token=INTERNAL,
        )
        resolver: Server = await serve(
            GrpcSettings(port=0, shutdown_grace_s=0),
            [
                (
                    secrets_resolver_pb2_grpc.add_SecretsResolverServicer_to_server,
                    ResolverServicer(service),
                    "hutch.internal.v1.SecretsResolver",
                )
            ],
            internal_token=RESOLVER,
        )
        public_channel = grpc.aio.insecure_channel(f"127.0.0.1:{public.port}")
        resolver_channel = grpc.aio.insecure_channel(f"127.0.0.1:{resolver.port}")
        try:
            yield Broker(
                pool,
                service,
                secrets_pb2_grpc.SecretsStub(public_channel),
                secrets_resolver_pb2_grpc.SecretsResolverStub(resolver_channel),
                resolver_channel,
            )
        finally:
            await public_channel.close()
            await resolver_channel.close()
            await public.stop()
            await resolver.stop()


def identity(sandbox_id: str = "sb-aaaaaaaa", tenant: str = "tenant-a", **kwargs: Any) -> rpb.SandboxIdentity:
    return rpb.SandboxIdentity(sandbox_id=sandbox_id, tenant_id=tenant, node_id="node-1", **kwargs)


async def make_secret_with_grant(broker: Broker, tenant: str = "tenant-a", **grant: Any) -> pb.SecretGrant:
    await broker.public.Create(
        pb.CreateSecretRequest(name="GITHUB_TOKEN", value=VALUE), metadata=broker.as_tenant(tenant)
    )
    values: dict[str, Any] = {
        "secret": "GITHUB_TOKEN",
        "sandboxes": pb.SandboxSelector(sandbox_names=["agent"]),
        "hosts": ["api.example.test"],
        "header": "Authorization: Bearer {value}",
    }
    values.update(grant)
    return await broker.public.Grant(
        pb.CreateGrantRequest(grant=pb.SecretGrant(**values)), metadata=broker.as_tenant(tenant)
    )


async def test_values_are_write_only_and_encrypted_at_rest(broker: Broker) -> None:
    created = await broker.public.Create(
        pb.CreateSecretRequest(name="GITHUB_TOKEN", value=VALUE, description="ci"),
        metadata=broker.as_tenant("tenant-a"),
    )
    listed = await broker.public.List(pb.ListSecretsRequest(), metadata=broker.as_tenant("tenant-a"))
    rotated = await broker.public.Rotate(
        pb.RotateSecretRequest(name="GITHUB_TOKEN", value=VALUE + b"2"), metadata=broker.as_tenant("tenant-a")
    )

    assert (created.name, created.version, rotated.version) == ("GITHUB_TOKEN", 1, 2)
    assert [s.name for s in listed.secrets] == ["GITHUB_TOKEN"]
    for message in (created, listed, rotated):
        assert VALUE not in message.SerializeToString()
    rows = await broker.pool.fetch("SELECT ciphertext, wrapped_key FROM secret_versions")
    assert rows and all(VALUE not in bytes(r["ciphertext"]) for r in rows)
    dump = b"".join(
        bytes(v)
        for r in await broker.pool.fetch("SELECT * FROM secret_versions")
        for v in r.values()
        if isinstance(v, bytes)
    )
    assert VALUE not in dump


async def test_a_second_secret_of_the_same_name_is_already_exists(broker: Broker) -> None:
    await broker.public.Create(pb.CreateSecretRequest(name="A", value=b"x"), metadata=broker.as_tenant("tenant-a"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.public.Create(pb.CreateSecretRequest(name="A", value=b"y"), metadata=broker.as_tenant("tenant-a"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_bad_input_is_refused_with_its_reason(broker: Broker) -> None:
    for request, message in (
        (pb.CreateSecretRequest(name="bad name", value=b"x"), "secret name"),
        (pb.CreateSecretRequest(name="EMPTY", value=b""), "may not be empty"),
        (pb.CreateSecretRequest(name="BIG", value=b"x" * (64 * 1024 + 1)), "the limit is"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.public.Create(request, metadata=broker.as_tenant("tenant-a"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")


async def test_the_egress_proxy_resolves_a_granted_value_and_every_resolution_is_audited(broker: Broker) -> None:
    grant = await make_secret_with_grant(broker)
    sandbox = identity(name="agent")

    grants = await broker.resolver.GrantsFor(rpb.GrantsForRequest(sandbox=sandbox), metadata=RESOLVER_METADATA)
    resolved = await broker.resolver.Resolve(
        rpb.ResolveSecretRequest(sandbox=sandbox, secret="GITHUB_TOKEN", host="api.example.test", port=443),
        metadata=RESOLVER_METADATA,
    )
    audit = await broker.public.Audit(
        pb.SecretAuditRequest(secret="GITHUB_TOKEN"), metadata=broker.as_tenant("tenant-a")
    )

    assert [(g.grant_id, g.header) for g in grants.grants] == [(grant.id, "Authorization: Bearer {value}")]
    assert (resolved.value, resolved.version) == (VALUE, 1)
    assert [(e.sandbox_id, e.host, e.resolver) for e in audit.entries] == [
        ("sb-aaaaaaaa", "api.example.test:443", "egress-proxy@node-1")
    ]
    assert VALUE not in audit.SerializeToString()


async def test_resolution_is_refused_for_other_hosts_and_other_sandboxes(broker: Broker) -> None:
    await make_secret_with_grant(broker)

    for sandbox, host in ((identity(name="agent"), "evil.example.test"), (identity(name="other"), "api.example.test")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.resolver.Resolve(
                rpb.ResolveSecretRequest(sandbox=sandbox, secret="GITHUB_TOKEN", host=host, port=443),
                metadata=RESOLVER_METADATA,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_one_tenants_grant_never_applies_to_another_tenants_sandbox(broker: Broker) -> None:
    await make_secret_with_grant(broker, sandboxes=pb.SandboxSelector(sandbox_names=["agent"], labels={"team": "x"}))
    twin = identity("sb-bbbbbbbb", tenant="tenant-b", name="agent", labels={"team": "x"})

    grants = await broker.resolver.GrantsFor(rpb.GrantsForRequest(sandbox=twin), metadata=RESOLVER_METADATA)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.resolver.Resolve(
            rpb.ResolveSecretRequest(sandbox=twin, secret="GITHUB_TOKEN", host="api.example.test", port=443),
            metadata=RESOLVER_METADATA,
        )
    listed = await broker.public.List(pb.ListSecretsRequest(), metadata=broker.as_tenant("tenant-b"))

    assert list(grants.grants) == []
    assert caught.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    assert list(listed.secrets) == []


async def test_the_gateways_token_cannot_resolve_and_the_resolver_token_cannot_manage(broker: Broker) -> None:
    await make_secret_with_grant(broker)
    request = rpb.ResolveSecretRequest(
        sandbox=identity(name="agent"), secret="GITHUB_TOKEN", host="api.example.test", port=443
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.resolver.Resolve(request, metadata=((INTERNAL_TOKEN_HEADER, INTERNAL),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.resolver.Resolve(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.public.List(
            pb.ListSecretsRequest(), metadata=((INTERNAL_TOKEN_HEADER, RESOLVER), (TENANT_HEADER, "tenant-a"))
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    audit = await broker.public.Audit(pb.SecretAuditRequest(), metadata=broker.as_tenant("tenant-a"))
    assert list(audit.entries) == []


async def test_rotation_serves_the_new_value_and_deletion_removes_grants(broker: Broker) -> None:
    grant = await make_secret_with_grant(broker, placeholder=True, header=None)
    await broker.public.Rotate(
        pb.RotateSecretRequest(name="GITHUB_TOKEN", value=b"new"), metadata=broker.as_tenant("tenant-a")
    )
    request = rpb.ResolveSecretRequest(
        sandbox=identity(name="agent"), secret="GITHUB_TOKEN", host="api.example.test", port=443
    )

    resolved = await broker.resolver.Resolve(request, metadata=RESOLVER_METADATA)
    assert (resolved.value, resolved.version) == (b"new", 2)

    await broker.public.Delete(pb.DeleteSecretRequest(name="GITHUB_TOKEN"), metadata=broker.as_tenant("tenant-a"))
    grants = await broker.public.ListGrants(pb.ListGrantsRequest(), metadata=broker.as_tenant("tenant-a"))
    assert grant.id not in [g.id for g in grants.grants]
    with pytest.raises(grpc.aio.AioRpcError):
        await broker.resolver.Resolve(request, metadata=RESOLVER_METADATA)


async def test_revoking_a_grant_stops_resolution(broker: Broker) -> None:
    grant = await make_secret_with_grant(broker)
    await broker.public.Revoke(pb.RevokeGrantRequest(id=grant.id), metadata=broker.as_tenant("tenant-a"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await broker.resolver.Resolve(
            rpb.ResolveSecretRequest(
                sandbox=identity(name="agent"), secret="GITHUB_TOKEN", host="api.example.test", port=443
            ),
            metadata=RESOLVER_METADATA,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_new_master_key_rewraps_every_data_key_without_downtime(broker: Broker) -> None:
    await make_secret_with_grant(broker)
    rotated = SecretService(broker.pool, Keyring({"k1": K1, "k2": K2}, "k2"), SecretsOptions())
    who = SandboxIdentity("sb-aaaaaaaa", "tenant-a", "agent")
    assert (await rotated.resolve(who, "GITHUB_TOKEN", "api.example.test", 443))[0] == VALUE  # old key still opens

    assert await rotated.rewrap_once() == 1
    assert await rotated.rewrap_once() == 0
    assert {r["key_id"] for r in await broker.pool.fetch("SELECT key_id FROM secret_versions")} == {"k2"}
    only_new = SecretService(broker.pool, Keyring({"k2": K2}, "k2"), SecretsOptions())
    assert (await only_new.resolve(who, "GITHUB_TOKEN", "api.example.test", 443))[0] == VALUE
