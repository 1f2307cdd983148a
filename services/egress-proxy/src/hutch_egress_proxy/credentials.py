"""Credential injection: which grants cover a request, and the values, from the secrets-broker.

The grants covering a sandbox (names, hosts, how to inject; never values) are kept for a few
seconds; values for about a minute, in this process's memory only. When the broker cannot be
reached, grants fetched before are used as they were, but a value that is not cached cannot be had:
the request is refused (fail closed), never sent without it or with a placeholder in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import INTERNAL_TOKEN_HEADER, error_from_rpc
from hutch.egress_policy import HeaderTemplate, HostPattern, parse_header_template, parse_host_pattern
from hutch.internal.v1 import secrets_resolver_pb2 as rpb
from hutch.internal.v1 import secrets_resolver_pb2_grpc
from hutch_egress_proxy.registry import SandboxEntry

if TYPE_CHECKING:
    from hutch.internal.v1.secrets_resolver_pb2_grpc import SecretsResolverAsyncStub

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 3.0
STALE_GRANTS_S = 300.0


@dataclass(frozen=True)
class GrantInfo:
    secret: str
    hosts: tuple[HostPattern, ...]
    header: HeaderTemplate | None
    placeholder: bool

    def covers(self, host: str, port: int) -> bool:
        return any(pattern.matches(host, port) for pattern in self.hosts)


class InjectionRefused(Exception):
    """The request cannot go out: a placeholder for a host no grant covers, or no value to be had."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Plan:
    """What to inject into one request."""

    headers: tuple[GrantInfo, ...]
    placeholders: tuple[GrantInfo, ...]

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.secret for g in (*self.headers, *self.placeholders)))


def plan(grants: Iterable[GrantInfo], host: str, port: int, placeholders: set[str]) -> Plan:
    """The grants that apply to a request to `host`:`port` carrying `placeholders` (secret names).

    Raises InjectionRefused (403) for a placeholder that no grant lets this sandbox send to this
    host: sending it on would carry a credential's name where the value was never meant to go, and
    dropping it silently would hide the mistake.
    """
    grants = list(grants)
    headers = tuple(g for g in grants if g.header is not None and g.covers(host, port))
    swaps: list[GrantInfo] = []
    for secret in sorted(placeholders):
        grant = next((g for g in grants if g.placeholder and g.secret == secret and g.covers(host, port)), None)
        if grant is None:
            raise InjectionRefused(
                403,
                f"the request carries a placeholder for secret {secret!r}, but no grant lets this sandbox "
                f"send it to {host}:{port}",
            )
        swaps.append(grant)
    return Plan(headers, tuple(swaps))


def grant_info(message: rpb.ResolverGrant) -> GrantInfo:
    return GrantInfo(
        secret=message.secret,
        hosts=tuple(parse_host_pattern(h) for h in message.hosts),
        header=parse_header_template(message.header) if message.header else None,
        placeholder=message.placeholder,
    )


def identity(entry: SandboxEntry) -> rpb.SandboxIdentity:
    return rpb.SandboxIdentity(
        sandbox_id=entry.sandbox_id,
        tenant_id=entry.tenant_id,
        name=entry.name,
        labels=dict(entry.labels),
        node_id=entry.node_id,
    )


class Credentials:
    def __init__(self, address: str, token: str, grants_ttl_s: float, values_ttl_s: float) -> None:
        self._address = address
        self._metadata = ((INTERNAL_TOKEN_HEADER, token),)
        self._grants_ttl = grants_ttl_s
        self._values_ttl = values_ttl_s
        self._channel: grpc.aio.Channel | None = None
        self._grants: dict[str, tuple[float, tuple[GrantInfo, ...]]] = {}
        self._values: dict[tuple[str, str, str, int], tuple[float, str]] = {}

    @property
    def configured(self) -> bool:
        return bool(self._address)

    def _stub(self) -> SecretsResolverAsyncStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address)
        return secrets_resolver_pb2_grpc.SecretsResolverStub(self._channel)

    async def grants(self, entry: SandboxEntry) -> tuple[GrantInfo, ...]:
        if not self.configured:
            return ()
        now = time.monotonic()
        cached = self._grants.get(entry.sandbox_id)
        if cached is not None and now - cached[0] < self._grants_ttl:
            return cached[1]
        try:
            answer = await self._stub().GrantsFor(
                rpb.GrantsForRequest(sandbox=identity(entry)), metadata=self._metadata, timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, "the secrets-broker")
            if cached is not None and now - cached[0] < STALE_GRANTS_S:
                log.warning("using grants of %s from %.0fs ago: %s", entry.sandbox_id, now - cached[0], error.message)
                return cached[1]
            raise InjectionRefused(
                503, f"credential injection is unavailable: the secrets-broker cannot be reached ({error.message})"
            ) from None
        found = tuple(grant_info(g) for g in answer.grants)
        self._grants[entry.sandbox_id] = (now, found)
        return found

    async def value(self, entry: SandboxEntry, secret: str, host: str, port: int) -> str:
        key = (entry.sandbox_id, secret, host, port)
        now = time.monotonic()
        cached = self._values.get(key)
        if cached is not None and now - cached[0] < self._values_ttl:
            return cached[1]
        try:
            answer = await self._stub().Resolve(
                rpb.ResolveSecretRequest(sandbox=identity(entry), secret=secret, host=host, port=port),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, "the secrets-broker")
            status = 503 if isinstance(error, errors.Unavailable | errors.DeadlineExceeded) else 403
            raise InjectionRefused(status, f"secret {secret!r} could not be resolved: {error.message}") from None
        try:
            value: str = answer.value.decode()
        except UnicodeDecodeError:
            raise InjectionRefused(502, f"secret {secret!r} is not text and cannot go into a request") from None
        self._values[key] = (now, value)
        return value

    def forget(self, sandbox_id: str) -> None:
        self._grants.pop(sandbox_id, None)
        for key in [k for k in self._values if k[0] == sandbox_id]:
            del self._values[key]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
