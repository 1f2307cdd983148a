"""The public gRPC API. Thin: authenticate, convert, delegate, convert back.

Sandboxes calls go to the SandboxService (snapshots, pauses, resumes and forks to SandboxSnapshots);
Snapshots calls to the SnapshotCatalog. Processes and Files calls are proxied to the node-agent
that runs the sandbox, after the sandbox reference (id or name) has been resolved within the
caller's tenant and replaced by the sandbox id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from hutch.core import errors
from hutch.core.grpc_runtime import Context, error_from_rpc
from hutch.core.nodes import NodeInfo

if TYPE_CHECKING:
    from hutch.internal.v1.node_agent_pb2_grpc import NodeAgentAsyncStub
from hutch.v1 import (
    files_pb2,
    files_pb2_grpc,
    process_pb2,
    process_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
    snapshot_pb2,
    snapshot_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from hutch_gateway import convert
from hutch_gateway.auth import Authenticator, key_from_metadata
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import Limits, validate_create
from hutch_gateway.network_rules import network_lists
from hutch_gateway.region_placement import PLACEMENT
from hutch_gateway.resize import SandboxResizer
from hutch_gateway.resize_rules import validate_resize
from hutch_gateway.sandbox_snapshots import SandboxSnapshots
from hutch_gateway.service import SandboxService
from hutch_gateway.snapshot_catalog import SnapshotCatalog, describe
from hutch_gateway.templates import TemplateService

R = TypeVar("R", bound=Message)
M = TypeVar("M", bound=Message)


class _Authenticated:
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def _tenant(self, context: Context) -> str:
        return await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))


class SandboxesServicer(_Authenticated, sandbox_pb2_grpc.SandboxesServicer):
    def __init__(
        self,
        auth: Authenticator,
        service: SandboxService,
        limits: Limits,
        snapshots: SandboxSnapshots,
        resizer: SandboxResizer | None = None,
    ) -> None:
        super().__init__(auth)
        self._resizer = resizer
        self._service = service
        self._limits = limits
        self._snapshots = snapshots

    async def Create(self, request: sandbox_pb2.CreateSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        if request.region and request.region != self._service.region:
            # Another region's name reaches here only when this installation has no such region.
            raise errors.InvalidArgument(
                f"region {request.region!r} is not one of this installation's (this gateway serves "
                f"{self._service.region!r} and knows no other regions)"
            )
        create = validate_create(
            template=request.template,
            name=request.name,
            cpu_millis=request.resources.cpu_millis,
            memory_mb=request.resources.memory_mb,
            metadata=dict(request.metadata),
            envs=dict(request.envs),
            timeout_seconds=request.timeout_seconds,
            limits=self._limits,
            isolation=request.isolation,
            trust=request.trust,
            snapshot=request.snapshot,
            network=network_lists(request.network),
            auto_sleep_after_s=request.auto_sleep_after_seconds,
            memory_ceiling_mb=request.memory_ceiling_mb,
        )
        return convert.sandbox(await self._service.create(tenant, create, PLACEMENT.get()))

    async def Get(self, request: sandbox_pb2.GetSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        record = await self._service.get(tenant, request.sandbox)
        return convert.sandbox(record, self._service.idle_since(record))

    async def List(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        tenant = await self._tenant(context)
        records, token = await self._service.list(
            tenant,
            dict(request.metadata),
            convert.states(list(request.states)),
            request.page_size,
            request.page_token,
        )
        return sandbox_pb2.ListSandboxesResponse(
            sandboxes=[convert.sandbox(r, self._service.idle_since(r)) for r in records], next_page_token=token
        )

    async def Kill(self, request: sandbox_pb2.KillSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        return convert.sandbox(await self._service.kill(tenant, request.sandbox))

    async def SetTimeout(self, request: sandbox_pb2.SetTimeoutRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        return convert.sandbox(await self._service.set_timeout(tenant, request.sandbox, request.timeout_seconds))

    async def GetPreviewUrl(
        self, request: sandbox_pb2.GetPreviewUrlRequest, context: Context
    ) -> sandbox_pb2.PreviewUrl:
        tenant = await self._tenant(context)
        link = await self._service.preview_url(tenant, request.sandbox, request.port, request.expires_in_seconds)
        message = sandbox_pb2.PreviewUrl(url=link.url, host=link.host, token=link.token)
        message.expires_at.FromDatetime(link.expires_at)
        return message

    async def SetPortVisibility(
        self, request: sandbox_pb2.SetPortVisibilityRequest, context: Context
    ) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        record = await self._service.set_port_visibility(tenant, request.sandbox, request.port, request.public)
        return convert.sandbox(record)

    async def Snapshot(self, request: sandbox_pb2.SnapshotSandboxRequest, context: Context) -> snapshot_pb2.Snapshot:
        tenant = await self._tenant(context)
        manifest = await self._snapshots.snapshot(tenant, request.sandbox, request.name, dict(request.labels))
        return describe(manifest, self._service.region)

    async def Pause(self, request: sandbox_pb2.PauseSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        return convert.sandbox(await self._snapshots.pause(tenant, request.sandbox))

    async def Resume(self, request: sandbox_pb2.ResumeSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        return convert.sandbox(await self._snapshots.resume(tenant, request.sandbox))

    async def Fork(self, request: sandbox_pb2.ForkSandboxRequest, context: Context) -> sandbox_pb2.ForkSandboxResponse:
        tenant = await self._tenant(context)
        children, snapshot_id = await self._snapshots.fork(
            tenant, request.sandbox, request.count, dict(request.metadata)
        )
        return sandbox_pb2.ForkSandboxResponse(
            sandboxes=[convert.sandbox(child) for child in children], snapshot_id=snapshot_id
        )

    async def Resize(self, request: sandbox_pb2.ResizeSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = await self._tenant(context)
        wanted = validate_resize(request.resources.cpu_millis, request.resources.memory_mb, self._limits)
        if self._resizer is None:
            raise errors.Unavailable("live resizing is not set up here")
        return convert.sandbox(await self._resizer.resize(tenant, request.sandbox, wanted))


class SnapshotsServicer(_Authenticated, snapshot_pb2_grpc.SnapshotsServicer):
    def __init__(self, auth: Authenticator, catalog: SnapshotCatalog) -> None:
        super().__init__(auth)
        self._catalog = catalog

    async def List(
        self, request: snapshot_pb2.ListSnapshotsRequest, context: Context
    ) -> snapshot_pb2.ListSnapshotsResponse:
        tenant = await self._tenant(context)
        return await self._catalog.list(
            tenant, request.sandbox, list(request.purposes), request.page_size, request.page_token
        )

    async def Get(self, request: snapshot_pb2.GetSnapshotRequest, context: Context) -> snapshot_pb2.Snapshot:
        tenant = await self._tenant(context)
        return await self._catalog.get(tenant, request.snapshot)

    async def Delete(
        self, request: snapshot_pb2.DeleteSnapshotRequest, context: Context
    ) -> snapshot_pb2.DeleteSnapshotResponse:
        tenant = await self._tenant(context)
        await self._catalog.delete(tenant, request.snapshot)
        return snapshot_pb2.DeleteSnapshotResponse()

    async def Usage(self, request: snapshot_pb2.SnapshotUsageRequest, context: Context) -> snapshot_pb2.SnapshotUsage:
        tenant = await self._tenant(context)
        return await self._catalog.usage(tenant)

    async def Copy(self, request: snapshot_pb2.CopySnapshotRequest, context: Context) -> snapshot_pb2.Snapshot:
        tenant = await self._tenant(context)
        # A copy into another region is passed to that region's gateway before it gets here.
        if request.to_region and request.to_region != self._catalog.region:
            raise errors.InvalidArgument(
                f"region {request.to_region!r} is not one of this installation's "
                f"(this gateway serves {self._catalog.region!r} and knows no other regions)"
            )
        return await self._catalog.copy(tenant, request.snapshot, request.from_region)


class _Proxy(_Authenticated):
    """Data-plane calls: resolve the sandbox within the caller's tenant, then relay to its node."""

    def __init__(self, auth: Authenticator, service: SandboxService, nodes: NodeChannels) -> None:
        super().__init__(auth)
        self._service = service
        self._nodes = nodes

    async def _route(self, context: Context, ref: str) -> tuple[str, NodeInfo]:
        tenant = await self._tenant(context)
        record, node = await self._service.running(tenant, ref)
        return record.id, node

    def _stub(self, node: NodeInfo) -> NodeAgentAsyncStub:
        return self._nodes.stub(node.address)

    @staticmethod
    async def _relay(node: NodeInfo, call: Any) -> AsyncIterator[Any]:
        """Yields a node's streamed answers; its errors become the domain errors they carry."""
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {node.node_id}") from exc
        finally:
            call.cancel()

    @staticmethod
    async def _unary(node: NodeInfo, call: Awaitable[R]) -> R:
        try:
            return await call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {node.node_id}") from exc


