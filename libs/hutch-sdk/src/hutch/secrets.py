"""Secrets your sandboxes use without ever holding them.

The value goes in once and never comes back out of the API. A grant says which sandboxes may use
it, for which hosts, and how the egress-proxy puts it on the wire: as a header, or in place of a
placeholder the sandbox sends (its environment holds `hutch-secret://NAME`, never the value):

    from hutch import Secret

    Secret.create("GITHUB_TOKEN", os.environ["GITHUB_TOKEN"])
    Secret.grant("GITHUB_TOKEN", hosts=["api.github.com"], sandbox_names=["agent"],
                 header="Authorization: Bearer {value}")
    Secret.grant("OPENAI_KEY", hosts=["api.openai.com"], labels={"team": "ml"}, placeholder=True)
    sandbox = Sandbox.create(name="agent", envs={"OPENAI_API_KEY": "hutch-secret://OPENAI_KEY"},
                             network={"allow": ["api.github.com", "api.openai.com"]})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp

from hutch._config import resolve
from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch.exceptions import InvalidArgumentError
from hutch.v1 import secrets_pb2, secrets_pb2_grpc

if TYPE_CHECKING:
    from hutch.v1.secrets_pb2_grpc import SecretsAsyncStub

PLACEHOLDER_PREFIX = "hutch-secret://"


def placeholder(name: str) -> str:
    """What a sandbox's environment holds instead of the secret: `hutch-secret://NAME`."""
    return PLACEHOLDER_PREFIX + name


def _when(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime() if present else None


@dataclass(frozen=True)
class SecretInfo:
    """A secret as the API shows it: never its value."""

    name: str
    description: str
    version: int
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: secrets_pb2.Secret) -> SecretInfo:
        return cls(
            name=message.name,
            description=message.description,
            version=message.version,
            created_at=_when(message.created_at, message.HasField("created_at")),
            updated_at=_when(message.updated_at, message.HasField("updated_at")),
        )


@dataclass(frozen=True)
class SecretGrant:
    """Which sandboxes may use a secret, for which hosts, and how it is put on the wire.

    Attributes:
        header: "Name: template with {value}" for a header grant, else None.
        placeholder: True for a grant that swaps `hutch-secret://NAME` for the value.
    """

    id: str
    secret: str
    hosts: list[str]
    sandbox_ids: list[str] = field(default_factory=list)
    sandbox_names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    header: str | None = None
    placeholder: bool = False
    created_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: secrets_pb2.SecretGrant) -> SecretGrant:
        which = message.WhichOneof("injection")
        return cls(
            id=message.id,
            secret=message.secret,
            hosts=list(message.hosts),
            sandbox_ids=list(message.sandboxes.sandbox_ids),
            sandbox_names=list(message.sandboxes.sandbox_names),
            labels=dict(message.sandboxes.labels),
            header=message.header if which == "header" else None,
            placeholder=which == "placeholder" and message.placeholder,
            created_at=_when(message.created_at, message.HasField("created_at")),
        )


@dataclass(frozen=True)
class SecretUse:
    """One resolution of a secret by the egress-proxy (its audit trail)."""

    secret: str
    version: int
    sandbox_id: str
    host: str
    resolver: str
    at: datetime | None


SecretList = list[SecretInfo]
GrantList = list[SecretGrant]
UseList = list[SecretUse]


