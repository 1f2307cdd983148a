"""The DNS responder sandboxes' queries are redirected to (UDP port 53 of any address).

A name the sandbox's policy may reach is looked up by the proxy itself and answered with the
addresses the proxy will accept connections to (platform-denied ones dropped). A name it may not
reach is answered with the sentinel address, so the request that follows reaches the proxy and is
refused there with a reason (HTTP 403) instead of failing as an unexplained lookup error; other
record types for such names are REFUSED. Queries from addresses no sandbox holds get no answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from hutch.egress_policy import PolicyError, normalize_name, platform_refuses
from hutch.egress_policy.platform import Network
from hutch_egress_proxy import dnswire
from hutch_egress_proxy.decisions import SENTINEL, may_resolve
from hutch_egress_proxy.registry import Registry, SandboxEntry
from hutch_egress_proxy.resolver import Resolver

log = logging.getLogger(__name__)

SENTINEL_TTL_S = 1


class DnsResponder:
    def __init__(self, registry: Registry, resolver: Resolver, extra_deny: Sequence[Network]) -> None:
        self._registry = registry
        self._resolver = resolver
        self._extra_deny = extra_deny

    async def answer(self, source: str, data: bytes) -> bytes | None:
        """The reply to one query from `source` (None: send nothing)."""
        entry = self._registry.lookup(source)
        if entry is None:
            return None
        try:
            question = dnswire.parse_query(data)
        except dnswire.DnsFormatError:
            return None
        return await self._answer(entry, question)

    async def _answer(self, entry: SandboxEntry, question: dnswire.Question) -> bytes:
        if question.qclass != dnswire.CLASS_IN:
            return dnswire.build_response(question, dnswire.NOTIMP)
        try:
            name = normalize_name(question.name)
        except PolicyError:
            return dnswire.build_response(question, dnswire.NXDOMAIN)
        if not may_resolve(entry, name):
            if question.qtype == dnswire.TYPE_A:
                return dnswire.build_response(question, dnswire.NOERROR, (SENTINEL,), SENTINEL_TTL_S)
            return dnswire.build_response(question, dnswire.REFUSED)
        if question.qtype != dnswire.TYPE_A:
            return dnswire.build_response(question, dnswire.NOERROR)  # no IPv6, nothing else either
        resolution = await self._resolver.resolve(name)
        if not resolution.addresses:
            return dnswire.build_response(question, dnswire.NXDOMAIN)
        usable = tuple(a for a in resolution.addresses if not platform_refuses(a, self._extra_deny))
        if not usable:
            return dnswire.build_response(question, dnswire.NOERROR, (SENTINEL,), SENTINEL_TTL_S)
        return dnswire.build_response(question, dnswire.NOERROR, usable, resolution.ttl)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self._responder.answer(addr[0], data)
        except Exception:
            log.exception("DNS query from %s failed", addr[0])
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


async def serve_dns(responder: DnsResponder, host: str, port: int) -> asyncio.DatagramTransport:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Protocol(responder), local_addr=(host, port)
    )
    return transport