async def _then(first: M, rest: AsyncIterator[M]) -> AsyncIterator[M]:
    """A request stream with its first message (already read and rewritten) put back in front."""
    yield first
    async for request in rest:
        yield request


class ProcessesServicer(_Proxy, process_pb2_grpc.ProcessesServicer):
    async def Run(
        self, request_iterator: AsyncIterator[process_pb2.RunRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "start":
            raise errors.InvalidArgument("the first message of Run must be `start` with the process config")
        first.start.sandbox, node = await self._route(context, first.start.sandbox)
        call = self._stub(node).Run(_then(first, request_iterator), metadata=self._nodes.metadata())
        async for response in self._relay(node, call):
            yield response

    async def Connect(
        self, request_iterator: AsyncIterator[process_pb2.ConnectRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "attach":
            raise errors.InvalidArgument("the first message of Connect must be `attach` with the pid")
        first.attach.sandbox, node = await self._route(context, first.attach.sandbox)
        call = self._stub(node).Connect(_then(first, request_iterator), metadata=self._nodes.metadata())
        async for response in self._relay(node, call):
            yield response

    async def List(
        self, request: process_pb2.ListProcessesRequest, context: Context
    ) -> process_pb2.ListProcessesResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).ListProcesses(request, metadata=self._nodes.metadata()))

    async def SendSignal(
        self, request: process_pb2.SendSignalRequest, context: Context
    ) -> process_pb2.SendSignalResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).SendSignal(request, metadata=self._nodes.metadata()))

    async def SendStdin(self, request: process_pb2.SendStdinRequest, context: Context) -> process_pb2.SendStdinResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).SendStdin(request, metadata=self._nodes.metadata()))