def _value(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class _SecretsConnection(Connection):
    @property
    def secrets(self) -> SecretsAsyncStub:
        return secrets_pb2_grpc.SecretsStub(self._open().channel)

    async def __aenter__(self) -> _SecretsConnection:
        return self


def _connect(api_key: str | None, endpoint: str | None) -> _SecretsConnection:
    return _SecretsConnection(resolve(api_key, endpoint, None))


class AsyncSecret:
    """Tenant secrets (coroutines; `Secret` is the blocking mirror)."""

    @staticmethod
    async def create(
        name: str,
        value: str | bytes,
        description: str = "",
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> SecretInfo:
        """Stores a new secret (encrypted at rest); its value can never be read back.

        Raises:
            AlreadyExistsError: A secret of that name exists (rotate it instead).
            InvalidArgumentError: A malformed name, or an empty or too large value.
        """
        request = secrets_pb2.CreateSecretRequest(name=name, value=_value(value), description=description)
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary(f"create secret {name}", connection.secrets.Create, request)
        return SecretInfo.from_proto(message)

    @staticmethod
    async def list(*, api_key: str | None = None, endpoint: str | None = None) -> SecretList:
        """Your secrets, without values."""
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary("list secrets", connection.secrets.List, secrets_pb2.ListSecretsRequest())
        return [SecretInfo.from_proto(s) for s in message.secrets]

    @staticmethod
    async def rotate(
        name: str, value: str | bytes, *, api_key: str | None = None, endpoint: str | None = None
    ) -> SecretInfo:
        """Replaces the value; requests use the new one within the proxy's cache time (a minute)."""
        request = secrets_pb2.RotateSecretRequest(name=name, value=_value(value))
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary(f"rotate secret {name}", connection.secrets.Rotate, request)
        return SecretInfo.from_proto(message)

    @staticmethod
    async def delete(name: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        """Removes the secret, every version and every grant of it."""
        async with _connect(api_key, endpoint) as connection:
            await connection.unary(
                f"delete secret {name}", connection.secrets.Delete, secrets_pb2.DeleteSecretRequest(name=name)
            )

    @staticmethod
    async def grant(
        name: str,
        *,
        hosts: Iterable[str],
        sandbox_ids: Iterable[str] = (),
        sandbox_names: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        header: str | None = None,
        placeholder: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> SecretGrant:
        """Lets sandboxes use a secret for some hosts.

        Args:
            name: The secret.
            hosts: Where it may be sent: "api.example.com", "*.example.com", with ":PORT" if needed.
            sandbox_ids, sandbox_names, labels: Which sandboxes: any listed id or name, or every
                sandbox whose metadata holds all the labels.
            header: Put it in this header on every request to those hosts, e.g.
                "Authorization: Bearer {value}".
            placeholder: Or swap `hutch-secret://NAME` for the value where the sandbox sends it.
        """
        if (header is None) == (not placeholder):
            raise InvalidArgumentError("a grant injects either a header or a placeholder: give exactly one")
        grant = secrets_pb2.SecretGrant(
            secret=name,
            hosts=list(hosts),
            sandboxes=secrets_pb2.SandboxSelector(
                sandbox_ids=list(sandbox_ids), sandbox_names=list(sandbox_names), labels=dict(labels or {})
            ),
        )
        if header is not None:
            grant.header = header
        else:
            grant.placeholder = True
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary(
                f"grant secret {name}", connection.secrets.Grant, secrets_pb2.CreateGrantRequest(grant=grant)
            )
        return SecretGrant.from_proto(message)

    @staticmethod
    async def grants(name: str | None = None, *, api_key: str | None = None, endpoint: str | None = None) -> GrantList:
        """The grants of one secret, or of all."""
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary(
                "list grants", connection.secrets.ListGrants, secrets_pb2.ListGrantsRequest(secret=name or "")
            )
        return [SecretGrant.from_proto(g) for g in message.grants]

    @staticmethod
    async def revoke(grant_id: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        async with _connect(api_key, endpoint) as connection:
            await connection.unary(
                f"revoke grant {grant_id}", connection.secrets.Revoke, secrets_pb2.RevokeGrantRequest(id=grant_id)
            )

    @staticmethod
    async def audit(
        name: str | None = None, *, limit: int = 100, api_key: str | None = None, endpoint: str | None = None
    ) -> UseList:
        """Who used a secret (newest first): one entry per resolution, never the value."""
        request = secrets_pb2.SecretAuditRequest(secret=name or "", limit=limit)
        async with _connect(api_key, endpoint) as connection:
            message = await connection.unary("read the secrets audit", connection.secrets.Audit, request)
        return [
            SecretUse(e.secret, e.version, e.sandbox_id, e.host, e.resolver, _when(e.at, e.HasField("at")))
            for e in message.entries
        ]


class Secret:
    """Tenant secrets (blocking; see `AsyncSecret` for the arguments)."""

    @staticmethod
    def create(
        name: str, value: str | bytes, description: str = "", *, api_key: str | None = None, endpoint: str | None = None
    ) -> SecretInfo:
        return PORTAL.run(AsyncSecret.create(name, value, description, api_key=api_key, endpoint=endpoint))

    @staticmethod
    def list(*, api_key: str | None = None, endpoint: str | None = None) -> SecretList:
        return PORTAL.run(AsyncSecret.list(api_key=api_key, endpoint=endpoint))

    @staticmethod
    def rotate(name: str, value: str | bytes, *, api_key: str | None = None, endpoint: str | None = None) -> SecretInfo:
        return PORTAL.run(AsyncSecret.rotate(name, value, api_key=api_key, endpoint=endpoint))

    @staticmethod
    def delete(name: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        PORTAL.run(AsyncSecret.delete(name, api_key=api_key, endpoint=endpoint))

    @staticmethod
    def grant(
        name: str,
        *,
        hosts: Iterable[str],
        sandbox_ids: Iterable[str] = (),
        sandbox_names: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        header: str | None = None,
        placeholder: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> SecretGrant:
        return PORTAL.run(
            AsyncSecret.grant(
                name,
                hosts=hosts,
                sandbox_ids=sandbox_ids,
                sandbox_names=sandbox_names,
                labels=labels,
                header=header,
                placeholder=placeholder,
                api_key=api_key,
                endpoint=endpoint,
            )
        )

    @staticmethod
    def grants(name: str | None = None, *, api_key: str | None = None, endpoint: str | None = None) -> GrantList:
        return PORTAL.run(AsyncSecret.grants(name, api_key=api_key, endpoint=endpoint))

    @staticmethod
    def revoke(grant_id: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        PORTAL.run(AsyncSecret.revoke(grant_id, api_key=api_key, endpoint=endpoint))

    @staticmethod
    def audit(
        name: str | None = None, *, limit: int = 100, api_key: str | None = None, endpoint: str | None = None
    ) -> UseList:
        return PORTAL.run(AsyncSecret.audit(name, limit=limit, api_key=api_key, endpoint=endpoint))
