"""Secrets and grants as the broker sees them, and the rules they follow. Pure logic."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hutch.core import errors
from hutch.egress_policy import PolicyError, check_secret_name, parse_header_template, parse_host_pattern

MAX_HOSTS = 64
MAX_SELECTOR_ITEMS = 256
_SANDBOX_ID = re.compile(r"^sb-[a-z0-9]{8,40}$")
_SANDBOX_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")


def secret_name(name: str) -> str:
    try:
        return check_secret_name(name)
    except PolicyError as exc:
        raise errors.InvalidArgument(str(exc)) from None


@dataclass(frozen=True)
class SecretInfo:
    tenant_id: str
    name: str
    description: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SandboxIdentity:
    """A sandbox as its node registered it with the egress-proxy."""

    sandbox_id: str
    tenant_id: str
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_id: str = ""


@dataclass(frozen=True)
class Selector:
    sandbox_ids: tuple[str, ...] = ()
    sandbox_names: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def covers(self, sandbox: SandboxIdentity) -> bool:
        if sandbox.sandbox_id in self.sandbox_ids:
            return True
        if sandbox.name and sandbox.name in self.sandbox_names:
            return True
        return bool(self.labels) and all(sandbox.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class Grant:
    id: str
    tenant_id: str
    secret: str
    selector: Selector
    hosts: tuple[str, ...]
    # "Name: template with {value}", or "" for a placeholder grant.
    header: str
    placeholder: bool
    created_at: datetime | None = None

    def covers_host(self, host: str, port: int) -> bool:
        return any(parse_host_pattern(pattern).matches(host, port) for pattern in self.hosts)


def new_grant_id() -> str:
    return "gr-" + secrets.token_hex(10)


def validate_grant(
    tenant_id: str,
    secret: str,
    selector: Selector,
    hosts: Sequence[str],
    header: str,
    placeholder: bool,
) -> Grant:
    """A grant with its hosts normalized; raises InvalidArgument naming the bad field."""
    secret_name(secret)
    if not (selector.sandbox_ids or selector.sandbox_names or selector.labels):
        raise errors.InvalidArgument("a grant must name its sandboxes: by id, by name or by metadata labels")
    if len(selector.sandbox_ids) + len(selector.sandbox_names) + len(selector.labels) > MAX_SELECTOR_ITEMS:
        raise errors.InvalidArgument(f"a grant may name at most {MAX_SELECTOR_ITEMS} sandboxes and labels")
    for sandbox_id in selector.sandbox_ids:
        if not _SANDBOX_ID.match(sandbox_id):
            raise errors.InvalidArgument(f"{sandbox_id!r} is not a sandbox id (sb-...)")
    for name in selector.sandbox_names:
        if not _SANDBOX_NAME.match(name):
            raise errors.InvalidArgument(f"{name!r} is not a valid sandbox name")
    for key, value in selector.labels.items():
        if not _LABEL_KEY.match(key) or len(value) > 1024:
            raise errors.InvalidArgument(f"label {key!r} is not a valid metadata key and value")
    if not hosts:
        raise errors.InvalidArgument("a grant must name the hosts the secret may be sent to")
    if len(hosts) > MAX_HOSTS:
        raise errors.InvalidArgument(f"a grant may name at most {MAX_HOSTS} hosts")
    normalized: list[str] = []
    for host in hosts:
        try:
            pattern = parse_host_pattern(host)
        except PolicyError as exc:
            raise errors.InvalidArgument(f"grant hosts: {exc}") from None
        if pattern.wildcard and not pattern.name:
            raise errors.InvalidArgument("a grant cannot cover every host ('*'): name the hosts the secret is for")
        if str(pattern) not in normalized:
            normalized.append(str(pattern))
    if bool(header) == bool(placeholder):
        raise errors.InvalidArgument("a grant injects either a header or a placeholder (exactly one of the two)")
    if header:
        try:
            header = str(parse_header_template(header))
        except PolicyError as exc:
            raise errors.InvalidArgument(str(exc)) from None
    return Grant(new_grant_id(), tenant_id, secret, selector, tuple(normalized), header, placeholder)


def check_value(value: bytes, limit: int) -> bytes:
    if not value:
        raise errors.InvalidArgument("a secret's value may not be empty")
    if len(value) > limit:
        raise errors.InvalidArgument(f"a secret's value holds {len(value)} bytes; the limit is {limit}")
    return value
