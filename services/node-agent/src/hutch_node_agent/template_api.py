"""The node-agent's template calls: install an image archive as a template, remove one."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2
from hutch.v1 import templates_pb2
from hutch_node_agent.convert import template_message
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.templates import TemplateStore, check_key


class TemplateCalls:
    """The NodeAgent service's template methods."""

    _manager: SandboxManager
    _options: NodeOptions
    _templates: TemplateStore
    _templates_changed: Callable[[], Awaitable[None]]

    async def InstallTemplate(
        self, request_iterator: AsyncIterator[templates_pb2.ImportTemplateRequest], context: Context
    ) -> templates_pb2.Template:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "header":
            raise errors.InvalidArgument("the first message of InstallTemplate must be `header`")
        key = check_key(first.header.name)
        limit = self._options.max_template_bytes
        if first.header.size > limit:
            raise errors.ResourceExhausted(f"the image is {first.header.size} bytes; the limit is {limit}")
        self._options.templates_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=self._options.templates_dir)
        archive = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                received = await _receive_upload(request_iterator, out, limit)
            if first.header.size and received != first.header.size:
                raise errors.InvalidArgument(
                    f"the upload carried {received} of the {first.header.size} bytes declared; nothing was imported"
                )
            template = await asyncio.to_thread(
                self._templates.install,
                key,
                archive,
                self._options.userns_shift,
                self._options.max_template_unpacked_bytes,
            )
        finally:
            archive.unlink(missing_ok=True)
        await self._templates_changed()
        return template_message(key, template)

    async def RemoveTemplate(
        self, request: node_agent_pb2.RemoveTemplateRequest, context: Context
    ) -> node_agent_pb2.RemoveTemplateResponse:
        key = check_key(request.key)
        users = [s.id for s in self._manager.all() if s.request.template == key]
        if users:
            raise errors.FailedPrecondition(
                f"template {key!r} is used by {len(users)} sandbox(es) on this node "
                f"({', '.join(users[:3])}): kill them first"
            )
        await asyncio.to_thread(self._templates.remove, key)
        await self._templates_changed()
        return node_agent_pb2.RemoveTemplateResponse()


async def _receive_upload(
    requests: AsyncIterator[templates_pb2.ImportTemplateRequest], out: BinaryIO, limit: int
) -> int:
    """Writes data messages to `out` until `end`; a stream without `end` imports nothing."""
    received = 0
    async for request in requests:
        which = request.WhichOneof("event")
        if which == "end":
            return received
        if which != "data":
            raise errors.InvalidArgument("after the header, an import takes data messages and then `end`")
        received += len(request.data)
        if received > limit:
            raise errors.ResourceExhausted(f"the image is larger than the {limit} bytes an import may upload")
        await asyncio.to_thread(out.write, request.data)
    raise errors.InvalidArgument("the upload stopped before its `end` message; nothing was imported")
