"""The mitmproxy addon that holds every sandbox connection to its policy.

Per connection (the node's firewall redirected it here, so the client's address says which
sandbox it is and SO_ORIGINAL_DST where it was going):

* unknown source, or a destination in the platform's deny set: reset at once;
* an address a CIDR entry allows: relayed as raw TCP (also protocols where the server speaks first);
* TLS: the SNI is checked like a Host header. Pass-through hosts are relayed untouched; everything
  else is intercepted with the installation's CA, also when refused, so the refusal is a readable
  HTTP 403 instead of a handshake failure;
* plain HTTP: parsed; anything else: reset.

Per request (HTTP, or HTTP inside intercepted TLS): CONNECT is refused; the Host header must agree
with the SNI; `decisions.decide_named` picks the address (or refuses); credentials are injected per
the grants; the response is streamed back with every injected value masked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Any

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.tls import parse_client_hello

from hutch.egress_policy import PolicyError, StreamRedactor, find_placeholders, normalize_name, redact
from hutch.egress_policy.placeholders import fits_in_header, replace_placeholders
from hutch.egress_policy.platform import Network
from hutch_egress_proxy.accounting import Accounting
from hutch_egress_proxy.credentials import Credentials, InjectionRefused, plan
from hutch_egress_proxy.decisions import (
    SENTINEL,
    decide_address,
    decide_named,
    host_of,
    needs_resolution,
    refuse_destination,
)
from hutch_egress_proxy.registry import Registry, SandboxEntry
from hutch_egress_proxy.resolver import Resolver

log = logging.getLogger(__name__)

# A connection whose client says nothing this long cannot be judged (no SNI, no Host): reset.
UNDECIDED_S = 10.0
_SANDBOX = "hutch.sandbox"
_DESTINATION = "hutch.destination"
_SECRETS = "hutch.secrets"
_REFUSED = "hutch.refused"


class _Refuse(layer.Layer):
    """Closes the client's connection at once (reset: the socket lingers zero seconds)."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield commands.CloseConnection(self.context.client)
        self._handle_event = self._closed  # type: ignore[method-assign]

    def _closed(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


def _client_socket(client: connection.Client) -> Any:
    # mitmproxy keeps no public handle on the client's socket; version 11.0.2 is pinned.
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(client.id) if server is not None else None
    io = handler.transports.get(handler.client) if handler is not None else None
    writer = io.writer if io is not None else None
    return writer.get_extra_info("socket") if writer is not None else None


def _reset_on_close(client: connection.Client) -> None:
    sock = _client_socket(client)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


def _head_size(message: http.Message) -> int:
    return sum(len(k) + len(v) + 4 for k, v in message.headers.fields) + 32


_REQUEST_LINE = re.compile(rb"^[A-Z]{3,16} \S+ HTTP/\d(\.\d)?\r?$")
_REQUEST_START = re.compile(rb"^[A-Z]{0,16}( \S*( H(T(T(P(/(\d(\.\d?)?)?)?)?)?)?)?)?$")


def _http_or_not(data: bytes) -> bool | None:
    """Whether the client's first bytes are an HTTP/1 request line (None: cannot tell yet)."""
    line, newline, _ = data.partition(b"\n")
    if newline:
        return bool(_REQUEST_LINE.match(line))
    return None if len(line) < 8192 and _REQUEST_START.match(line) else False


class EgressAddon:
    def __init__(
        self,
        registry: Registry,
        resolver: Resolver,
        credentials: Credentials,
        accounting: Accounting,
        deny: Callable[[], Sequence[Network]],
    ) -> None:
        self._registry = registry
        self._resolver = resolver
        self._credentials = credentials
        self._accounting = accounting
        self._deny = deny
        self._undecided: dict[str, asyncio.TimerHandle] = {}
        self._raw: dict[str, tuple[SandboxEntry, str]] = {}

    # -- connections -----------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        entry = self._registry.lookup(client.peername[0])
        if entry is None:
            _reset_on_close(client)
            client.error = f"no sandbox holds {client.peername[0]}"
            return
        dst, port = client.sockname[0], client.sockname[1]
        refused = refuse_destination(IPv4Address(dst), self._deny())
        if refused:
            self._refused(entry, f"{dst}:{port}", refused)
            _reset_on_close(client)
            client.error = refused
            return
        self._undecided[client.id] = asyncio.get_running_loop().call_later(UNDECIDED_S, self._give_up, client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._decided(client)
        self._raw.pop(client.id, None)

    def _decided(self, client: connection.Client) -> None:
        timer = self._undecided.pop(client.id, None)
        if timer is not None:
            timer.cancel()

    def _give_up(self, client: connection.Client) -> None:
        self._undecided.pop(client.id, None)
        _reset_on_close(client)
        sock = _client_socket(client)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if (
            nextlayer.layer is not None
            or len(context.layers) != 1
            or not isinstance(context.layers[0], modes.TransparentProxy)
        ):
            return  # inside TLS mitmproxy's own choice (HTTP) stands
        client = context.client
        entry = self._registry.lookup(client.peername[0])
        assert context.server.address is not None
        dst, port = IPv4Address(context.server.address[0]), int(context.server.address[1])
        if entry is None:
            nextlayer.layer = self._refuse_raw(context, None, f"{dst}:{port}", "unknown sandbox")
            return
        if dst != SENTINEL:
            by_address = decide_address(entry, dst, port, self._deny())
            if by_address.allowed:
                nextlayer.layer = self._relay(context, entry, f"{dst}:{port}")
                return
        data = nextlayer.data_client()
        if not data:
            return  # wait for the client; the watchdog resets a client that stays silent
        if starts_like_tls_record(data):
            await self._tls(nextlayer, entry, dst, port, data)
            return
        is_http = _http_or_not(data)
        if is_http is None:
            return  # the request line is not complete yet
        self._decided(client)
        if is_http:
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)
            return
        reason = f"{dst}:{port} is not in the sandbox's network policy (raw TCP needs an address entry)"
        nextlayer.layer = self._refuse_raw(context, entry, f"{dst}:{port}", reason)

    async def _tls(
        self, nextlayer: layer.NextLayer, entry: SandboxEntry, dst: IPv4Address, port: int, data: bytes
    ) -> None:
        context = nextlayer.context
        try:
            hello = parse_client_hello(data)
        except ValueError:
            hello = None
            self._decided(context.client)
            nextlayer.layer = self._refuse_raw(context, entry, f"{dst}:{port}", "malformed TLS ClientHello")
            return
        if hello is None:
            return  # the ClientHello is not complete yet
        self._decided(context.client)
        if not hello.sni:
            reason = f"TLS to {dst}:{port} names no server (SNI), and no address entry allows {dst}"
            nextlayer.layer = self._refuse_raw(context, entry, f"{dst}:{port}", reason)
            return
        verdict = await self._decide(entry, hello.sni, port, dst)
        if verdict.allowed:
            assert verdict.target is not None
            context.server.address = (str(verdict.target), port)
            if entry.policy.is_passthrough(hello.sni, port):
                nextlayer.layer = self._relay(context, entry, f"{normalize_name(hello.sni)}:{port}")
                return
        # Intercepted even when refused: the request inside gets a 403 that says why.
        server_tls = layers.ServerTLSLayer(context)
        server_tls.child_layer = layers.ClientTLSLayer(context)
        nextlayer.layer = server_tls

    def _relay(self, context: Any, entry: SandboxEntry, destination: str) -> layer.Layer:
        self._decided(context.client)
        self._raw[context.client.id] = (entry, destination)
        self._accounting.count(entry, destination, requests=1)
        return layers.TCPLayer(context)

    def _refuse_raw(self, context: Any, entry: SandboxEntry | None, destination: str, reason: str) -> layer.Layer:
        self._decided(context.client)
        if entry is not None:
            self._refused(entry, destination, reason)
        _reset_on_close(context.client)
        return _Refuse(context)

    async def _decide(self, entry: SandboxEntry, host: str, port: int, dst: IPv4Address) -> Any:
        resolution = None
        if needs_resolution(entry, host, port):
            resolution = await self._resolver.resolve(normalize_name(host))
        return decide_named(entry, host, port, dst, resolution, self._resolver.handed_out, self._deny())

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        found = self._raw.get(flow.client_conn.id)
        if found is not None and flow.messages:
            entry, destination = found
            message = flow.messages[-1]
            if message.from_client:
                self._accounting.count(entry, destination, out=len(message.content))
            else:
                self._accounting.count(entry, destination, back=len(message.content))
        flow.messages.clear()  # relayed already; a long connection must not pile them up

    # -- requests --------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = self._registry.lookup(flow.client_conn.peername[0])
        if entry is None:
            flow.kill()
            return
        dst, port = IPv4Address(flow.client_conn.sockname[0]), int(flow.client_conn.sockname[1])
        authority = flow.request.host_header or ""
        host = host_of(authority)
        destination = f"{host or dst}:{port}"
        if flow.request.method.upper() == "CONNECT":
            self._refuse(flow, entry, destination, 403, "tunnelling with CONNECT is not allowed: connect directly")
            return
        if not host:
            self._refuse(flow, entry, destination, 403, "the request names no host (Host header)")
            return
        sni = flow.client_conn.sni
        try:
            if sni and normalize_name(sni) != normalize_name(host):
                reason = f"the Host header names {host}, but the TLS connection was opened for {sni}"
                self._refuse(flow, entry, destination, 403, reason)
                return
            name = normalize_name(host)
        except PolicyError as exc:
            self._refuse(flow, entry, destination, 403, f"the request's host is not valid: {exc}")
            return
        destination = f"{name}:{port}"
        verdict = await self._decide(entry, name, port, dst)
        if not verdict.allowed:
            self._refuse(flow, entry, destination, 403, verdict.reason)
            return
        assert verdict.target is not None
        flow.request.data.host = str(verdict.target)
        try:
            await self._inject(flow, entry, name, port, destination)
        except InjectionRefused as exc:
            self._refuse(flow, entry, destination, exc.status, exc.reason)
            return
        flow.metadata[_SANDBOX] = entry
        flow.metadata[_DESTINATION] = destination
        self._accounting.count(entry, destination, out=_head_size(flow.request), requests=1)
        flow.request.stream = self._counter(entry, destination, outgoing=True)

    async def _inject(self, flow: http.HTTPFlow, entry: SandboxEntry, host: str, port: int, destination: str) -> None:
        request = flow.request
        placeholders = find_placeholders(request.path)
        for _, value in request.headers.items(multi=True):
            placeholders |= find_placeholders(value)
        if not placeholders and not self._credentials.configured:
            return
        if placeholders and not self._credentials.configured:
            raise InjectionRefused(403, "the request carries a secret placeholder, but no secrets-broker is set up")
        grants = await self._credentials.grants(entry)
        chosen = plan(grants, host, port, placeholders)
        if not chosen.headers and not chosen.placeholders:
            return
        values: dict[str, str] = {}
        for grant in (*chosen.headers, *chosen.placeholders):
            if grant.secret not in values:
                values[grant.secret] = await self._credentials.value(entry, grant.secret, host, port)
        for grant in chosen.headers:
            if not fits_in_header(values[grant.secret]):
                raise InjectionRefused(502, f"secret {grant.secret!r} holds a line break and cannot go into a header")
            assert grant.header is not None
            request.headers[grant.header.name] = grant.header.render(values[grant.secret])
        if chosen.placeholders:
            swap = {g.secret: values[g.secret] for g in chosen.placeholders}
            request.path = replace_placeholders(request.path, swap, url=True)
            for key in list(dict.fromkeys(request.headers.keys())):
                old = request.headers.get_all(key)
                new = [replace_placeholders(v, swap) for v in old]
                if new != old:
                    if not all(fits_in_header(v) for v in new):
                        raise InjectionRefused(502, "a secret holds a line break and cannot go into a header")
                    request.headers.set_all(key, new)
        # Echoes of the value must be recognisable to be masked: no compressed answers.
        request.headers["accept-encoding"] = "identity"
        flow.metadata[_SECRETS] = [v.encode() for v in values.values()]
        self._accounting.audit(
            entry, "injected", destination, "", chosen.secrets, request.method, request.path.split("?", 1)[0]
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = flow.metadata.get(_SANDBOX)
        if entry is None or flow.metadata.get(_REFUSED) or flow.response is None:
            return
        destination = flow.metadata[_DESTINATION]
        response = flow.response
        self._accounting.count(entry, destination, back=_head_size(response))
        secrets: list[bytes] = flow.metadata.get(_SECRETS) or []
        if secrets:
            for key in list(dict.fromkeys(response.headers.keys())):
                old = response.headers.get_all(key)
                new = [
                    redact(v.encode("utf-8", "surrogateescape"), secrets).decode("utf-8", "surrogateescape")
                    for v in old
                ]
                if new != old:
                    response.headers.set_all(key, new)
            if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                return  # buffered: `response` masks the decoded body
        redactor = StreamRedactor(secrets) if secrets else None
        response.stream = self._counter(entry, destination, outgoing=False, redactor=redactor)

    def response(self, flow: http.HTTPFlow) -> None:
        entry = flow.metadata.get(_SANDBOX)
        response = flow.response
        if entry is None or flow.metadata.get(_REFUSED) or response is None or response.stream:
            return
        secrets: list[bytes] = flow.metadata.get(_SECRETS) or []
        raw = response.raw_content or b""
        self._accounting.count(entry, flow.metadata[_DESTINATION], back=len(raw))
        content = response.get_content(strict=False) or b""
        masked = redact(content, secrets)
        if masked != content:
            response.content = masked

    def _counter(
        self, entry: SandboxEntry, destination: str, *, outgoing: bool, redactor: StreamRedactor | None = None
    ) -> Callable[[bytes], bytes]:
        count = self._accounting.count

        def stream(chunk: bytes) -> bytes:
            if outgoing:
                count(entry, destination, out=len(chunk))
            else:
                count(entry, destination, back=len(chunk))
            if redactor is None:
                return chunk
            return redactor.feed(chunk) if chunk else redactor.flush()

        return stream

    def _refuse(self, flow: http.HTTPFlow, entry: SandboxEntry, destination: str, status: int, reason: str) -> None:
        flow.response = http.Response.make(
            status,
            f"Hutch egress: {reason}\n".encode(),
            {"content-type": "text/plain; charset=utf-8", "x-hutch-egress": "refused", "connection": "close"},
        )
        flow.metadata[_REFUSED] = True
        self._refused(entry, destination, reason, flow.request.method, flow.request.path.split("?", 1)[0])

    def _refused(self, entry: SandboxEntry, destination: str, reason: str, method: str = "", path: str = "") -> None:
        log.info("refused %s -> %s: %s", entry.sandbox_id, destination, reason)
        self._accounting.count(entry, destination, refused=1)
        self._accounting.audit(entry, "refused", destination, reason, method=method, path=path)