class FilesServicer(_Proxy, files_pb2_grpc.FilesServicer):
    async def Read(
        self, request: files_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[files_pb2.ReadFileResponse]:
        request.sandbox, node = await self._route(context, request.sandbox)
        async for response in self._relay(node, self._stub(node).ReadFile(request, metadata=self._nodes.metadata())):
            yield response

    async def Write(
        self, request_iterator: AsyncIterator[files_pb2.WriteFileRequest], context: Context
    ) -> files_pb2.FileInfo:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "header":
            raise errors.InvalidArgument("the first message of Write must be `header` with the path")
        first.header.sandbox, node = await self._route(context, first.header.sandbox)
        call = self._stub(node).WriteFile(_then(first, request_iterator), metadata=self._nodes.metadata())
        return await self._unary(node, call)

    async def Watch(
        self, request: files_pb2.WatchDirRequest, context: Context
    ) -> AsyncIterator[files_pb2.FilesystemEvent]:
        request.sandbox, node = await self._route(context, request.sandbox)
        async for event in self._relay(node, self._stub(node).Watch(request, metadata=self._nodes.metadata())):
            yield event

    async def List(self, request: files_pb2.ListDirRequest, context: Context) -> files_pb2.ListDirResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).ListDir(request, metadata=self._nodes.metadata()))

    async def Stat(self, request: files_pb2.StatRequest, context: Context) -> files_pb2.FileInfo:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).Stat(request, metadata=self._nodes.metadata()))

    async def Remove(self, request: files_pb2.RemoveRequest, context: Context) -> files_pb2.RemoveResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).Remove(request, metadata=self._nodes.metadata()))

    async def Rename(self, request: files_pb2.RenameRequest, context: Context) -> files_pb2.FileInfo:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).Rename(request, metadata=self._nodes.metadata()))

    async def MakeDir(self, request: files_pb2.MakeDirRequest, context: Context) -> files_pb2.MakeDirResponse:
        request.sandbox, node = await self._route(context, request.sandbox)
        return await self._unary(node, self._stub(node).MakeDir(request, metadata=self._nodes.metadata()))


class TemplatesServicer(_Authenticated, templates_pb2_grpc.TemplatesServicer):
    def __init__(self, auth: Authenticator, templates: TemplateService) -> None:
        super().__init__(auth)
        self._templates = templates

    async def Import(
        self, request_iterator: AsyncIterator[templates_pb2.ImportTemplateRequest], context: Context
    ) -> templates_pb2.Template:
        tenant = await self._tenant(context)
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "header":
            raise errors.InvalidArgument("the first message of Import must be `header` with the template's name")

        async def chunks() -> AsyncIterator[bytes]:
            async for request in request_iterator:
                which = request.WhichOneof("event")
                if which == "end":
                    return
                if which != "data":
                    raise errors.InvalidArgument("after the header, Import takes data messages and then `end`")
                yield request.data
            raise errors.InvalidArgument("the upload stopped before its `end` message; nothing was imported")

        return await self._templates.import_archive(tenant, first.header.name, first.header.size, chunks())

    async def List(
        self, request: templates_pb2.ListTemplatesRequest, context: Context
    ) -> templates_pb2.ListTemplatesResponse:
        tenant = await self._tenant(context)
        return templates_pb2.ListTemplatesResponse(templates=await self._templates.list(tenant))

    async def Delete(
        self, request: templates_pb2.DeleteTemplateRequest, context: Context
    ) -> templates_pb2.DeleteTemplateResponse:
        tenant = await self._tenant(context)
        await self._templates.delete(tenant, request.name)
        return templates_pb2.DeleteTemplateResponse()
