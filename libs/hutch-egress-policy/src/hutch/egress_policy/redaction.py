"""Redaction of injected secrets from what an upstream sends back.

Each occurrence is overwritten by as many '*' as it is long (so a streamed body's length, and its
Content-Length, stay right), in every form an echo is likely to take: as sent, percent-encoded, and
escaped for JSON. `StreamRedactor` holds back the last few bytes of each chunk, so an occurrence
split across two chunks is still caught.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote


def forms(value: bytes) -> set[bytes]:
    """The byte strings an echo of `value` may show up as (empty values are ignored)."""
    if not value:
        return set()
    found = {value}
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return found
    found.add(quote(text, safe="").encode())
    found.add(json.dumps(text)[1:-1].encode())
    return {f for f in found if f}


def redact(data: bytes, secrets: Iterable[bytes]) -> bytes:
    patterns = sorted({f for s in secrets for f in forms(s)}, key=len, reverse=True)
    for pattern in patterns:
        if pattern in data:
            data = data.replace(pattern, b"*" * len(pattern))
    return data


class StreamRedactor:
    """Redacts a body that arrives in chunks; call `feed` per chunk and `flush` at the end."""

    def __init__(self, secrets: Iterable[bytes]) -> None:
        self._secrets = [s for s in secrets if s]
        self._hold = max((len(f) for s in self._secrets for f in forms(s)), default=1) - 1
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = redact(self._tail + chunk, self._secrets)
        if self._hold <= 0:
            self._tail = b""
            return data
        cut = max(0, len(data) - self._hold)
        self._tail = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        data, self._tail = redact(self._tail, self._secrets), b""
        return data
