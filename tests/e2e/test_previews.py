"""Preview URLs against the whole local stack: HTTP and WebSockets from outside into a sandbox's port,
through the gateway's preview edge, and who may open them.

Preview hosts are `PORT-SANDBOX.localhost`. curl and browsers resolve `*.localhost` to loopback,
Python does not, so these tests connect to 127.0.0.1 themselves and send the Host header.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from hutch import CommandHandle, InvalidArgumentError, NotFoundError, Sandbox, SandboxError
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e

HTTP_PORT = 8000
WEBSOCKET_PORT = 8765
QUIET_PORT = 8001
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# A WebSocket echo server with nothing but the standard library, run inside the sandbox.
ECHO_SERVER = r"""
import base64, hashlib, socket, struct, sys, threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exactly(conn, buffered, size):
    while len(buffered) < size:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buffered += chunk
    return buffered[:size], buffered[size:]


def serve(conn):
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        head, rest = data.split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        key = {k.lower(): v for k, v in headers.items()}["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        while True:
            try:
                start, rest = read_exactly(conn, rest, 2)
                length = start[1] & 0x7F
                if length == 126:
                    raw, rest = read_exactly(conn, rest, 2)
                    length = struct.unpack("!H", raw)[0]
                elif length == 127:
                    raw, rest = read_exactly(conn, rest, 8)
                    length = struct.unpack("!Q", raw)[0]
                mask, rest = read_exactly(conn, rest, 4)
                payload, rest = read_exactly(conn, rest, length)
            except EOFError:
                return
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = start[0] & 0x0F
            if length < 126:
                size = bytes([length])
            elif length < 65536:
                size = bytes([126]) + struct.pack("!H", length)
            else:
                size = bytes([127]) + struct.pack("!Q", length)
            conn.sendall(bytes([0x80 | opcode]) + size + payload)
            if opcode == 8:
                return


server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: http.client.HTTPMessage


@dataclass
class Edge:
    """The preview edge of the local stack."""

    port: int

    def get(self, host: str, path: str = "/", headers: dict[str, str] | None = None) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            return Reply(response.status, response.read(), response.headers)
        finally:
            connection.close()

    def open(self, url: str, headers: dict[str, str] | None = None) -> Reply:
        parts = urlsplit(url)
        assert parts.hostname and parts.hostname.endswith(".localhost"), url
        return self.get(parts.netloc, f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}", headers)


@pytest.fixture(scope="module")
def edge(local_stack: Any) -> Edge:
    port = int(local_stack.service_env("gateway").get("HUTCH_GATEWAY__PREVIEW_PORT") or 0)
    if not port:
        pytest.skip("the local stack runs no preview edge (the gateway has no HUTCH_GATEWAY__PREVIEW_PORT)")
    return Edge(port)


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module")
def served(connection: dict[str, str], edge: Edge) -> Iterator[tuple[Sandbox, str]]:
    """A sandbox running `python3 -m http.server` on HTTP_PORT in a folder with index.html; yields
    the sandbox and the page's content."""
    box = Sandbox.create(metadata={"suite": "e2e-previews"}, **connection)
    page = f"<h1>hello from {box.id} {uuid.uuid4().hex}</h1>\n"
    handles: list[CommandHandle] = []
    try:
        box.files.write("/srv/site/index.html", page)
        handles.append(box.commands.run(f"python3 -m http.server {HTTP_PORT}", background=True, cwd="/srv/site"))
        box.files.write("/srv/echo.py", ECHO_SERVER)
        handles.append(box.commands.run(f"python3 /srv/echo.py {WEBSOCKET_PORT}", background=True))
        url = box.get_preview_url(HTTP_PORT)
        eventually_sync(lambda: edge.open(url).status == 200, timeout=30, retry_on=(OSError,))
        eventually_sync(lambda: "listening" in handles[1].stdout, timeout=30)
        yield box, page
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        box.close()


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["hutch_token"][0]


def test_a_preview_url_reaches_the_server_in_the_sandbox(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, page = served
    url = box.get_preview_url(HTTP_PORT)
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.port == edge.port
    assert parts.hostname == f"{HTTP_PORT}-{box.id}.localhost"
    reply = edge.open(url)
    assert (reply.status, reply.body.decode()) == (200, page)
    assert box.get_host(HTTP_PORT) == parts.netloc
    # A path and a query of the page's own travel with the token.
    listing = edge.get(parts.netloc, f"/index.html?x=1&hutch_token={_token(url)}")
    assert (listing.status, listing.body.decode()) == (200, page)


def test_without_a_token_a_private_port_is_refused(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    reply = edge.get(box.get_host(HTTP_PORT))
    assert reply.status == 401
    assert b"private" in reply.body and b"get_preview_url" in reply.body


def test_a_forged_token_is_refused(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    url = box.get_preview_url(HTTP_PORT)
    forged = url.replace(_token(url), _token(url)[:-4] + "AAAA")
    assert edge.open(forged).status == 401
    assert edge.get(box.get_host(HTTP_PORT), "/?hutch_token=garbage").status == 401


def test_an_expired_token_is_refused(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    url = box.get_preview_url(HTTP_PORT, expires_in=1)
    time.sleep(2.5)
    reply = edge.open(url)
    assert reply.status == 403
    assert b"expired" in reply.body


def test_a_token_opens_only_its_own_port(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    token = _token(box.get_preview_url(HTTP_PORT))
    reply = edge.get(box.get_host(QUIET_PORT), f"/?hutch_token={token}")
    assert reply.status == 403


def test_the_api_key_opens_any_port(served: tuple[Sandbox, str], edge: Edge, local_stack: Any) -> None:
    box, page = served
    reply = edge.get(box.get_host(HTTP_PORT), headers={"Authorization": f"Bearer {local_stack.api_key}"})
    assert (reply.status, reply.body.decode()) == (200, page)


def test_a_public_port_needs_no_token(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, page = served
    info = box.set_port_public(HTTP_PORT)
    try:
        assert HTTP_PORT in info.public_ports
        assert HTTP_PORT in box.get_info().public_ports
        url = box.get_preview_url(HTTP_PORT)
        assert "hutch_token" not in url
        reply = edge.get(box.get_host(HTTP_PORT))
        assert (reply.status, reply.body.decode()) == (200, page)
    finally:
        closed = box.set_port_public(HTTP_PORT, public=False)
    assert HTTP_PORT not in closed.public_ports
    assert edge.get(box.get_host(HTTP_PORT)).status == 401


def test_a_port_nothing_listens_on_is_a_clear_502(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    reply = edge.open(box.get_preview_url(QUIET_PORT))
    assert reply.status == 502
    body = reply.body.decode()
    assert str(QUIET_PORT) in body or "listen" in body.lower() or "refused" in body.lower(), body


def test_a_browser_gets_the_token_as_a_cookie(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, page = served
    url = box.get_preview_url(HTTP_PORT)
    first = edge.open(url, headers={"Accept": "text/html"})
    assert first.status == 302 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"].split(";", 1)[0]
    second = edge.get(box.get_host(HTTP_PORT), headers={"Cookie": cookie, "Accept": "text/html"})
    assert (second.status, second.body.decode()) == (200, page)


def test_bad_preview_arguments(served: tuple[Sandbox, str]) -> None:
    box, _ = served
    with pytest.raises(InvalidArgumentError):
        box.get_preview_url(70000)
    with pytest.raises(InvalidArgumentError):
        box.get_preview_url(HTTP_PORT, expires_in=31 * 24 * 3600)


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client's frame: final, masked, as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        size = bytes([0x80 | length])
    elif length < 65536:
        size = bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        size = bytes([0x80 | 127]) + struct.pack("!Q", length)
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_exactly(sock: socket.socket, buffered: bytearray, size: int) -> bytes:
    while len(buffered) < size:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of a frame"
        buffered.extend(chunk)
    taken = bytes(buffered[:size])
    del buffered[:size]
    return taken


def _read_frame(sock: socket.socket, buffered: bytearray) -> tuple[int, bytes]:
    start = _read_exactly(sock, buffered, 2)
    length = start[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", _read_exactly(sock, buffered, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _read_exactly(sock, buffered, 8))[0]
    return start[0] & 0x0F, _read_exactly(sock, buffered, length)


def test_a_websocket_echoes_through_the_edge(served: tuple[Sandbox, str], edge: Edge) -> None:
    box, _ = served
    parts = urlsplit(box.get_preview_url(WEBSOCKET_PORT))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /socket?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
        sock.sendall(request.encode())
        buffered = bytearray()
        while b"\r\n\r\n" not in buffered:
            chunk = sock.recv(4096)
            assert chunk, f"the edge closed the connection: {bytes(buffered)!r}"
            buffered.extend(chunk)
        head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
        buffered = bytearray(rest)
        assert head.startswith(b"HTTP/1.1 101"), head
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        assert headers["sec-websocket-accept"] == accept

        # A short text message, and a binary one long enough for the 64-bit length form.
        for opcode, message in ((1, b"hello through the edge"), (2, os.urandom(70_000))):
            sock.sendall(_frame(message, opcode))
            assert _read_frame(sock, buffered) == (opcode, message)
        sock.sendall(_frame(b"", opcode=8))
        assert _read_frame(sock, buffered)[0] == 8
