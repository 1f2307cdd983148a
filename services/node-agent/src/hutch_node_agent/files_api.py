"""The node-agent's file calls: read, write (atomic, checksummed), list, stat, remove, rename,
make a directory, watch. Paths are resolved by the sandbox's supervisor, inside the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.v1 import files_pb2
from hutch_node_agent.convert import file_info
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.settings import NodeOptions

_EVENT_TYPES = {
    "create": files_pb2.FILESYSTEM_EVENT_TYPE_CREATE,
    "modify": files_pb2.FILESYSTEM_EVENT_TYPE_MODIFY,
    "delete": files_pb2.FILESYSTEM_EVENT_TYPE_DELETE,
    "rename": files_pb2.FILESYSTEM_EVENT_TYPE_RENAME,
}


class FileCalls:
    """The NodeAgent service's file methods."""

    _manager: SandboxManager
    _options: NodeOptions

    async def ReadFile(
        self, request: files_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[files_pb2.ReadFileResponse]:
        self._manager.running(request.sandbox)
        info, chunks = await self._manager.supervisor(request.sandbox).read_file(request.path)
        try:
            yield files_pb2.ReadFileResponse(info=file_info(info))
            async for chunk in chunks:
                yield files_pb2.ReadFileResponse(data=chunk)
        finally:
            await chunks.aclose()
        if chunks.sha256 is not None:
            yield files_pb2.ReadFileResponse(end=files_pb2.ReadFileEnd(sha256=chunks.sha256))

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

    async def Watch(
        self, request: files_pb2.WatchDirRequest, context: Context
    ) -> AsyncIterator[files_pb2.FilesystemEvent]:
        self._manager.running(request.sandbox)
        supervisor = self._manager.supervisor(request.sandbox)
        async with await supervisor.watch(request.path, recursive=request.recursive) as watch:
            yield files_pb2.FilesystemEvent(type=files_pb2.FILESYSTEM_EVENT_TYPE_WATCHING, path=request.path)
            async for change in watch:
                yield files_pb2.FilesystemEvent(
                    type=_EVENT_TYPES[change.type], path=change.path, is_dir=change.is_dir,
                    old_path=change.old_path or "",
                )  # fmt: skip
