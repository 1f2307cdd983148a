"""The node-agent's data plane: processes and files of the sandboxes on this node.

Thin: each call finds the running sandbox, talks to its supervisor and converts the answer. Errors
are domain errors, turned into statuses by hutch.core.grpc_runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.internal.v1 import node_agent_pb2, node_agent_pb2_grpc
from hutch.v1 import files_pb2, process_pb2, templates_pb2
from hutch_node_agent.convert import file_info, template_message
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.supervisor.client import ExecSession, Exited, Output, Started
from hutch_node_agent.templates import TemplateStore, check_key


def _exec_request(config: process_pb2.ProcessConfig, sandbox: LocalSandbox) -> dict[str, Any]:
    if not config.args and not config.cmd:
        raise errors.InvalidArgument("a process needs either cmd (a shell command line) or args (an argv)")
    user = config.user or sandbox.default_user
    # The template's working directory is for its own user; another user starts in their home.
    cwd = config.cwd or (sandbox.workdir if user == sandbox.default_user else "")
    request: dict[str, Any] = {
        "op": "exec",
        "env": {**sandbox.env, **config.envs},
        "cwd": cwd,
        "user": user,
        "timeout_ms": config.timeout_ms,
        "stdin": config.stdin,
    }
    if config.args:
        request["args"] = list(config.args)
    else:
        request["cmd"] = config.cmd
    return request


async def _pump_input(requests: AsyncIterator[process_pb2.RunRequest], session: ExecSession) -> None:
    async for request in requests:
        which = request.WhichOneof("event")
        if which == "stdin":
            await session.send_stdin(request.stdin)
        elif which == "close_stdin":
            await session.close_stdin()
        elif which == "signal":
            await session.send_signal(request.signal.number)


class NodeAgentServicer(node_agent_pb2_grpc.NodeAgentServicer):
    def __init__(
        self,
        manager: SandboxManager,
        options: NodeOptions,
        templates: TemplateStore,
        templates_changed: Callable[[], Awaitable[None]],
    ) -> None:
        self._manager = manager
        self._options = options
        self._templates = templates
        self._templates_changed = templates_changed

    async def Run(
        self, request_iterator: AsyncIterator[process_pb2.RunRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "start":
            raise errors.InvalidArgument("the first message of Run must be `start` with the process config")
        sandbox = self._manager.running(first.start.sandbox)
        request = _exec_request(first.start, sandbox)
        async with await self._manager.supervisor(sandbox.id).exec(request) as session:
            pump = asyncio.create_task(_pump_input(request_iterator, session))
            try:
                async for event in session:
                    if isinstance(event, Output):
                        if event.stream == "stdout":
                            yield process_pb2.RunResponse(stdout=event.data)
                        else:
                            yield process_pb2.RunResponse(stderr=event.data)
                    elif isinstance(event, Started):
                        yield process_pb2.RunResponse(started=process_pb2.ProcessStarted(pid=event.pid))
                    elif isinstance(event, Exited):
                        yield process_pb2.RunResponse(
                            exited=process_pb2.ProcessExited(
                                exit_code=event.exit_code, signal=event.signal, timed_out=event.timed_out
                            )
                        )
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump

    async def ReadFile(
        self, request: files_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[files_pb2.ReadFileResponse]:
        self._manager.running(request.sandbox)
        info, chunks = await self._manager.supervisor(request.sandbox).read_file(request.path)
        yield files_pb2.ReadFileResponse(info=file_info(info))
        async for chunk in chunks:
            yield files_pb2.ReadFileResponse(data=chunk)

    async def WriteFile(
        self, request_iterator: AsyncIterator[files_pb2.WriteFileRequest], context: Context
    ) -> files_pb2.FileInfo:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "header":
            raise errors.InvalidArgument("the first message of Write must be `header`")
        header = first.header
        self._manager.running(header.sandbox)
        limit = self._options.max_file_bytes
        if header.size > limit:
            raise errors.ResourceExhausted(
                f"{header.path} is {header.size} bytes; files larger than {limit} bytes cannot be uploaded"
            )

        async def chunks() -> AsyncIterator[bytes]:
            received = 0
            ended = False
            async for request in request_iterator:
                which = request.WhichOneof("event")
                if which == "end":
                    ended = True
                    break
                if which != "data":
                    raise errors.InvalidArgument("after the header, Write takes data messages and then `end`")
                received += len(request.data)
                yield request.data
            # Raising before the supervisor gets END throws the temporary file away.
            if not ended:
                raise errors.InvalidArgument(
                    f"{header.path}: the upload stopped before its `end` message; nothing was written"
                )
            if header.size and received != header.size:
                raise errors.InvalidArgument(
                    f"{header.path}: the upload carried {received} of the {header.size} bytes declared; "
                    "nothing was written"
                )

        info = await self._manager.supervisor(header.sandbox).write_file(
            header.path, chunks(), mode=header.mode, user=header.user, max_bytes=limit
        )
        return file_info(info)

    async def ListDir(self, request: files_pb2.ListDirRequest, context: Context) -> files_pb2.ListDirResponse:
        self._manager.running(request.sandbox)
        result = await self._manager.supervisor(request.sandbox).call(
            "list", path=request.path, depth=max(1, request.depth)
        )
        return files_pb2.ListDirResponse(entries=[file_info(e) for e in result["entries"]])

    async def Stat(self, request: files_pb2.StatRequest, context: Context) -> files_pb2.FileInfo:
        self._manager.running(request.sandbox)
        return file_info(await self._manager.supervisor(request.sandbox).call("stat", path=request.path))

    async def Remove(self, request: files_pb2.RemoveRequest, context: Context) -> files_pb2.RemoveResponse:
        self._manager.running(request.sandbox)
        await self._manager.supervisor(request.sandbox).call("remove", path=request.path, recursive=request.recursive)
        return files_pb2.RemoveResponse()

    async def Rename(self, request: files_pb2.RenameRequest, context: Context) -> files_pb2.FileInfo:
        self._manager.running(request.sandbox)
        result = await self._manager.supervisor(request.sandbox).call(
            "rename", source=request.source, destination=request.destination
        )
        return file_info(result)

    async def MakeDir(self, request: files_pb2.MakeDirRequest, context: Context) -> files_pb2.MakeDirResponse:
        self._manager.running(request.sandbox)
        result = await self._manager.supervisor(request.sandbox).call("mkdir", path=request.path)
        return files_pb2.MakeDirResponse(info=file_info(result["info"]), created=bool(result["created"]))

    async def ListLocal(
        self, request: node_agent_pb2.ListLocalRequest, context: Context
    ) -> node_agent_pb2.ListLocalResponse:
        return node_agent_pb2.ListLocalResponse(
            sandboxes=[
                node_agent_pb2.LocalSandbox(
                    sandbox_id=s.id, tenant_id=s.request.tenant_id, status=s.status, init_pid=s.init_pid
                )
                for s in self._manager.all()
            ]
        )

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
