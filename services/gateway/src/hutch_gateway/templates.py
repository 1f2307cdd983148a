"""Templates: importing a tenant's OCI images onto every node, listing, deleting, and resolving the
name a create asks for to the key nodes know the template by.

A tenant's template `web` is `<tenant id>/web` on the nodes, so names never collide across tenants
and one tenant can never start another's. Built-in templates (`base`) keep their plain name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc
from hutch.core.nodes import NodeDirectory, NodeInfo
from hutch.internal.v1 import node_agent_pb2
from hutch.v1 import templates_pb2
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import check_template_name

log = logging.getLogger(__name__)

# Chunks held for a slow node before the upload waits for it.
_QUEUE_CHUNKS = 8


def node_key(tenant_id: str, name: str) -> str:
    return f"{tenant_id}/{name}"


async def resolve(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, name: str) -> str:
    """The node key of the template a create names: the tenant's own if it has one by that name."""
    owned = await conn.fetchval("SELECT 1 FROM templates WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    return node_key(tenant_id, name) if owned else name


class TemplateService:
    def __init__(self, db: asyncpg.Pool, nodes: NodeDirectory, channels: NodeChannels) -> None:
        self._db = db
        self._nodes = nodes
        self._channels = channels

    async def import_archive(
        self, tenant_id: str, name: str, size: int, chunks: AsyncIterator[bytes]
    ) -> templates_pb2.Template:
        """Streams the archive to every live node at once; all of them install it, or none does."""
        check_template_name(name)
        if name in self._builtin_names():
            raise errors.AlreadyExists(f"{name!r} is a built-in template: choose another name")
        if await self._db.fetchval("SELECT 1 FROM templates WHERE tenant_id = $1 AND name = $2", tenant_id, name):
            raise errors.AlreadyExists(f"template {name!r} exists already: delete it first or choose another name")
        nodes = self._nodes.alive()
        if not nodes:
            raise errors.Unavailable("no node is running to install the template on")
        key = node_key(tenant_id, name)
        queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(_QUEUE_CHUNKS) for _ in nodes]
        try:
            # One failure (a node refusing the image, the client going away) cancels the rest.
            async with asyncio.TaskGroup() as group:
                group.create_task(_fan_out(chunks, queues))
                installs = [
                    group.create_task(self._install(node, key, size, queue))
                    for node, queue in zip(nodes, queues, strict=True)
                ]
        except* Exception as failed:
            await self._remove_everywhere(key, quiet=True)
            raise _most_telling(failed.exceptions) from None
        installed = installs[0].result()
        await self._db.execute(
            "INSERT INTO templates (tenant_id, name, source, env, workdir, run_as, size_bytes) "
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
            tenant_id, name, installed.source, json.dumps(list(installed.env)), installed.workdir,
            installed.user, installed.size_bytes,
        )  # fmt: skip
        log.info("template %s imported on %d node(s)", key, len(nodes))
        return installed

    async def _install(
        self, node: NodeInfo, key: str, size: int, queue: asyncio.Queue[bytes | None]
    ) -> templates_pb2.Template:
        async def requests() -> AsyncIterator[templates_pb2.ImportTemplateRequest]:
            header = templates_pb2.ImportTemplateHeader(name=key, size=size)
            yield templates_pb2.ImportTemplateRequest(header=header)
            while (chunk := await queue.get()) is not None:
                yield templates_pb2.ImportTemplateRequest(data=chunk)
            yield templates_pb2.ImportTemplateRequest(end=templates_pb2.ImportTemplateEnd())

        try:
            result: templates_pb2.Template = await self._channels.stub(node.address).InstallTemplate(
                requests(), metadata=self._channels.metadata()
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {node.node_id}") from exc
        return result

    async def list(self, tenant_id: str) -> list[templates_pb2.Template]:
        builtin = [templates_pb2.Template(name=name, builtin=True) for name in sorted(self._builtin_names())]
        rows = await self._db.fetch("SELECT * FROM templates WHERE tenant_id = $1 ORDER BY name", tenant_id)
        return builtin + [_from_row(row) for row in rows]

    async def delete(self, tenant_id: str, name: str) -> None:
        check_template_name(name)
        if not await self._db.fetchval("SELECT 1 FROM templates WHERE tenant_id = $1 AND name = $2", tenant_id, name):
            if name in self._builtin_names():
                raise errors.PermissionDenied(f"{name!r} is a built-in template and cannot be deleted")
            raise errors.NotFound(f"template {name!r} not found")
        users = await self._db.fetchval(
            "SELECT count(*) FROM sandboxes WHERE tenant_id = $1 AND template = $2 "
            "AND state NOT IN ('killed', 'failed')",
            tenant_id, name,
        )  # fmt: skip
        if users:
            raise errors.FailedPrecondition(f"template {name!r} is used by {users} live sandbox(es): kill them first")
        await self._remove_everywhere(node_key(tenant_id, name), quiet=False)
        await self._db.execute("DELETE FROM templates WHERE tenant_id = $1 AND name = $2", tenant_id, name)

    async def _remove_everywhere(self, key: str, quiet: bool) -> None:
        for node in self._nodes.alive():
            try:
                await self._channels.stub(node.address).RemoveTemplate(
                    node_agent_pb2.RemoveTemplateRequest(key=key), metadata=self._channels.metadata()
                )
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"node {node.node_id}")
                if not quiet and not isinstance(error, errors.NotFound):
                    raise error from exc

    def _builtin_names(self) -> set[str]:
        return {name for node in self._nodes.alive() for name in node.templates if "/" not in name}


def _most_telling(failures: tuple[Exception, ...]) -> Exception:
    """The error to report: a node's or the client's own explanation before anything generic."""
    flat: list[Exception] = []
    for failure in failures:
        flat.extend(failure.exceptions if isinstance(failure, ExceptionGroup) else [failure])
    return next((f for f in flat if isinstance(f, errors.HutchError)), flat[0])


async def _fan_out(chunks: AsyncIterator[bytes], queues: list[asyncio.Queue[bytes | None]]) -> None:
    async for chunk in chunks:
        for queue in queues:
            await queue.put(chunk)
    for queue in queues:
        await queue.put(None)


def _from_row(row: asyncpg.Record) -> templates_pb2.Template:
    created = Timestamp()
    created.FromDatetime(row["created_at"].astimezone(UTC) if row["created_at"] else datetime.now(UTC))
    env = row["env"]
    return templates_pb2.Template(
        name=row["name"],
        source=row["source"],
        env=json.loads(env) if isinstance(env, str) else list(env),
        workdir=row["workdir"],
        user=row["run_as"],
        size_bytes=row["size_bytes"],
        created_at=created,
    )
