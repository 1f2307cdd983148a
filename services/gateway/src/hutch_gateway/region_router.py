"""Serving a call in the region that can: the gateway's one cross-region boundary.

Every public call is served here first. When it fails because the tenant has no such sandbox here
(`SandboxNotFound` for the sandbox the call names) and the cross-region index says another region
holds it, the call is passed to that region's gateway and its answer relayed, before any response
was sent: a request stream is replayed from its first message. Creates go where they are asked to
(`CreateSandboxRequest.region`); one that names no region stays here while this region has room and
otherwise goes to the nearest region that has (`region_placement`). A list of every region's
sandboxes (`all_regions`) asks each region for the same page and merges them.

The router sits inside the service's main interceptor, so forwarded calls are traced and timed like
any other, and the errors it raises reach the caller through the one error table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final

import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import rebuild_handler
from hutch.v1 import sandbox_pb2, snapshot_pb2
from hutch_gateway import store
from hutch_gateway.auth import Authenticator, key_from_metadata
from hutch_gateway.domain import SandboxNotFound
from hutch_gateway.region_index import SandboxIndex
from hutch_gateway.region_peers import FORWARDED_FROM, ONLY_IF_ROOM, PeerGateways
from hutch_gateway.region_placement import PLACEMENT, NoRoomInRegion, Placement
from hutch_gateway.service import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from hutch.core.grpc_runtime import Context, Handler
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler

# The APIs whose calls name a sandbox; the others (templates, secrets, usage, nodes) are regional
# or global by nature and served where they arrive.
ROUTED: Final = ("/hutch.v1.Sandboxes/", "/hutch.v1.Processes/", "/hutch.v1.Files/", "/hutch.v1.Network/")
CREATE: Final = "/hutch.v1.Sandboxes/Create"
COPY_SNAPSHOT: Final = "/hutch.v1.Snapshots/Copy"
LIST: Final = "/hutch.v1.Sandboxes/List"

Metadata = tuple[tuple[str, Any], ...]


class _Recorded:
    """A request stream that remembers what the local handler read, so it can be replayed."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self.seen: list[Any] = []

    def __aiter__(self) -> _Recorded:
        return self

    async def __anext__(self) -> Any:
        message = await anext(self._requests)
        self.seen.append(message)
        return message

    async def replay(self) -> AsyncIterator[Any]:
        for message in self.seen:
            yield message
        async for message in self._requests:
            yield message


