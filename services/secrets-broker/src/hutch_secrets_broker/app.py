"""Wiring and lifecycle of the secrets-broker."""

from __future__ import annotations

import logging

from hutch.core import db, errors, telemetry
from hutch.core.config import GrpcSettings
from hutch.core.grpc_runtime import Server, serve
from hutch.core.lifecycle import shutdown_on_signals, supervise
from hutch.internal.v1 import secrets_resolver_pb2_grpc
from hutch.v1 import secrets_pb2_grpc
from hutch_secrets_broker.crypto import Keyring, parse_master_keys
from hutch_secrets_broker.grpc_api import ResolverServicer, SecretsServicer
from hutch_secrets_broker.service import SecretService
from hutch_secrets_broker.settings import SecretsBrokerSettings, SecretsOptions

log = logging.getLogger(__name__)

SCHEMA = "secrets"


def keyring(options: SecretsOptions) -> Keyring:
    try:
        keys = parse_master_keys(options.master_keys.get_secret_value())
    except ValueError as exc:
        raise errors.FailedPrecondition(f"HUTCH_SECRETS__MASTER_KEYS: {exc}") from None
    if not keys:
        raise errors.FailedPrecondition(
            "HUTCH_SECRETS__MASTER_KEYS must hold at least one master key "
            "(`hutch-secrets-broker new-master-key k1` prints one)"
        )
    active = options.active_master_key
    if not active:
        if len(keys) > 1:
            raise errors.FailedPrecondition("several master keys are configured: set HUTCH_SECRETS__ACTIVE_MASTER_KEY")
        active = next(iter(keys))
    return Keyring(keys, active)


async def run(settings: SecretsBrokerSettings) -> None:
    token = settings.internal_token.get_secret_value()
    if not token:
        raise errors.FailedPrecondition("HUTCH_INTERNAL_TOKEN must be set: the Secrets API serves the gateway only")
    options = settings.secrets
    resolver_token = options.resolver_token.get_secret_value()
    if resolver_token and resolver_token == token:
        raise errors.FailedPrecondition("HUTCH_SECRETS__RESOLVER_TOKEN must differ from HUTCH_INTERNAL_TOKEN")
    ring = keyring(options)
    shutdown = shutdown_on_signals()
    with telemetry.tracing(settings.telemetry, "secrets-broker", settings.region):
        async with db.pool(settings.postgres, SCHEMA) as pool:
            await db.migrate(pool, SCHEMA, db.load_migrations("hutch_secrets_broker", SCHEMA))
            service = SecretService(pool, ring, options)
            server = await serve(
                settings.grpc,
                [(secrets_pb2_grpc.add_SecretsServicer_to_server, SecretsServicer(service), "hutch.v1.Secrets")],
                internal_token=token,
            )
            resolver: Server | None = None
            if resolver_token:
                resolver = await serve(
                    GrpcSettings(host=options.resolver_host, port=options.resolver_port),
                    [
                        (
                            secrets_resolver_pb2_grpc.add_SecretsResolverServicer_to_server,
                            ResolverServicer(service),
                            "hutch.internal.v1.SecretsResolver",
                        )
                    ],
                    internal_token=resolver_token,
                )
                log.info("secrets resolver on %s:%d", options.resolver_host, resolver.port)
            else:
                log.warning("HUTCH_SECRETS__RESOLVER_TOKEN is empty: no egress-proxy can resolve a secret")
            log.info("secrets-broker serving on port %d (master key %s)", server.port, ring.active)
            try:
                await supervise(shutdown, service.rewrap_loop(shutdown))
            finally:
                await server.stop()
                if resolver is not None:
                    await resolver.stop()
