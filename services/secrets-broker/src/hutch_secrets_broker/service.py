"""The broker's use cases: the tenant's secrets and grants, and resolution for the egress-proxy.

Every tenant-facing method takes the caller's tenant first (the gateway authenticated it); another
tenant's secret or grant is simply not found. Resolution re-checks the grant on every call and is
audited; nothing here ever logs a value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from hutch.core import errors
from hutch_secrets_broker import store
from hutch_secrets_broker.crypto import Keyring, associated_data
from hutch_secrets_broker.domain import (
    Grant,
    SandboxIdentity,
    SecretInfo,
    Selector,
    check_value,
    secret_name,
    validate_grant,
)
from hutch_secrets_broker.settings import SecretsOptions

log = logging.getLogger(__name__)

MAX_AUDIT = 1000
REWRAP_BATCH = 200


class SecretService:
    def __init__(self, db: asyncpg.Pool, keyring: Keyring, options: SecretsOptions) -> None:
        self._db = db
        self._keyring = keyring
        self._options = options

    # -- secrets ---------------------------------------------------------------------------

    async def create(self, tenant_id: str, name: str, value: bytes, description: str = "") -> SecretInfo:
        secret_name(name)
        check_value(value, self._options.max_value_bytes)
        if len(description) > 1024:
            raise errors.InvalidArgument("a description holds at most 1024 characters")
        if await store.count_secrets(self._db, tenant_id) >= self._options.max_secrets_per_tenant:
            raise errors.ResourceExhausted(f"a tenant may hold at most {self._options.max_secrets_per_tenant} secrets")
        sealed = self._keyring.seal(value, associated_data(tenant_id, name, 1))
        async with self._db.acquire() as conn, conn.transaction():
            info = await store.insert_secret(conn, tenant_id, name, description)
            if info is None:
                raise errors.AlreadyExists(f"secret {name!r} exists already: rotate it to change its value")
            await store.insert_version(conn, tenant_id, name, 1, sealed)
        return info

    async def secrets(self, tenant_id: str) -> list[SecretInfo]:
        return await store.list_secrets(self._db, tenant_id)

    async def rotate(self, tenant_id: str, name: str, value: bytes) -> SecretInfo:
        secret_name(name)
        check_value(value, self._options.max_value_bytes)
        async with self._db.acquire() as conn, conn.transaction():
            info = await store.bump_version(conn, tenant_id, name)
            if info is None:
                raise errors.NotFound(f"secret {name!r} does not exist")
            sealed = self._keyring.seal(value, associated_data(tenant_id, name, info.version))
            await store.insert_version(conn, tenant_id, name, info.version, sealed)
            # The previous version stays one rotation long; nothing reads it, but a resolution that
            # started just before the rotation may still be opening it.
            await store.prune_versions(conn, tenant_id, name, info.version - 1)
        return info

    async def delete(self, tenant_id: str, name: str) -> None:
        secret_name(name)
        if not await store.delete_secret(self._db, tenant_id, name):
            raise errors.NotFound(f"secret {name!r} does not exist")

    # -- grants ----------------------------------------------------------------------------

    async def grant(
        self, tenant_id: str, secret: str, selector: Selector, hosts: Sequence[str], header: str, placeholder: bool
    ) -> Grant:
        grant = validate_grant(tenant_id, secret, selector, hosts, header, placeholder)
        if await store.get_secret(self._db, tenant_id, secret) is None:
            raise errors.NotFound(f"secret {secret!r} does not exist")
        if await store.count_grants(self._db, tenant_id) >= self._options.max_grants_per_tenant:
            raise errors.ResourceExhausted(f"a tenant may hold at most {self._options.max_grants_per_tenant} grants")
        try:
            return await store.insert_grant(self._db, grant)
        except asyncpg.ForeignKeyViolationError:
            raise errors.NotFound(f"secret {secret!r} does not exist") from None

    async def grants(self, tenant_id: str, secret: str = "") -> list[Grant]:
        if secret:
            secret_name(secret)
        return await store.list_grants(self._db, tenant_id, secret)

    async def revoke(self, tenant_id: str, grant_id: str) -> None:
        if not await store.delete_grant(self._db, tenant_id, grant_id):
            raise errors.NotFound(f"grant {grant_id!r} does not exist")

    async def audit(self, tenant_id: str, secret: str, limit: int) -> list[store.AuditEntry]:
        if limit > MAX_AUDIT:
            raise errors.InvalidArgument(f"limit may be at most {MAX_AUDIT}")
        return await store.list_audit(self._db, tenant_id, secret, limit or 100)

    # -- resolution (the egress-proxy only) ------------------------------------------------

    async def grants_for(self, sandbox: SandboxIdentity) -> list[Grant]:
        _check_identity(sandbox)
        return [g for g in await store.list_grants(self._db, sandbox.tenant_id) if g.selector.covers(sandbox)]

    async def resolve(self, sandbox: SandboxIdentity, secret: str, host: str, port: int) -> tuple[bytes, int]:
        _check_identity(sandbox)
        secret_name(secret)
        covering = [
            g
            for g in await store.list_grants(self._db, sandbox.tenant_id, secret)
            if g.selector.covers(sandbox) and g.covers_host(host, port)
        ]
        if not covering:
            raise errors.PermissionDenied(
                f"no grant lets sandbox {sandbox.sandbox_id} use secret {secret!r} for {host}:{port}"
            )
        found = await store.current_value(self._db, sandbox.tenant_id, secret)
        if found is None:
            raise errors.NotFound(f"secret {secret!r} does not exist")
        version, sealed = found
        value = self._keyring.open(sealed, associated_data(sandbox.tenant_id, secret, version))
        resolver = f"egress-proxy@{sandbox.node_id}" if sandbox.node_id else "egress-proxy"
        await store.add_audit(
            self._db, sandbox.tenant_id, secret, version, sandbox.sandbox_id, f"{host}:{port}", resolver
        )
        log.info(
            "resolved secret %s v%d of tenant %s for sandbox %s -> %s:%d",
            secret, version, sandbox.tenant_id, sandbox.sandbox_id, host, port,
        )  # fmt: skip
        return value, version

    # -- master key rotation ---------------------------------------------------------------

    async def rewrap_once(self) -> int:
        """Re-wraps up to one batch of data keys under the active master key; returns how many."""
        stale = await store.stale_versions(self._db, self._keyring.active, REWRAP_BATCH)
        for item in stale:
            aad = associated_data(item.tenant_id, item.name, item.version)
            await store.replace_wrapping(self._db, item, self._keyring.rewrap(item.sealed, aad))
        return len(stale)

    async def rewrap_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = 0
                while count := await self.rewrap_once():
                    done += count
                if done:
                    log.info("re-wrapped %d data keys under master key %s", done, self._keyring.active)
            except errors.HutchError as exc:
                log.error("re-wrapping data keys failed: %s", exc.message)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("re-wrapping data keys: %r; retrying later", exc)
            try:
                await asyncio.wait_for(stop.wait(), self._options.rewrap_interval_s)
            except TimeoutError:
                pass


def _check_identity(sandbox: SandboxIdentity) -> None:
    if not sandbox.tenant_id or not sandbox.sandbox_id:
        raise errors.InvalidArgument("a resolution names the sandbox and its tenant")
