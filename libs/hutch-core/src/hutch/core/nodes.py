"""The region's nodes, as their heartbeats in the node KV bucket describe them.

Node-agents rewrite their key every few seconds. A node whose last heartbeat is older than the grace
period is not alive: the scheduler places nothing on it and the gateway reports it unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from hutch.events.v1 import node_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    cpu_millis_total: int
    memory_mb_total: int
    cpu_millis_allocated: int
    memory_mb_allocated: int
    sandboxes: int
    templates: frozenset[str]
    isolation_classes: frozenset[str]
    sent_at: datetime

    @classmethod
    def from_heartbeat(cls, beat: node_pb2.NodeHeartbeat) -> NodeInfo:
        return cls(
            node_id=beat.node_id,
            address=beat.address,
            cpu_millis_total=beat.cpu_millis_total,
            memory_mb_total=beat.memory_mb_total,
            cpu_millis_allocated=beat.cpu_millis_allocated,
            memory_mb_allocated=beat.memory_mb_allocated,
            sandboxes=beat.sandboxes,
            templates=frozenset(beat.templates),
            isolation_classes=frozenset(beat.isolation_classes),
            sent_at=beat.sent_at.ToDatetime(tzinfo=UTC),
        )


class NodeDirectory:
    """A live view of the node KV bucket, kept current by a watcher."""

    def __init__(self, kv: KeyValue, grace_s: float = 10.0) -> None:
        self._kv = kv
        self._grace = timedelta(seconds=grace_s)
        self._nodes: dict[str, NodeInfo] = {}
        self._loaded = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._watch(stop)
            except Exception as exc:  # NATS away or the watch consumer expired: watch again
                log.warning("node directory watch restarting: %r", exc)
                await asyncio.sleep(0.5)

    async def _watch(self, stop: asyncio.Event) -> None:
        watcher = await self._kv.watchall()
        quiet_since = asyncio.get_running_loop().time()
        try:
            while not stop.is_set():
                try:
                    # Short waits so that a shutdown is noticed within a second.
                    entry = await watcher.updates(timeout=1.0)
                except Exception:
                    if asyncio.get_running_loop().time() - quiet_since > 30:
                        return  # quiet for long: start a fresh watch, which also re-reads every key
                    continue
                quiet_since = asyncio.get_running_loop().time()
                if entry is None:
                    self._loaded.set()
                    continue
                self._apply(entry.key, entry.value, entry.operation)
        finally:
            try:
                await watcher.stop()
            except Exception as exc:
                log.debug("stopping the node watcher: %r", exc)

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            self._nodes.pop(key, None)
            return
        beat = node_pb2.NodeHeartbeat()
        try:
            beat.ParseFromString(value)
        except DecodeError:
            log.warning("ignoring an undecodable heartbeat for %s", key)
            return
        self._nodes[key] = NodeInfo.from_heartbeat(beat)

    async def loaded(self, timeout_s: float = 5.0) -> None:
        """Waits until the watcher has read every key once."""
        await asyncio.wait_for(self._loaded.wait(), timeout_s)

    def get(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def is_alive(self, node: NodeInfo, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) - node.sent_at <= self._grace

    def all(self) -> list[NodeInfo]:
        """Every node with a key in the bucket, reachable or not."""
        return list(self._nodes.values())

    def alive(self) -> list[NodeInfo]:
        now = datetime.now(UTC)
        return [n for n in self._nodes.values() if self.is_alive(n, now)]
