"""Secrets generated once per stack and kept in secrets.json (mode 0600), so a restarted stack keeps
its dev API key and can still read its own PostgreSQL and S3 data."""

from __future__ import annotations

import base64
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hutch.local.files import read_json, write_json_private


def new_api_key() -> str:
    """An API key in the platform's format: `hk_` and 32 URL-safe random characters."""
    return "hk_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class StackSecrets:
    """The stack's generated credentials."""

    api_key: str
    internal_token: str
    postgres_password: str
    s3_access_key: str
    s3_secret_key: str
    # Wraps the snapshot-store's per-tenant data keys: losing it loses every stored snapshot.
    snapshot_master_key: str

    @classmethod
    def generate(cls) -> StackSecrets:
        """Fresh random credentials."""
        return cls(
            api_key=new_api_key(),
            internal_token=secrets.token_urlsafe(32),
            postgres_password=secrets.token_urlsafe(24),
            s3_access_key="hutch" + secrets.token_hex(8),
            s3_secret_key=secrets.token_urlsafe(30),
            snapshot_master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        )


def load_or_create(path: Path) -> StackSecrets:
    """The secrets in `path`; missing ones (or the whole file) are generated and saved."""
    saved = read_json(path) or {}
    fresh = asdict(StackSecrets.generate())
    values = {
        field.name: saved[field.name] if isinstance(saved.get(field.name), str) else fresh[field.name]
        for field in fields(StackSecrets)
    }
    result = StackSecrets(**values)
    if values != saved:
        write_json_private(path, asdict(result))
    return result
