"""A short-lived cache of where running sandboxes live, for data-plane calls.

Every exec or file call needs (tenant, id-or-name) -> (sandbox, node). Reading that from PostgreSQL
each time costs a round trip on the hottest path. Entries are dropped the moment the change feed
reports any change to the sandbox, and expire after a few seconds regardless, so a killed or moved
sandbox is never routed to for longer than that.
"""

from __future__ import annotations

import time
from collections import defaultdict

from hutch_gateway.domain import SandboxRecord

_MAX_ENTRIES = 50_000


class RouteCache:
    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[SandboxRecord, float]] = {}
        self._keys_by_id: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)

    def get(self, tenant_id: str, ref: str) -> SandboxRecord | None:
        entry = self._entries.get((tenant_id, ref))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, tenant_id: str, ref: str, record: SandboxRecord) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            self.forget(None)
        self._entries[(tenant_id, ref)] = (record, time.monotonic() + self._ttl_s)
        self._keys_by_id[record.id].add((tenant_id, ref))

    def forget(self, sandbox_id: str | None) -> None:
        """Drops what is known about one sandbox, or about all of them (None)."""
        if sandbox_id is None:
            self._entries.clear()
            self._keys_by_id.clear()
            return
        for key in self._keys_by_id.pop(sandbox_id, ()):
            self._entries.pop(key, None)
