"""Conversions between protobuf messages and the broker's own types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.internal.v1 import secrets_resolver_pb2 as rpb
from hutch.v1 import secrets_pb2
from hutch_secrets_broker.domain import Grant, SandboxIdentity, SecretInfo, Selector
from hutch_secrets_broker.store import AuditEntry


def _stamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def secret(info: SecretInfo) -> secrets_pb2.Secret:
    return secrets_pb2.Secret(
        name=info.name,
        description=info.description,
        version=info.version,
        created_at=_stamp(info.created_at),
        updated_at=_stamp(info.updated_at),
    )


def selector(message: secrets_pb2.SandboxSelector) -> Selector:
    return Selector(tuple(message.sandbox_ids), tuple(message.sandbox_names), dict(message.labels))


def grant(record: Grant) -> secrets_pb2.SecretGrant:
    message = secrets_pb2.SecretGrant(
        id=record.id,
        secret=record.secret,
        sandboxes=secrets_pb2.SandboxSelector(
            sandbox_ids=list(record.selector.sandbox_ids),
            sandbox_names=list(record.selector.sandbox_names),
            labels=dict(record.selector.labels),
        ),
        hosts=list(record.hosts),
        created_at=_stamp(record.created_at),
    )
    if record.placeholder:
        message.placeholder = True
    else:
        message.header = record.header
    return message


def audit_entry(entry: AuditEntry) -> secrets_pb2.SecretAuditEntry:
    return secrets_pb2.SecretAuditEntry(
        secret=entry.secret,
        version=entry.version,
        sandbox_id=entry.sandbox_id,
        host=entry.host,
        resolver=entry.resolver,
        at=_stamp(entry.at),
    )


def identity(message: rpb.SandboxIdentity) -> SandboxIdentity:
    return SandboxIdentity(message.sandbox_id, message.tenant_id, message.name, dict(message.labels), message.node_id)


def resolver_grant(record: Grant) -> rpb.ResolverGrant:
    return rpb.ResolverGrant(
        grant_id=record.id,
        secret=record.secret,
        hosts=list(record.hosts),
        header=record.header,
        placeholder=record.placeholder,
    )
