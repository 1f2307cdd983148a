"""The preview edge: plain HTTP in, a byte tunnel to a port inside the sandbox out.

`http://8080-sb-abc.localhost:50080/...` is routed by its Host header to port 8080 of sandbox sb-abc.
The edge reads the request's head only to route and authorise it; after that it relays bytes both
ways without interpreting them, so WebSockets, server-sent events and streamed responses work as
they would directly. A connection stays bound to the sandbox and port of its first request.

Authorisation, in order: a public port needs nothing; else a preview token (the `hutch_token` query
parameter, the `hutch_preview_token` cookie or an `x-hutch-token` header), or the tenant's API key
(`authorization: Bearer` or `x-api-key`). A browser that opens a URL with a token in it is redirected
to the same URL without it and given the token as a cookie, so the page's own requests work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc
from hutch.core.nodes import NodeInfo
from hutch.internal.v1 import node_agent_pb2
from hutch_gateway import store
from hutch_gateway.auth import Authenticator, key_from_metadata
from hutch_gateway.dataplane import NodeChannels
from hutch_gateway.domain import SandboxRecord
from hutch_gateway.preview import TOKEN_PARAMETER, PreviewSite, verify
from hutch_gateway.service import SandboxService

log = logging.getLogger(__name__)

COOKIE = "hutch_preview_token"
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CHUNK = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestHead:
    raw: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key == name), "")

    def query_token(self) -> str:
        return dict(parse_qsl(urlsplit(self.target).query)).get(TOKEN_PARAMETER, "")

    def cookie_token(self) -> str:
        cookie: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(self.header("cookie"))
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else ""


def parse_head(raw: bytes) -> RequestHead:
    try:
        text = raw.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
    except ValueError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP request line") from exc
    headers = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP header")
        headers.append((name.strip().lower(), value.strip()))
    return RequestHead(raw, method, target, headers)


def _response(status: HTTPStatus, body: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    payload = body.encode()
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(payload)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


_STATUS_FOR_ERROR = {
    errors.InvalidArgument: HTTPStatus.BAD_REQUEST,
    errors.Unauthenticated: HTTPStatus.UNAUTHORIZED,
    errors.PermissionDenied: HTTPStatus.FORBIDDEN,
    errors.NotFound: HTTPStatus.NOT_FOUND,
    errors.FailedPrecondition: HTTPStatus.CONFLICT,
    errors.Unavailable: HTTPStatus.BAD_GATEWAY,
    errors.DeadlineExceeded: HTTPStatus.GATEWAY_TIMEOUT,
}


class PreviewEdge:
    def __init__(
        self, site: PreviewSite, service: SandboxService, auth: Authenticator, channels: NodeChannels, db: asyncpg.Pool
    ) -> None:
        self._site = site
        self._service = service
        self._auth = auth
        self._channels = channels
        self._db = db

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = parse_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S))
            record, node, port = await self._authorise(head)
            if redirect := self._strip_token(head):
                writer.write(redirect)
            else:
                await self._tunnel(record, node, port, head, reader, writer)
        except HttpError as exc:
            writer.write(_response(exc.status, exc.message + "\n"))
        except errors.HutchError as exc:
            status = next((s for cls, s in _STATUS_FOR_ERROR.items() if isinstance(exc, cls)), HTTPStatus.BAD_GATEWAY)
            writer.write(_response(status, exc.message + "\n"))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # the client left, or sent something that is not HTTP: nothing to answer
        except Exception:
            log.exception("preview edge failure")
            writer.write(_response(HTTPStatus.INTERNAL_SERVER_ERROR, "the preview edge failed\n"))
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()
                await writer.wait_closed()

    async def _authorise(self, head: RequestHead) -> tuple[SandboxRecord, NodeInfo, int]:
        port, ref = self._site.parse_host(head.header("host"))
        token = head.query_token() or head.cookie_token() or head.header("x-hutch-token")
        api_key = key_from_metadata(head.headers)
        if api_key:
            tenant = await self._auth.tenant(api_key)
        elif token:
            grant = verify(self._site.secret, token)
            tenant = grant.tenant_id
        else:
            record = await store.get(self._db, ref)
            if record is None or port not in record.public_ports:
                raise errors.Unauthenticated(
                    f"port {port} of this sandbox is private: open the URL from sandbox.get_preview_url({port}), "
                    "or send the tenant's API key"
                )
            tenant = record.tenant_id
        record, node = await self._service.running(tenant, ref)
        if token and not api_key and (grant.sandbox_id, grant.port) != (record.id, port):
            raise errors.PermissionDenied("this preview token is for another sandbox or port")
        return record, node, port

    def _strip_token(self, head: RequestHead) -> bytes | None:
        """A browser navigation that carries the token in its URL: the same URL without it, plus the
        token as a cookie for the page's own requests."""
        token = head.query_token()
        if not token or head.method != "GET" or "text/html" not in head.header("accept"):
            return None
        parts = urlsplit(head.target)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != TOKEN_PARAMETER])
        location = urlunsplit(("", "", parts.path or "/", query, parts.fragment))
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={_remaining(self._site.secret, token)}"
        return _response(HTTPStatus.FOUND, "redirecting\n", [("location", location), ("set-cookie", cookie)])

    async def _tunnel(
        self,
        record: SandboxRecord,
        node: NodeInfo,
        port: int,
        head: RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        outgoing: asyncio.Queue[node_agent_pb2.TunnelRequest | None] = asyncio.Queue(8)
        await outgoing.put(node_agent_pb2.TunnelRequest(open=node_agent_pb2.TunnelOpen(sandbox=record.id, port=port)))
        await outgoing.put(node_agent_pb2.TunnelRequest(data=head.raw))

        async def requests() -> AsyncIterator[node_agent_pb2.TunnelRequest]:
            while (request := await outgoing.get()) is not None:
                yield request

        call = self._channels.stub(node.address).Tunnel(requests(), metadata=self._channels.metadata())
        responses = aiter(call)
        try:
            first = await anext(responses)
            if first.WhichOneof("event") != "opened":
                raise errors.Internal("the node answered the tunnel out of order")
            upload = asyncio.create_task(_pump_client(reader, outgoing))
            try:
                async for response in responses:
                    which = response.WhichOneof("event")
                    if which == "data":
                        writer.write(response.data)
                        await writer.drain()
                    elif which == "close_write" and writer.can_write_eof():
                        writer.write_eof()
            finally:
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upload
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, f"node {node.node_id}")
            if isinstance(error, errors.Unavailable) and "listen" in error.message:
                raise HttpError(HTTPStatus.BAD_GATEWAY, error.message) from exc
            raise error from exc
        finally:
            call.cancel()


async def _pump_client(
    reader: asyncio.StreamReader, outgoing: asyncio.Queue[node_agent_pb2.TunnelRequest | None]
) -> None:
    while chunk := await reader.read(CHUNK):
        await outgoing.put(node_agent_pb2.TunnelRequest(data=chunk))
    await outgoing.put(node_agent_pb2.TunnelRequest(close_write=True))


def _remaining(secret: bytes, token: str) -> int:
    """Seconds a token still lives, for the cookie's Max-Age."""
    return max(0, verify(secret, token).expires_at - int(time.time()))
