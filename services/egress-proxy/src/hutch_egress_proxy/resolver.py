"""The proxy's own name resolution: it decides which addresses a name stands for, hands those to
sandboxes through its DNS responder, and connects only to those (no DNS rebinding).

Answers are cached for their TTL (capped), and every address handed out for a name is remembered
for a while longer, so a sandbox that still holds an older answer is not taken for a forger.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from hutch_egress_proxy import dnswire

log = logging.getLogger(__name__)

NEGATIVE_TTL_S = 5
REMEMBER_S = 600.0
QUERY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[IPv4Address, ...]
    ttl: int
    # Why there are no addresses ("" when there are).
    error: str = ""


Lookup = Callable[[str], Awaitable[Resolution]]


def parse_nameserver(text: str) -> tuple[str, int]:
    """ "198.18.0.53" or "198.18.0.53:5353"."""
    host, colon, port = text.strip().partition(":")
    return str(IPv4Address(host)), int(port) if colon else 53


class Resolver:
    def __init__(self, nameservers: Sequence[str] = (), max_ttl: int = 30) -> None:
        self._servers = [parse_nameserver(s) for s in nameservers]
        self._max_ttl = max_ttl
        self._cache: dict[str, tuple[float, Resolution]] = {}
        self._seen: dict[tuple[str, IPv4Address], float] = {}
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}

    async def resolve(self, name: str) -> Resolution:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Resolution] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            found = await self._lookup(name)
            ttl = min(max(found.ttl, 1), self._max_ttl) if found.addresses else NEGATIVE_TTL_S
            result = Resolution(found.addresses, ttl, found.error)
            self._cache[name] = (time.monotonic() + ttl, result)
            if len(self._seen) > 50_000:
                self.forget()
            for address in result.addresses:
                self._seen[(name, address)] = time.monotonic() + REMEMBER_S
            future.set_result(result)
            return result
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # those waiting see it; nobody else has to
            raise
        finally:
            self._inflight.pop(name, None)
            if not future.done():
                future.cancel()

    def handed_out(self, name: str, address: IPv4Address) -> bool:
        """Whether `address` was an answer for `name` recently (current or within REMEMBER_S)."""
        expiry = self._seen.get((name, address))
        return expiry is not None and expiry > time.monotonic()

    def forget(self) -> None:
        self._cache.clear()
        now = time.monotonic()
        self._seen = {k: v for k, v in self._seen.items() if v > now}

    async def _lookup(self, name: str) -> Resolution:
        if not self._servers:
            return await self._system(name)
        last = "no DNS server answered"
        for host, port in self._servers:
            try:
                answer = await self._query(host, port, name)
            except (OSError, TimeoutError, dnswire.DnsFormatError) as exc:
                last = f"DNS server {host}:{port}: {exc or type(exc).__name__}"
                continue
            if answer.rcode == dnswire.NXDOMAIN:
                return Resolution((), 0, f"{name} does not exist")
            if answer.rcode != dnswire.NOERROR:
                last = f"DNS server {host}:{port} answered with code {answer.rcode}"
                continue
            if not answer.addresses:
                return Resolution((), 0, f"{name} has no IPv4 address")
            return Resolution(answer.addresses, answer.ttl)
        return Resolution((), 0, last)

    async def _system(self, name: str) -> Resolution:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(name, None, family=socket.AF_INET)
        except socket.gaierror as exc:
            return Resolution((), 0, f"{name} could not be resolved: {exc.strerror}")
        addresses = tuple(dict.fromkeys(IPv4Address(info[4][0]) for info in infos))
        return Resolution(addresses, self._max_ttl)

    async def _query(self, host: str, port: int, name: str) -> dnswire.Answer:
        ident = secrets.randbelow(65536)
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()

        class _Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not answered.done() and addr[0] == host:
                    answered.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not answered.done():
                    answered.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
        try:
            transport.sendto(dnswire.build_query(ident, name))
            data = await asyncio.wait_for(answered, QUERY_TIMEOUT_S)
            return dnswire.parse_answer(data, ident, name)
        finally:
            transport.close()