class RegionRouter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, index: SandboxIndex, peers: PeerGateways, auth: Authenticator) -> None:
        self._index = index
        self._peers = peers
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        routed = method.startswith(ROUTED) or method == COPY_SNAPSHOT
        if handler is None or not routed or not self._peers.regions:
            return handler
        metadata: Metadata = tuple(details.invocation_metadata or ())
        forwarded = any(key == FORWARDED_FROM for key, _ in metadata)
        if forwarded:
            # Another region passed it on: served here, never passed on again.
            if method == CREATE and any(key == ONLY_IF_ROOM for key, _ in metadata):
                return _with_placement(handler, Placement.ONLY_IF_ROOM)
            return handler
        if method == CREATE:
            return _rebuilt(handler, self._create_unary(handler, metadata), _no_streaming)
        if method == COPY_SNAPSHOT:
            return _rebuilt(handler, self._copy_unary(handler, metadata), _no_streaming)
        if method == LIST:
            return _rebuilt(handler, self._list_unary(handler, metadata), _no_streaming)
        return _rebuilt(handler, self._unary(handler, method, metadata), self._streaming(handler, method, metadata))

    # -- calls that name a sandbox

    def _unary(self, handler: Handler, method: str, metadata: Metadata) -> Callable[..., Awaitable[Any]]:
        behaviour: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Context) -> Any:
            requests = _Recorded(request) if handler.stream_unary else request
            try:
                return await behaviour(requests, context)
            except SandboxNotFound as exc:
                region = await self._holder(exc, metadata)
                again = requests.replay() if isinstance(requests, _Recorded) else request
                outgoing = self._peers.metadata(metadata)
                return await self._peers.unary(region, method, again, outgoing, context.time_remaining())

        return unary

    def _streaming(self, handler: Handler, method: str, metadata: Metadata) -> Callable[..., AsyncIterator[Any]]:
        behaviour: Any = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            requests = _Recorded(request) if handler.stream_stream else request
            answered = False
            try:
                async for response in behaviour(requests, context):
                    answered = True
                    yield response
                return
            except SandboxNotFound as exc:
                if answered:
                    raise
                region = await self._holder(exc, metadata)
            again = requests.replay() if isinstance(requests, _Recorded) else request
            outgoing = self._peers.metadata(metadata)
            async for raw in self._peers.streaming(region, method, again, outgoing, context.time_remaining()):
                yield raw

        return streaming

    async def _holder(self, missing: SandboxNotFound, metadata: Metadata) -> str:
        """The region that holds the sandbox this region does not; re-raises `missing` when none does."""
        if not missing.ref:
            raise missing
        tenant = await self._auth.tenant(key_from_metadata(metadata))
        lookup = await self._index.locate(tenant, missing.ref)
        if lookup.found is not None:
            return lookup.found.region
        if lookup.unreachable:
            raise errors.NotFound(
                f"{missing.message} in the regions that answered; "
                f"{', '.join(lookup.unreachable)} did not answer, try again later"
            ) from missing
        raise missing

    # -- creates

    def _create_unary(self, handler: Handler, metadata: Metadata) -> Callable[..., Awaitable[Any]]:
        behaviour: Any = handler.unary_unary

        async def create(request: sandbox_pb2.CreateSandboxRequest, context: Context) -> Any:
            asked = request.region
            if asked and asked != self._peers.region:
                outgoing = self._peers.metadata(metadata)
                return await self._peers.unary(asked, CREATE, request, outgoing, context.time_remaining())
            if asked or request.snapshot:
                # Named this region, or starts from a snapshot, which is stored here.
                return await behaviour(request, context)
            with _placement(Placement.SPILL):
                try:
                    return await behaviour(request, context)
                except NoRoomInRegion:
                    pass
            for region in self._peers.regions:
                there = sandbox_pb2.CreateSandboxRequest()
                there.CopyFrom(request)
                there.region = region
                outgoing = self._peers.metadata(metadata, (ONLY_IF_ROOM, "1"))
                try:
                    return await self._peers.unary(region, CREATE, there, outgoing, context.time_remaining())
                except (errors.ResourceExhausted, errors.Unavailable):
                    continue  # no room there either, or out of reach: the next nearest
            # No region has room now: here, where the scheduler waits for room as it always does.
            return await behaviour(request, context)

        return create

    # -- listing every region

    def _list_unary(self, handler: Handler, metadata: Metadata) -> Callable[..., Awaitable[Any]]:
        behaviour: Any = handler.unary_unary

        async def list_sandboxes(request: sandbox_pb2.ListSandboxesRequest, context: Context) -> Any:
            if not request.all_regions:
                return await behaviour(request, context)
            outgoing = self._peers.metadata(metadata)

            async def listed_in(region: str) -> sandbox_pb2.ListSandboxesResponse:
                raw = await self._peers.unary(region, LIST, request, outgoing, context.time_remaining())
                return sandbox_pb2.ListSandboxesResponse.FromString(raw)

            pages = await asyncio.gather(behaviour(request, context), *map(listed_in, self._peers.regions))
            return merged_page(pages, request.page_size or DEFAULT_PAGE_SIZE)

        return list_sandboxes

    # -- snapshot copies

    def _copy_unary(self, handler: Handler, metadata: Metadata) -> Callable[..., Awaitable[Any]]:
        behaviour: Any = handler.unary_unary

        async def copy(request: snapshot_pb2.CopySnapshotRequest, context: Context) -> Any:
            here = self._peers.region
            if not request.to_region or request.to_region == here:
                return await behaviour(request, context)
            # The copy is made by the region it goes to, which pulls the bytes from the source.
            there = snapshot_pb2.CopySnapshotRequest()
            there.CopyFrom(request)
            there.from_region = request.from_region or here
            outgoing = self._peers.metadata(metadata)
            return await self._peers.unary(request.to_region, COPY_SNAPSHOT, there, outgoing, context.time_remaining())

        return copy


def merged_page(pages: Sequence[sandbox_pb2.ListSandboxesResponse], size: int) -> sandbox_pb2.ListSandboxesResponse:
    """One page of every region's sandboxes from each region's page of the same request: the newest
    `size` in the order every region pages in, and a token that each region goes on from."""
    everyone = [sandbox for page in pages for sandbox in page.sandboxes]
    everyone.sort(key=lambda s: (s.created_at.ToDatetime(tzinfo=UTC), s.id), reverse=True)
    page = everyone[:size]
    more = len(everyone) > size or any(p.next_page_token for p in pages)
    token = store.page_token(page[-1].created_at.ToDatetime(tzinfo=UTC), page[-1].id) if more and page else ""
    return sandbox_pb2.ListSandboxesResponse(sandboxes=page, next_page_token=token)


@contextlib.contextmanager
def _placement(placement: Placement) -> Iterator[None]:
    token = PLACEMENT.set(placement)
    try:
        yield
    finally:
        PLACEMENT.reset(token)


def _with_placement(handler: Handler, placement: Placement) -> Handler:
    behaviour: Any = handler.unary_unary

    async def unary(request: Any, context: Context) -> Any:
        with _placement(placement):
            return await behaviour(request, context)

    return _rebuilt(handler, unary, _no_streaming)


def _no_streaming(request: Any, context: Context) -> AsyncIterator[Any]:
    raise AssertionError("a unary method has no streaming behaviour")


def _rebuilt(
    handler: Handler, unary: Callable[..., Awaitable[Any]], streaming: Callable[..., AsyncIterator[Any]]
) -> Handler:
    """The handler with new behaviours; responses relayed from another region are already bytes."""
    serialize = handler.response_serializer

    def serializer(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        return serialize(response) if serialize is not None else response  # type: ignore[no-any-return]

    return rebuild_handler(handler, unary, streaming, serializer)
