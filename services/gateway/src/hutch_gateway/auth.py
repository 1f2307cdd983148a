"""API keys: how a call proves which tenant it acts for.

Keys look like `hk_` + 32 random URL-safe characters and travel as gRPC metadata
`authorization: Bearer <key>` (or `x-api-key: <key>`). Only their SHA-256 hash is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from hutch.core import errors

KEY_PREFIX = "hk_"

LookupTenant = Callable[[str], Awaitable[str | None]]


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for name, value in metadata:
        if isinstance(value, bytes):
            continue
        if name == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
        if name == "x-api-key":
            return value.strip()
    return ""


class Authenticator:
    """Maps API keys to tenant ids, caching answers for a short while."""

    def __init__(self, lookup: LookupTenant, cache_s: float) -> None:
        self._lookup = lookup
        self._cache_s = cache_s
        self._cache: dict[str, tuple[str, float]] = {}

    async def tenant(self, key: str) -> str:
        if not key:
            raise errors.Unauthenticated(
                "no API key: pass it as `authorization: Bearer <key>` metadata (the SDK reads HUTCH_API_KEY)"
            )
        if not key.startswith(KEY_PREFIX) or len(key) > 256:
            raise errors.Unauthenticated("the API key is malformed: Hutch keys start with 'hk_'")
        digest = hash_key(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        tenant = await self._lookup(digest)
        if tenant is None:
            raise errors.Unauthenticated("the API key is not valid (unknown or revoked)")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (tenant, now + self._cache_s)
        return tenant
